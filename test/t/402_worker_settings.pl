# payments.max_workers bounds how many workers run, not how many databases
# are served, and payments.worker_role is the role the workers connect as.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use PaymentsNode;

my $node = payments_node('main', conf => "payments.max_workers = 1\n");

my $workers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'";

# n completed keys whose TTL has run out, written directly as test data.
sub expired_keys
{
	my ($db, $n) = @_;
	$node->safe_psql($db, qq{
		INSERT INTO payments.idempotency_keys
			(scope, key, request_hash, state, response, response_code, expires_at)
		SELECT 's', 'k' || i, sha256('{}'), 'completed', '{}', 200, now() - interval '1 second'
		  FROM generate_series(1, $n) i;
	});
}

$node->safe_psql('postgres', 'CREATE DATABASE db1');
$node->safe_psql('postgres', 'CREATE DATABASE db2');
$node->safe_psql('db1', 'CREATE EXTENSION payments');
$node->safe_psql('db2', 'CREATE EXTENSION payments');
expired_keys('db1', 10);
expired_keys('db2', 10);
for my $db ('db1', 'db2')
{
	ok($node->poll_query_until($db, 'SELECT count(*) FROM payments.idempotency_keys', '0'),
		"with max_workers = 1 the worker serves $db too");
}

# Both databases are due every 100 ms: the one worker moves between them,
# and no more than one ever runs.
my $max = 0;
for (1 .. 50)
{
	my $n = $node->safe_psql('postgres', $workers);
	$max = $n if $n > $max;
	usleep(20_000);
}
ok($max <= 1, 'never more than max_workers workers at once');
for my $db ('db1', 'db2')
{
	ok( $node->poll_query_until($db,
			"SELECT last_run > now() - interval '5 seconds' FROM payments.worker_status()", 't'),
		"$db keeps getting rounds");
}

# A role of its own for the workers: it can log in and may run the
# maintenance functions, nothing more.
$node->safe_psql('postgres', 'CREATE ROLE pay_worker LOGIN');
for my $db ('db1', 'db2')
{
	$node->safe_psql($db, q{
		GRANT USAGE ON SCHEMA payments TO pay_worker;
		GRANT EXECUTE ON FUNCTION payments.expire_reservations(integer),
			payments.purge_idempotency_keys(integer),
			payments.run_compensations(integer) TO pay_worker;
	});
}
$node->append_conf('postgresql.conf', qq{
payments.worker_role = 'pay_worker'
payments.max_workers = 2
});
$node->restart;
$node->poll_query_until('postgres', $workers, '2') or die 'workers did not come back';
is( $node->safe_psql('postgres',
		"SELECT string_agg(datname || ':' || usename, ',' ORDER BY datname) FROM pg_stat_activity"
		  . " WHERE backend_type = 'payments worker'"),
	'db1:pay_worker,db2:pay_worker',
	'after a restart with max_workers = 2 both databases keep a worker, connected as worker_role');

expired_keys('db1', 10);
ok($node->poll_query_until('db1', 'SELECT count(*) FROM payments.idempotency_keys', '0'),
	'the worker does its work as that role');

$node->stop;
done_testing();
