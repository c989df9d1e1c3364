# Compensations run by the real worker: retried with backoff until they
# succeed or are dead, stopped by handler_timeout, never run twice or lost
# across a kill -9 in the middle of a handler, external handlers left to
# their executors, and no role gaining rights through the queue.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('main', conf => qq{
payments.backoff_base = 10ms
payments.backoff_max = 100ms
});

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
CREATE EXTENSION payments;
CREATE TABLE done (n text, who text);
-- Fails on its first two tries (counted in a table the failures roll back
-- with, so in a sequence), then succeeds.
CREATE SEQUENCE flaky_tries;
CREATE FUNCTION flaky(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('public.flaky_tries') <= 2 THEN
        RAISE EXCEPTION 'gateway timeout' USING ERRCODE = '08006';
    END IF;
    INSERT INTO public.done VALUES (p->>'n', current_user);
END
$$;
CREATE FUNCTION broken(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.done VALUES (p->>'n', current_user);
    RAISE EXCEPTION 'refund rejected' USING ERRCODE = '22023';
END
$$;
CREATE FUNCTION ok(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.done VALUES (p->>'n', current_user);
END
$$;
CREATE FUNCTION forever(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;
-- Sleeps on its first attempt (read from its own item: the handler runs as
-- the superuser who queued it), then does its work.
CREATE FUNCTION sleepy(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF (SELECT attempts FROM payments.compensations WHERE payload = p) = 1 THEN
        PERFORM pg_sleep(600);
    END IF;
    INSERT INTO public.done VALUES (p->>'n', current_user);
END
$$;
CREATE FUNCTION gateway(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.done VALUES (p->>'n', current_user);
END
$$;
});

wait_for_worker($node, 'shop');

sub item
{
	my ($n, $cols) = @_;
	return $node->safe_psql('shop',
		"SELECT $cols FROM payments.compensations WHERE payload->>'n' = '$n'");
}

sub wait_status
{
	my ($n, $status) = @_;
	$node->poll_query_until('shop',
		"SELECT status FROM payments.compensations WHERE payload->>'n' = '$n'", $status)
	  or die "compensation $n did not become $status: " . item($n, 'status, attempts, last_error');
}

# --- retried until it succeeds ---

$node->safe_psql('shop',
	q{SELECT payments.enqueue_compensation('flaky(jsonb)', '{"n": "flaky"}')});
wait_status('flaky', 'succeeded');
is(item('flaky', 'attempts'), '3', 'a handler failing twice then succeeding ends succeeded after 3 attempts');
is( $node->safe_psql('shop',
		q{SELECT string_agg(attempt || ':' || sqlstate || ':' || error, ',' ORDER BY attempt)
		    FROM payments.compensation_attempts a JOIN payments.compensations c ON c.id = a.compensation_id
		   WHERE c.payload->>'n' = 'flaky'}),
	'1:08006:gateway timeout,2:08006:gateway timeout',
	'with one attempt row per failure: when, error, SQLSTATE');
is($node->safe_psql('shop', q{SELECT count(*) FROM done WHERE n = 'flaky'}), '1',
	'and its work done once');

# --- dead after max_attempts ---

$node->safe_psql('shop',
	q{SELECT payments.enqueue_compensation('broken(jsonb)', '{"n": "broken"}', max_attempts => 4)});
wait_status('broken', 'dead');
is(item('broken', 'attempts || \'/\' || max_attempts || \' \' || (finished_at IS NOT NULL)'), '4/4 true',
	'an always-failing handler ends dead after max_attempts');
is( $node->safe_psql('shop',
		q{SELECT count(*) FROM payments.compensation_attempts a JOIN payments.compensations c ON c.id = a.compensation_id
		   WHERE c.payload->>'n' = 'broken' AND a.sqlstate = '22023'}),
	'4', 'with its 4 failed attempts recorded');
is($node->safe_psql('shop', q{SELECT count(*) FROM done WHERE n = 'broken'}), '0',
	'and none of its failed attempts left an effect');
$node->safe_psql('shop',
	q{SELECT payments.retry_compensation(id) FROM payments.compensations WHERE payload->>'n' = 'broken'});
$node->poll_query_until('shop',
	q{SELECT c.status = 'dead' AND c.attempts = 4 FROM payments.compensations c WHERE c.payload->>'n' = 'broken'
	  AND (SELECT count(*) FROM payments.compensation_attempts a WHERE a.compensation_id = c.id) = 8})
  or die 'retried compensation did not die again';
pass('retry_compensation gives a dead one a fresh budget, which the worker uses up');

# --- handler_timeout ---

$node->append_conf('postgresql.conf', 'payments.handler_timeout = 200ms');
$node->reload;
$node->safe_psql('shop',
	q{SELECT payments.enqueue_compensation('forever(jsonb)', '{"n": "forever"}', max_attempts => 2)});
wait_status('forever', 'dead');
is( $node->safe_psql('shop',
		q{SELECT string_agg(sqlstate, ',') FROM payments.compensation_attempts a
		    JOIN payments.compensations c ON c.id = a.compensation_id WHERE c.payload->>'n' = 'forever'}),
	'57014,57014', 'a handler that never returns is stopped by handler_timeout and counts as a failure');
$node->safe_psql('shop',
	q{SELECT payments.enqueue_compensation('ok(jsonb)', '{"n": "after-timeout"}')});
wait_status('after-timeout', 'succeeded');
pass('and the worker goes on with the next items');
$node->append_conf('postgresql.conf', 'payments.handler_timeout = 30min');
$node->reload;

# --- wake-up at commit ---

# With an hour's naptime, only the wake-up at commit can make the worker
# run an item before the test gives up.  A restart makes the worker start
# with that naptime; after its first round it sleeps on it.
$node->append_conf('postgresql.conf', 'payments.worker_naptime = 1h');
$node->restart;
$node->poll_query_until('shop',
	'SELECT last_run IS NOT NULL FROM payments.worker_status()', 't')
  or die 'the worker did not finish its first round after the restart';
$node->safe_psql('shop', q{SELECT payments.enqueue_compensation('ok(jsonb)', '{"n": "prompt"}')});
ok( $node->poll_query_until('shop',
		q{SELECT status FROM payments.compensations WHERE payload->>'n' = 'prompt'}, 'succeeded'),
	'with an hour\'s naptime, a committed enqueue wakes the worker, which runs it');
$node->append_conf('postgresql.conf', 'payments.worker_naptime = 100ms');
$node->reload;

# --- external handlers are left to their executors ---

$node->safe_psql('shop', q{
SELECT payments.register_external_handler('gateway(jsonb)');
SELECT payments.enqueue_compensation('gateway(jsonb)', '{"n": "external"}');
});
$node->safe_psql('shop', q{SELECT payments.enqueue_compensation('ok(jsonb)', '{"n": "later"}')});
wait_status('later', 'succeeded');
is(item('external', 'status || \' \' || attempts'), 'pending 0',
	'the worker ran an item queued later but never the external handler\'s');
is( $node->safe_psql('shop',
		q{SELECT count(*) FROM payments.claim_compensations('gateway(jsonb)', 10, '1 second')}),
	'1', 'an executor claims it');
wait_status('external', 'pending');
is( $node->safe_psql('shop',
		q{SELECT a.sqlstate || ' ' || c.attempts FROM payments.compensation_attempts a
		    JOIN payments.compensations c ON c.id = a.compensation_id WHERE c.payload->>'n' = 'external'}),
	'PM304 1', 'a claim whose lease runs out goes back to pending, by the worker, as a failed attempt');
is($node->safe_psql('shop', q{SELECT count(*) FROM done WHERE n = 'external'}), '0',
	'and the worker still never ran it');

# --- kill -9 of the worker in the middle of a handler ---

# Ten items around one that sleeps on its first attempt, all taken by one
# call of the worker: it dies while the five before the sleeper have run
# (uncommitted) and the five after it have not.
$node->safe_psql('shop', q{
BEGIN;
SELECT payments.enqueue_compensation('ok(jsonb)', jsonb_build_object('n', 'k' || i)) FROM generate_series(1, 5) i;
SELECT payments.enqueue_compensation('sleepy(jsonb)', '{"n": "sleeper"}');
SELECT payments.enqueue_compensation('ok(jsonb)', jsonb_build_object('n', 'k' || i)) FROM generate_series(6, 10) i;
COMMIT;
});
$node->poll_query_until('shop',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker' AND wait_event = 'PgSleep'",
	'1')
  or die 'the sleeping handler did not start';
is( $node->safe_psql('shop',
		q{SELECT count(*) FILTER (WHERE status = 'pending' AND attempts = 0) FROM payments.compensations
		   WHERE payload->>'n' ~ '^(k[0-9]+|sleeper)$'}),
	'11', 'mid-handler, nothing of the batch is committed: every item is pending with no attempt counted');
is($node->safe_psql('shop', q{SELECT count(*) FROM done WHERE n ~ '^k'}), '0',
	'and nothing it ran is visible yet');

my $pid = $node->safe_psql('shop', 'SELECT pid FROM payments.worker_status()');
kill 'KILL', $pid or die "could not kill worker $pid";
$node->poll_query_until('shop',
	q{SELECT count(*) FROM payments.compensations WHERE payload->>'n' ~ '^(k[0-9]+|sleeper)$' AND status = 'succeeded'},
	'11')
  or die 'the batch was not finished after the crash: '
  . $node->safe_psql('shop', q{SELECT string_agg(payload->>'n' || '=' || status, ',') FROM payments.compensations});
pass('after kill -9 and the restart, every item of the batch succeeded: none lost');
is( $node->safe_psql('shop',
		q{SELECT count(*) || ' ' || count(DISTINCT n) FROM done WHERE n ~ '^(k[0-9]+|sleeper)$'}),
	'11 11', 'and none succeeded twice');
is( $node->safe_psql('shop',
		q{SELECT string_agg(DISTINCT c.attempts || ':' || a.sqlstate, ',')
		    FROM payments.compensations c JOIN payments.compensation_attempts a ON a.compensation_id = c.id
		   WHERE c.payload->>'n' ~ '^(k[0-9]+|sleeper)$'}),
	'2:PM304', 'the interrupted attempt of the sleeper is counted (PM304) and its retry was the second');
is( $node->safe_psql('shop',
		q{SELECT string_agg(DISTINCT attempts::text, ',') FROM payments.compensations
		   WHERE payload->>'n' ~ '^k[0-9]+$'}),
	'1', 'the items around it, run again after the crash, were charged only the attempt that succeeded');

# --- no escalation through the queue ---

$node->safe_psql('shop', q{
CREATE ROLE mallory LOGIN;
GRANT payments_app TO mallory;
CREATE SCHEMA mallory AUTHORIZATION mallory;
GRANT INSERT ON done TO mallory;
CREATE FUNCTION public.admin_only(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.done VALUES ('admin_only', current_user);
END
$$;
REVOKE EXECUTE ON FUNCTION public.admin_only(jsonb) FROM PUBLIC;
});
$node->safe_psql('shop', q{
SET ROLE mallory;
CREATE FUNCTION mallory.escalate(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.done VALUES (p->>'n', current_user);
    EXECUTE p->>'sql';
END
$$;
-- A report a superuser may call: it queues mallory's handler.
CREATE FUNCTION mallory.report() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT payments.enqueue_compensation('mallory.escalate(jsonb)',
        '{"n": "via-definer", "sql": "ALTER ROLE mallory SUPERUSER"}', max_attempts => 2)
$$;
});
my ($ret, $out, $err) = $node->psql('shop',
	q{SELECT payments.enqueue_compensation('public.admin_only(jsonb)', '{}')},
	extra_params => [ '-U', 'mallory' ]);
like($err, qr/permission denied for function public\.admin_only/,
	'a role cannot queue a handler it may not execute');
$node->safe_psql('shop', q{
SELECT payments.enqueue_compensation('mallory.escalate(jsonb)',
    '{"n": "direct", "sql": "ALTER ROLE mallory SUPERUSER"}', max_attempts => 2);
SELECT payments.enqueue_compensation('mallory.escalate(jsonb)',
    '{"n": "session", "sql": "SET SESSION AUTHORIZATION DEFAULT"}', max_attempts => 2);
}, extra_params => [ '-U', 'mallory' ]);
# the superuser falls for the SECURITY DEFINER trick
$node->safe_psql('shop', 'SELECT mallory.report()');
wait_status('direct', 'dead');
wait_status('session', 'dead');
wait_status('via-definer', 'dead');
is( $node->safe_psql('shop',
		q{SELECT string_agg(DISTINCT enqueued_by::text, ',') FROM payments.compensations WHERE handler LIKE 'mallory.%'}),
	'mallory', 'every item of mallory\'s handler, even one queued by a superuser through her SECURITY DEFINER function, runs as mallory');
is($node->safe_psql('shop', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'}), 'f',
	'the worker did not make mallory a superuser');
is( $node->safe_psql('shop',
		q{SELECT string_agg(DISTINCT a.sqlstate, ',') FROM payments.compensation_attempts a
		    JOIN payments.compensations c ON c.id = a.compensation_id WHERE c.handler LIKE 'mallory.%'}),
	'42501', 'every escalation attempt was refused');
is($node->safe_psql('shop', q{SELECT count(*) FROM done WHERE who <> 'mallory' AND n IN ('direct', 'session', 'via-definer')}),
	'0', 'and nothing ran as anyone else');

$node->stop;
done_testing();
