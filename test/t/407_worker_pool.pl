# A pool of payments.max_workers workers serves any number of databases:
# due work (a commit wake-up, a hold's TTL) gets a worker, every database
# gets its rounds, no more workers than the pool's size ever run, and a
# database the launcher cannot serve says so in worker_status().
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use PaymentsNode;

my $ndb = 20;
my @dbs = map { "db$_" } 1 .. $ndb;

# Three workers; an hour's naptime, so that only wake-ups and due times
# make rounds happen in the first part.
my $node = payments_node('main', conf => qq{
payments.max_workers = 3
payments.worker_naptime = 1h
max_worker_processes = 16
});

my $workers = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'";

# A template with the extension and a handler: the databases made from it
# are found by the launcher's scan, not by CREATE EXTENSION.
$node->safe_psql('postgres', 'CREATE DATABASE tpl');
$node->safe_psql('tpl', q{
	CREATE EXTENSION payments;
	CREATE TABLE done (n int);
	CREATE FUNCTION ok(p jsonb) RETURNS void LANGUAGE sql
	    AS $$ INSERT INTO public.done VALUES ((p->>'n')::int) $$;
});
$node->safe_psql('postgres', "ALTER DATABASE tpl IS_TEMPLATE true");
$node->safe_psql('postgres', "CREATE DATABASE $_ TEMPLATE tpl") for @dbs;

# In every database: 5 compensations and 5 holds that lapse in 2 seconds.
for my $db (@dbs)
{
	$node->safe_psql($db, q{
		SELECT payments.enqueue_compensation('public.ok(jsonb)', jsonb_build_object('n', i))
		  FROM generate_series(1, 5) i;
		SELECT payments.stock_set('A', 100);
		SELECT payments.reserve('order-' || i, 'A', 1, '2 seconds') FROM generate_series(1, 5) i;
	});
}

# Sample the number of workers while they work.
my $max = 0;
my $all_done = q{SELECT (SELECT count(*) FROM public.done) = 5
	AND (SELECT count(*) FROM payments.compensations WHERE status = 'succeeded') = 5
	AND (SELECT count(*) FROM payments.reservations WHERE state = 'expired') = 5
	AND (SELECT available FROM payments.stock_levels WHERE sku = 'A') = 100};
for my $db (@dbs)
{
	for (1 .. 600)
	{
		my $n = $node->safe_psql('postgres', $workers);
		$max = $n if $n > $max;
		last if $node->safe_psql($db, $all_done) eq 't';
		usleep(100_000);
	}
}
for my $db (@dbs)
{
	is($node->safe_psql($db, $all_done), 't',
		"$db: its compensations ran once and its lapsed holds expired");
}
ok($max >= 1 && $max <= 3, "never more than 3 workers ran at once (at most $max seen)");

for my $db (@dbs)
{
	is( $node->safe_psql($db,
			"SELECT last_run IS NOT NULL AND last_wait >= '0' AND max_wait >= last_wait"
			  . " AND items_done >= 10 AND state IN ('idle', 'running', 'sleeping', 'waiting')"
			  . " FROM payments.worker_status()"),
		't', "$db: worker_status() shows its last round and how long its due work waited");
}

# --- a wake-up reaches a database with no worker connected ---

my ($sleeper) = grep { worker_pid($node, $_) eq '' } @dbs;
ok(defined $sleeper, 'some databases have no worker connected while nothing is due');
$node->poll_query_until($sleeper, "SELECT state FROM payments.worker_status()", 'sleeping')
  or diag($node->safe_psql($sleeper, 'SELECT * FROM payments.worker_status()'));
$node->safe_psql($sleeper, q{
	INSERT INTO payments.idempotency_keys
		(scope, key, request_hash, state, response, response_code, expires_at)
	SELECT 's', 'k' || i, sha256('{}'), 'completed', '{}', 200, now() - interval '1 second'
	  FROM generate_series(1, 10) i;
	BEGIN; SELECT payments.notify_worker(); COMMIT;
});
ok($node->poll_query_until($sleeper, 'SELECT count(*) FROM payments.idempotency_keys', '0'),
	'a committed wake-up in a database without a worker gets it one');

# --- every database gets its rounds: none starves ---

my $t0 = $node->safe_psql('postgres', 'SELECT now()');
$node->append_conf('postgresql.conf', 'payments.worker_naptime = 200ms');
$node->reload;
for my $db (@dbs)
{
	ok( $node->poll_query_until($db,
			"SELECT last_run > '$t0'::timestamptz FROM payments.worker_status()", 't'),
		"$db gets rounds while 20 databases share 3 workers");
}
is($node->safe_psql('tpl', 'SELECT pid IS NULL FROM payments.worker_status()'),
	't', 'the template gets no worker');

# --- a database the launcher cannot keep track of ---

$node->append_conf('postgresql.conf', "payments.max_databases = 5\n");
$node->restart;
$node->wait_for_log(qr/payments launcher cannot keep track of more than 5 databases/)
  or die 'no log line';
my @unserved = grep {
	$node->safe_psql($_,
		"SELECT state || ': ' || unserved_reason FROM payments.worker_status()") =~
	  /^unserved: payments\.max_databases/
} @dbs;
ok(@unserved >= $ndb - 5,
	'databases beyond payments.max_databases report in worker_status() that they are unserved');

$node->stop;
done_testing();
