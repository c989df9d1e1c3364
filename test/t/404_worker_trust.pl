# The worker, a superuser in every database, cannot be turned against the
# server or stalled by the roles whose handlers it runs:
#  - it runs only the extension's own task functions, never a function a
#    database owner put under the extension schema's old name;
#  - a crash or a kill while a handler runs charges an attempt to that item
#    alone, not to the rest of its batch;
#  - nothing a handler leaves in the session (advisory locks, sequence
#    values) reaches the next handler, and it can make no prepared
#    statement or temporary object;
#  - a handler that catches its timeout's cancel and goes on is ended, its
#    attempt recorded as timed out, and the worker goes on with the next item.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('trust');

$node->safe_psql('postgres', q{
	CREATE ROLE app_a LOGIN;
	CREATE ROLE app_b LOGIN;
	CREATE ROLE dbowner LOGIN CREATEROLE;
	CREATE DATABASE shop OWNER dbowner;
});
$node->safe_psql('shop', q{
	CREATE EXTENSION payments;
	GRANT payments_app TO app_a, app_b;
	CREATE SCHEMA trust;
	GRANT USAGE ON SCHEMA trust TO PUBLIC;
	CREATE TABLE trust.log (n int, what text);
	CREATE TABLE trust.block (b int);
	GRANT SELECT, INSERT ON trust.log, trust.block TO PUBLIC;

	-- Logs its item; item 3 sleeps while trust.block has a row.
	CREATE FUNCTION trust.step(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO trust.log VALUES ((p->>'n')::int, 'step');
		IF (p->>'n')::int = 3 AND EXISTS (SELECT FROM trust.block) THEN
			PERFORM pg_sleep(600);
		END IF;
	END $$;

	CREATE SEQUENCE trust.seq;
	GRANT USAGE ON SEQUENCE trust.seq TO PUBLIC;

	-- Leaves a session advisory lock and a sequence value behind, and tries
	-- to leave a prepared statement and a temporary table.
	CREATE FUNCTION trust.leaky(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM pg_advisory_lock(4242);
		PERFORM nextval('trust.seq');
		BEGIN
			EXECUTE 'PREPARE leaked_statement AS SELECT 1';
			INSERT INTO trust.log VALUES (0, 'statement prepared');
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO trust.log VALUES (0, 'statement refused');
		END;
		BEGIN
			CREATE TEMP TABLE leaked_table (x int);
			INSERT INTO trust.log VALUES (0, 'temp table created');
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO trust.log VALUES (0, 'temp table refused');
		END;
	END $$;

	-- Looks for what the previous handler left.
	CREATE FUNCTION trust.snoop(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		BEGIN
			PERFORM lastval();
			INSERT INTO trust.log VALUES (0, 'sequence value leaked');
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO trust.log VALUES (0, 'sequence value gone');
		END;
	END $$;
});
$node->safe_psql('shop', stubborn_handler('trust.stubborn')
	  . 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA trust TO PUBLIC;');


wait_for_worker($node, 'shop');

# Queue items 1..5 of trust.step in one transaction as app_a, due in id
# order; item 3 blocks.  Returns the id of item 1.
sub queue_steps
{
	$node->safe_psql('shop', 'INSERT INTO trust.block VALUES (1)');
	return $node->safe_psql('shop', q{
		SET ROLE app_a;
		SELECT min(payments.enqueue_compensation('trust.step(jsonb)', jsonb_build_object('n', n)))
		  FROM generate_series(1, 5) n;
	});
}

sub wait_for_item_3
{
	$node->poll_query_until('shop',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'"
		  . " AND datname = 'shop' AND wait_event = 'PgSleep'", '1')
	  or die "the worker did not reach item 3";
}

sub attempts_after_stop
{
	my ($first) = @_;
	$node->poll_query_until('shop',
		"SELECT count(*) FROM payments.compensations WHERE id BETWEEN $first AND $first + 4"
		  . " AND status = 'succeeded'", '5')
	  or die "the items did not all succeed after the worker came back";
	return $node->safe_psql('shop', qq{
		SELECT string_agg(format('%s:%s:%s', c.id - $first + 1, c.attempts,
		                         coalesce(a.sqlstate, '-')), ' ' ORDER BY c.id)
		  FROM payments.compensations c
		  LEFT JOIN payments.compensation_attempts a ON a.compensation_id = c.id
		 WHERE c.id BETWEEN $first AND $first + 4;
	});
}

# A kill -9 while item 3's handler runs (the whole server restarts): items
# 1 and 2 ran in the same transaction, which is lost, and run again with
# nothing charged; item 3 is charged one attempt (PM304); 4 and 5 never
# started.
my $first = queue_steps();
wait_for_item_3();
$node->safe_psql('shop', 'DELETE FROM trust.block');
my $pid = worker_pid($node, 'shop');
kill 'KILL', $pid;
is(attempts_after_stop($first), '1:1:- 2:1:- 3:2:PM304 4:1:- 5:1:-',
	'kill -9 of the worker charges only the item whose handler was running');
is($node->safe_psql('shop', "SELECT count(*) FROM trust.log WHERE n = 1"), '1',
	'the effects of the items that ran before the kill were rolled back with it');

# The same with a plain termination, as the utility hook or a DBA sends it.
$node->safe_psql('shop', 'TRUNCATE trust.log');
$first = queue_steps();
wait_for_item_3();
$node->safe_psql('shop', 'DELETE FROM trust.block');
$pid = worker_pid($node, 'shop');
$node->safe_psql('shop', "SELECT pg_terminate_backend($pid)");
is(attempts_after_stop($first), '1:1:- 2:1:- 3:2:PM304 4:1:- 5:1:-',
	'terminating the worker charges only the item whose handler was running');

# Session state: app_a's handler leaves an advisory lock and a sequence
# value; app_b's handler, next in the same batch, cannot see the value, and
# the worker holds no advisory lock afterwards.  Prepared statements and
# temporary tables are refused to a handler.
$node->safe_psql('shop', 'TRUNCATE trust.log');
my $leaky = $node->safe_psql('shop', q{
	BEGIN;
	SET LOCAL ROLE app_a;
	SELECT payments.enqueue_compensation('trust.leaky(jsonb)', '{}');
	SET LOCAL ROLE app_b;
	SELECT payments.enqueue_compensation('trust.snoop(jsonb)', '{}');
	COMMIT;
});
$node->poll_query_until('shop',
	"SELECT count(*) FROM payments.compensations WHERE handler LIKE 'trust.%' AND handler NOT LIKE 'trust.step%' AND status = 'succeeded'",
	'2')
  or die "the session-state items did not run";
is($node->safe_psql('shop', "SELECT string_agg(what, ', ' ORDER BY what) FROM trust.log"),
	'sequence value gone, statement refused, temp table refused',
	"a handler's sequence value is gone for the next handler, and it could not prepare a statement or create a temporary table");
is($node->safe_psql('shop', qq{
	SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)
	 WHERE s.backend_type = 'payments worker' AND l.locktype = 'advisory'}),
	'0', "a handler's session advisory lock does not stay with the worker");

# Item 1 of the issue: after a superuser renames the extension's schema,
# the database owner creates a schema of the old name with a function named
# like a worker task.  The worker must not run it.
$node->safe_psql('shop', 'ALTER SCHEMA payments RENAME TO payments_real');
$node->safe_psql('shop', q{
	SET ROLE dbowner;
	CREATE SCHEMA payments;
	CREATE FUNCTION payments.expire_reservations(integer) RETURNS integer
		LANGUAGE plpgsql AS $$ BEGIN ALTER ROLE dbowner SUPERUSER; RETURN 0; END $$;
	CREATE FUNCTION payments.purge_idempotency_keys(integer) RETURNS integer
		LANGUAGE plpgsql AS $$ BEGIN ALTER ROLE dbowner SUPERUSER; RETURN 0; END $$;
	CREATE FUNCTION payments.run_compensations(integer) RETURNS integer
		LANGUAGE plpgsql AS $$ BEGIN ALTER ROLE dbowner SUPERUSER; RETURN 0; END $$;
});
# The worker keeps working from the extension's schema: a new item runs.
my $after_rename = $node->safe_psql('shop', q{
	SET ROLE app_a;
	SELECT payments_real.enqueue_compensation('trust.step(jsonb)', '{"n": 7}');
});
$node->poll_query_until('shop',
	"SELECT status FROM payments_real.compensations WHERE id = $after_rename", 'succeeded')
  or die "the worker stopped running items after the rename";
my $rounds_start = $node->safe_psql('shop', 'SELECT clock_timestamp()');
$node->poll_query_until('shop',
	"SELECT last_run > '$rounds_start'::timestamptz FROM payments_real.worker_status()", 't')
  or die "the worker did not complete a round";
is($node->safe_psql('postgres', "SELECT rolsuper FROM pg_roles WHERE rolname = 'dbowner'"),
	'f', "the worker did not run the database owner's look-alike task functions");
$node->safe_psql('shop', 'DROP SCHEMA payments CASCADE');
$node->safe_psql('shop', 'ALTER SCHEMA payments_real RENAME TO payments');

# A handler that catches its timeout's cancel and loops: its attempt fails
# as timed out, the worker restarts, and the next item (another role's)
# runs.
$node->safe_psql('postgres', "ALTER SYSTEM SET payments.handler_timeout = '500ms'");
$node->reload;
my $old_pid = worker_pid($node, 'shop');
my ($stubborn, $after) = split /\n/, $node->safe_psql('shop', q{
	BEGIN;
	SET LOCAL ROLE app_a;
	SELECT payments.enqueue_compensation('trust.stubborn(jsonb)', '{}', max_attempts => 1);
	SET LOCAL ROLE app_b;
	SELECT payments.enqueue_compensation('trust.step(jsonb)', '{"n": 8}');
	COMMIT;
});
$node->poll_query_until('shop',
	"SELECT status FROM payments.compensations WHERE id = $after", 'succeeded')
  or die "the worker did not go on after a handler that ignores its timeout";
is($node->safe_psql('shop', qq{
	SELECT c.status || ' ' || a.sqlstate
	  FROM payments.compensations c
	  JOIN payments.compensation_attempts a ON a.compensation_id = c.id
	 WHERE c.id = $stubborn}),
	'dead 57014', 'the stubborn handler failed its attempt as timed out');
isnt(worker_pid($node, 'shop'), $old_pid, 'the worker was restarted to end the stubborn handler');
ok($node->log_contains('did not stop when cancelled'),
	'the log says why the worker restarted');

$node->stop;
done_testing();
