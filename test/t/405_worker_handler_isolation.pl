# One role's compensation handler cannot stall the worker for other roles
# or reach into their handlers (found by a hostile review of the worker's
# run path):
#  1. An application that holds the row lock of the item the worker must
#     charge for an interrupted attempt does not stall the worker: the
#     charge waits, other items run.
#  2. Nothing a handler leaves in the batch's transaction reaches the next
#     role's handler: an open cursor (the handler fails), large-object
#     descriptors (closed), SET CONSTRAINTS (refused) and the random() seed
#     (reset).
#  3. Without the worker (run_compensations called from a session), a
#     handler that catches every cancel ends the session a second after
#     payments.handler_timeout, and its attempt is recorded, so the same
#     item cannot hold every later call.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('isolation', conf => "payments.handler_timeout = 1s\n");

$node->safe_psql('postgres', q{
	CREATE ROLE app_a LOGIN;
	CREATE ROLE app_b LOGIN;
	CREATE DATABASE shop;
});
$node->safe_psql('shop', q{
	CREATE EXTENSION payments;
	GRANT payments_app TO app_a, app_b;
	CREATE SCHEMA a AUTHORIZATION app_a;
	CREATE SCHEMA b AUTHORIZATION app_b;
	CREATE TABLE public.log (who text, what text);
	GRANT SELECT, INSERT ON public.log TO PUBLIC;
});
$node->safe_psql('shop', 'SET ROLE app_a;' . stubborn_handler('a.stubborn'));
$node->safe_psql('shop', q{
	SET ROLE app_a;
	CREATE TABLE a.secret (card text);
	INSERT INTO a.secret VALUES ('a-secret-row');
	CREATE TABLE a.lo (id oid);
	INSERT INTO a.lo SELECT lo_from_bytea(0, 'a-secret-lo');
	GRANT SELECT ON a.lo TO PUBLIC;
	GRANT USAGE ON SCHEMA a TO PUBLIC;

	-- Leave a cursor, a large-object descriptor, deferred constraints and
	-- a random() seed in the transaction.
	CREATE FUNCTION a.leave_cursor(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		c refcursor := 'a_cur';
	BEGIN
		OPEN c FOR SELECT card FROM a.secret;
	END $$;
	CREATE FUNCTION a.leave_lo(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM lo_open((SELECT id FROM a.lo), 262144);
	END $$;
	CREATE FUNCTION a.defer(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		SET CONSTRAINTS ALL DEFERRED;
	END $$;
	CREATE FUNCTION a.seed(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM setseed(0.5);
	END $$;
});
$node->safe_psql('shop', q{
	SET ROLE app_b;
	CREATE TABLE b.parent (id int PRIMARY KEY);
	CREATE TABLE b.child (pid int REFERENCES b.parent DEFERRABLE INITIALLY IMMEDIATE);
	INSERT INTO b.parent VALUES (1);
	CREATE FUNCTION b.noop(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.log VALUES ('b', 'noop');
	END $$;
	-- Looks for what app_a's handler left.
	CREATE FUNCTION b.look(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	DECLARE
		c refcursor := 'a_cur';
		r record;
	BEGIN
		INSERT INTO public.log VALUES ('b', 'cursors: ' || (SELECT count(*) FROM pg_cursors));
		BEGIN
			FETCH c INTO r;
			INSERT INTO public.log VALUES ('b', 'fetched: ' || coalesce(r.card, '-'));
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO public.log VALUES ('b', 'fetch refused');
		END;
		BEGIN
			INSERT INTO public.log VALUES ('b', 'lo: ' || convert_from(loread(0, 100), 'UTF8'));
		EXCEPTION WHEN OTHERS THEN
			INSERT INTO public.log VALUES ('b', 'lo refused');
		END;
		INSERT INTO public.log VALUES ('b', 'random: ' || random());
	END $$;
	CREATE FUNCTION b.fk(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO b.child VALUES (1);
	END $$;
});

wait_for_worker($node, 'shop');

# --- 1. A row lock on the marker's item stalls the worker -------------------

my $x = $node->safe_psql('shop', q{
	SET ROLE app_a;
	SELECT payments.enqueue_compensation('a.stubborn(jsonb)', '{}', max_attempts => 2);
});
$node->poll_query_until('shop',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'"
	  . " AND datname = 'shop' AND wait_event = 'PgSleep'", '1')
  or die "the worker did not start the stubborn handler";

# app_a cancels its own item in a transaction it leaves open.  The cancel
# waits for the worker's batch, which ends when the worker is ended for the
# stubborn handler; then app_a holds the row lock of the item the marker
# names.
my $holder = $node->background_psql('shop', on_error_stop => 0);
$holder->set_query_timer_restart;
$holder->query_safe('BEGIN');
$holder->query_safe('SET LOCAL ROLE app_a');
$holder->query_safe("SELECT payments.cancel_compensation($x)");

my $y = $node->safe_psql('shop', q{
	SET ROLE app_b;
	SELECT payments.enqueue_compensation('b.noop(jsonb)', '{}');
});
ok( $node->poll_query_until('shop',
		"SELECT status FROM payments.compensations WHERE id = $y", 'succeeded'),
	"another role's item runs while an application holds a row lock on the item the worker's marker names");
$holder->query_safe('ROLLBACK');
$holder->quit;
$node->safe_psql('shop', "SELECT payments.cancel_compensation($x)");

# --- 2. Session state between handlers of one batch ------------------------

$node->safe_psql('shop', 'TRUNCATE public.log');
# One transaction, so the three are due at the same time and run in id
# order in one batch.
my ($cursor, $lo, $defer, $seed, $look, $fk) = split /\n/, $node->safe_psql('shop', q{
	BEGIN;
	SET LOCAL ROLE app_a;
	SELECT payments.enqueue_compensation('a.leave_cursor(jsonb)', '{}', max_attempts => 1);
	SELECT payments.enqueue_compensation('a.leave_lo(jsonb)', '{}', max_attempts => 1);
	SELECT payments.enqueue_compensation('a.defer(jsonb)', '{}', max_attempts => 1);
	SELECT payments.enqueue_compensation('a.seed(jsonb)', '{}', max_attempts => 1);
	SET LOCAL ROLE app_b;
	SELECT payments.enqueue_compensation('b.look(jsonb)', '{}', max_attempts => 1);
	SELECT payments.enqueue_compensation('b.fk(jsonb)', '{}', max_attempts => 1);
	COMMIT;
});
$node->poll_query_until('shop',
	"SELECT bool_and(finished_at IS NOT NULL) FROM payments.compensations WHERE id IN ($look, $fk)", 't')
  or die "app_b's items did not run";
is($node->safe_psql('shop', "SELECT status FROM payments.compensations WHERE id = $look"),
	'succeeded', "app_b's looking handler ran");
my %seen = map { (split /: /, $_, 2)[0] => $_ }
  split /\n/, $node->safe_psql('shop', "SELECT what FROM public.log WHERE who = 'b'");
my $seeded = $node->safe_psql('shop', 'SELECT setseed(0.5); SELECT random()');
$seeded = (split /\n/, $seeded)[-1];

is($node->safe_psql('shop', "SELECT status || ': ' || last_error FROM payments.compensations WHERE id = $cursor"),
	'dead: compensation handler left a cursor open', 'a handler that leaves a cursor open fails');
is($node->safe_psql('shop', "SELECT status FROM payments.compensations WHERE id = $lo"),
	'succeeded', 'a handler that leaves a large object open succeeds');
is($node->safe_psql('shop', "SELECT status || ': ' || last_error FROM payments.compensations WHERE id = $defer"),
	'dead: SET CONSTRAINTS cannot be used in a compensation handler',
	'a handler cannot change the deferral of constraints');
is($seen{cursors}, 'cursors: 0', "app_b's handler does not see app_a's open cursor in pg_cursors");
ok(!defined $seen{fetched}, "app_b's handler cannot fetch app_a's cursor")
  or diag($seen{fetched});
ok(!defined $seen{lo}, "app_b's handler cannot read app_a's large object through its descriptor")
  or diag($seen{lo});
ok(defined $seen{random} && $seen{random} ne "random: $seeded", "app_a's handler does not choose app_b's random() seed");
is($node->safe_psql('shop',
	"SELECT status || coalesce(' ' || last_error, '') FROM payments.compensations WHERE id = $fk"),
	'succeeded', "app_a's SET CONSTRAINTS does not make app_b's handler fail");

# --- 3. run_compensations called from a session, without the worker ---------

$node->safe_psql('postgres', 'ALTER SYSTEM SET payments.worker_enabled = off');
$node->reload;
$node->poll_query_until('shop',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'", '0')
  or die "the worker did not stop";
my ($stubborn, $after) = split /\n/, $node->safe_psql('shop', q{
	BEGIN;
	SET LOCAL ROLE app_a;
	SELECT payments.enqueue_compensation('a.stubborn(jsonb)', '{}', max_attempts => 1);
	SET LOCAL ROLE app_b;
	SELECT payments.enqueue_compensation('b.noop(jsonb)', '{}');
	COMMIT;
});
# The handler catches the cancel of handler_timeout (1s) and of the
# caller's statement_timeout (2s); the session is ended instead.  The
# bound is the suite's usual one, only there to end the test (psql dies)
# if the session never ends.
my ($ret, $out, $err) = $node->psql('shop',
	"SET statement_timeout = '2s'; SELECT payments.run_compensations(10)",
	timeout => $PostgreSQL::Test::Utils::timeout_default);
like($err, qr/terminating connection/,
	'a handler that catches every cancel ends the session that runs it');
is($node->safe_psql('shop', qq{
	SELECT c.status || ' ' || c.attempts || ' ' || a.sqlstate
	  FROM payments.compensations c
	  JOIN payments.compensation_attempts a ON a.compensation_id = c.id
	 WHERE c.id = $stubborn}),
	'dead 1 57014', 'and its attempt is recorded as timed out, so it does not hold the next call');
is($node->safe_psql('shop', 'SELECT payments.run_compensations(10)'), '1',
	'the next call runs the other role\'s item');
is($node->safe_psql('shop', "SELECT status FROM payments.compensations WHERE id = $after"),
	'succeeded', 'which succeeds');

$node->stop('immediate');
done_testing();
