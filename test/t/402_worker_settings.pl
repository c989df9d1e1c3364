# payments.max_workers bounds how many databases get a worker, and
# payments.worker_role is the role the workers connect as.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('main', conf => "payments.max_workers = 1\n");

my $workers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'";

$node->safe_psql('postgres', 'CREATE DATABASE db1');
$node->safe_psql('postgres', 'CREATE DATABASE db2');
$node->safe_psql('db1', 'CREATE EXTENSION payments');
$node->poll_query_until('postgres', $workers, '1') or die 'no worker';
$node->safe_psql('db2', 'CREATE EXTENSION payments');
$node->wait_for_log(qr/payments launcher has no free worker slot for database "db2"/)
  or die 'no log line';
pass('with max_workers = 1 the second database gets no slot, and the log says so');
is($node->safe_psql('postgres', $workers), '1', 'exactly one worker runs');

# A role of its own for the workers: it can log in and may run the
# maintenance functions, nothing more.
$node->safe_psql('postgres', 'CREATE ROLE pay_worker LOGIN');
$node->safe_psql('db1', q{
	GRANT USAGE ON SCHEMA payments TO pay_worker;
	GRANT EXECUTE ON FUNCTION payments.expire_reservations(integer),
		payments.purge_idempotency_keys(integer),
		payments.run_compensations(integer) TO pay_worker;
});
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
	'after a restart with max_workers = 2 both databases get a worker, connected as worker_role');

$node->safe_psql('db1', q{
	INSERT INTO payments.idempotency_keys
		(scope, key, request_hash, state, response, response_code, expires_at)
	SELECT 's', 'k' || i, sha256('{}'), 'completed', '{}', 200, now() - interval '1 second'
	  FROM generate_series(1, 10) i;
});
ok($node->poll_query_until('db1', 'SELECT count(*) FROM payments.idempotency_keys', '0'),
	'the worker does its work as that role');

$node->stop;
done_testing();
