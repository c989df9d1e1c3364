# Sagas undone by the real worker.  An application role (not a superuser,
# a member of payments_app) records the forward steps of its sagas, each in
# its own transaction, and aborts them; the worker runs each saga's chain
# of compensations in reverse step order, one link after the other:
#  - five steps aborted: undone last to first, each once, and a step whose
#    transaction rolled back never undone;
#  - a kill -9 of the worker, and an immediate stop of the server, while
#    the third link's handler runs: after the restart the chain goes on
#    where it stood, the interrupted link is run again (its first attempt
#    charged as interrupted, its effect rolled back) and nothing is undone
#    twice or out of order;
#  - a saga past its timeout is aborted by the worker and undone; one
#    completed within its timeout never is;
#  - a dead link halts the chain (the saga shows as stuck) and a retry of
#    it resumes the chain, which then finishes in order.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('saga', conf => qq{
payments.backoff_base = 10ms
payments.backoff_max = 100ms
});

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
CREATE EXTENSION payments;
CREATE ROLE saga_app LOGIN;
GRANT payments_app TO saga_app;
CREATE SCHEMA app AUTHORIZATION saga_app;
});

# Everything the sagas use is the application's, made by its role.
# Handlers run with an empty search_path, so every name is qualified.
app_sql(q{
-- The forward work of each step, and what the compensations undid, in the
-- order they committed their work (n is taken when a handler runs).
CREATE TABLE app.forward (saga text, step text);
CREATE TABLE app.undo_log (n bigserial, saga text, step text);
-- A compensation fails while its (saga, step) is in app.fail, and sleeps
-- (after doing its work) while it is in app.hold.
CREATE TABLE app.fail (saga text, step text);
CREATE TABLE app.hold (saga text, step text);
CREATE FUNCTION app.undo(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO app.undo_log (saga, step) VALUES (p->>'saga', p->>'step');
    IF EXISTS (SELECT FROM app.fail WHERE saga = p->>'saga' AND step = p->>'step') THEN
        RAISE EXCEPTION 'cannot undo % of %', p->>'step', p->>'saga'
            USING ERRCODE = '08006';
    END IF;
    IF EXISTS (SELECT FROM app.hold WHERE saga = p->>'saga' AND step = p->>'step') THEN
        PERFORM pg_sleep(600);
    END IF;
END $$;
});

wait_for_worker($node, 'shop');

# SQL run as the application's role.
sub app_sql
{
	my ($sql) = @_;
	return $node->safe_psql('shop', $sql, extra_params => [ '-U', 'saga_app' ]);
}

# Begin a saga and record steps step-1 .. step-$n, each in its own
# transaction with its forward work.
sub forward
{
	my ($saga, $n, $timeout) = @_;
	$timeout = defined $timeout ? "'$timeout'" : 'NULL';
	app_sql("SELECT payments.saga_begin('$saga', $timeout)");
	for my $i (1 .. $n)
	{
		app_sql(qq{
BEGIN;
INSERT INTO app.forward VALUES ('$saga', 'step-$i');
SELECT payments.saga_step('$saga', 'step-$i', 'app.undo(jsonb)',
                          jsonb_build_object('saga', '$saga', 'step', 'step-$i'));
COMMIT;
});
	}
}

# The steps the saga's compensations undid, in the order they did it.
sub undone
{
	my ($saga) = @_;
	return $node->safe_psql('shop',
		"SELECT string_agg(step, ',' ORDER BY n) FROM app.undo_log WHERE saga = '$saga'");
}

# The saga as the application sees it.
sub saga_row
{
	my ($saga, $cols) = @_;
	return app_sql(
		"SELECT $cols FROM payments.sagas WHERE saga_id = '$saga'");
}

# Each link of the saga's chain, first to run first: step:status:attempts.
sub links
{
	my ($saga) = @_;
	return $node->safe_psql('shop', qq{
		SELECT string_agg(s.step || ':' || c.status || ':' || c.attempts, ' ' ORDER BY s.step_no DESC)
		  FROM payments.saga_steps s
		  JOIN payments.compensations c ON c.id = s.compensation_id
		 WHERE s.saga_id = '$saga'});
}

# The failed attempts of the saga's links: step:attempt:sqlstate.
sub failed_attempts
{
	my ($saga) = @_;
	return $node->safe_psql('shop', qq{
		SELECT coalesce(string_agg(s.step || ':' || a.attempt || ':' || a.sqlstate, ' '
		                           ORDER BY s.step_no DESC, a.attempt), '')
		  FROM payments.saga_steps s
		  JOIN payments.compensation_attempts a ON a.compensation_id = s.compensation_id
		 WHERE s.saga_id = '$saga'});
}

sub wait_saga
{
	my ($saga, $status) = @_;
	$node->poll_query_until('shop',
		"SELECT status FROM payments.sagas WHERE saga_id = '$saga'", $status)
	  or die "saga $saga did not become $status: "
	  . saga_row($saga, 'status, steps_undone') . ' ' . links($saga);
}

# --- five steps aborted: undone in reverse, each once ---

is($node->safe_psql('shop', "SELECT rolsuper FROM pg_roles WHERE rolname = 'saga_app'"),
	'f', 'the sagas are an application role\'s, not a superuser\'s');
forward('five', 3);
# A step whose transaction rolls back is never recorded, so never undone.
app_sql(q{
BEGIN;
INSERT INTO app.forward VALUES ('five', 'step-lost');
SELECT payments.saga_step('five', 'step-lost', 'app.undo(jsonb)',
                          '{"saga": "five", "step": "step-lost"}');
ROLLBACK;
});
app_sql(qq{
BEGIN;
INSERT INTO app.forward VALUES ('five', 'step-$_');
SELECT payments.saga_step('five', 'step-$_', 'app.undo(jsonb)',
                          jsonb_build_object('saga', 'five', 'step', 'step-$_'));
COMMIT;
}) for (4, 5);
is(saga_row('five', "status || ' ' || steps"), 'running 5',
	'five steps recorded, the rolled-back one not');
is(app_sql(q{SELECT payments.saga_abort('five', 'payment declined')}), '5',
	'the abort queues five compensations');
wait_saga('five', 'aborted');
is(undone('five'), 'step-5,step-4,step-3,step-2,step-1',
	'the worker undid the five steps last to first, each once, and never the rolled-back step');
is(saga_row('five', "status || ' ' || steps || ' ' || steps_undone || ' ' || abort_reason"),
	'aborted 5 5 payment declined', 'payments.sagas shows the saga aborted with its five steps undone');
is(links('five'),
	'step-5:succeeded:1 step-4:succeeded:1 step-3:succeeded:1 step-2:succeeded:1 step-1:succeeded:1',
	'each link succeeded on its first attempt');
is( $node->safe_psql('shop',
		q{SELECT count(*) FROM payments.saga_steps s JOIN payments.compensations c ON c.id = s.compensation_id
		   WHERE s.saga_id = 'five' AND c.enqueued_by = 'saga_app'::regrole}),
	'5', 'and every link ran as the saga\'s role');

# --- the worker ended while the third link runs ---

# The saga's third link (step-3's undo) does its work and then sleeps: the
# first two links are committed, the third is running uncommitted, the last
# two wait for it.  The sleep is ended with its process; the hold is
# removed first, so that the link's next run does not sleep.
sub stop_mid_chain
{
	my ($saga, $stop) = @_;

	forward($saga, 5);
	app_sql("INSERT INTO app.hold VALUES ('$saga', 'step-3')");
	app_sql("SELECT payments.saga_abort('$saga', 'out of stock')");
	$node->poll_query_until('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'"
		  . " AND datname = 'shop' AND wait_event = 'PgSleep'", '1')
	  or die "the third link of $saga did not start: " . links($saga);
	is(links($saga),
		'step-5:succeeded:1 step-4:succeeded:1 step-3:pending:0 step-2:waiting:0 step-1:waiting:0',
		"$saga: mid-chain, the first two links are done, the third runs uncommitted, the last two wait");
	is(undone($saga), 'step-5,step-4', "$saga: and only their work is visible");
	app_sql("DELETE FROM app.hold WHERE saga = '$saga'");

	$stop->();

	wait_saga($saga, 'aborted');
	is(undone($saga), 'step-5,step-4,step-3,step-2,step-1',
		"$saga: after the restart the chain went on: every step undone once, last to first");
	is(saga_row($saga, "status || ' ' || steps_undone"), 'aborted 5',
		"$saga: payments.sagas shows it aborted with five steps undone");
	is(links($saga),
		'step-5:succeeded:1 step-4:succeeded:1 step-3:succeeded:2 step-2:succeeded:1 step-1:succeeded:1',
		"$saga: the interrupted link was run again, charged the interrupted attempt, and no other link ran twice");
	is(failed_attempts($saga), 'step-3:1:PM304',
		"$saga: its interrupted attempt is recorded as such (PM304)");
	like( $node->safe_psql('shop', qq{
			SELECT a.error FROM payments.compensation_attempts a
			  JOIN payments.saga_steps s ON s.compensation_id = a.compensation_id
			 WHERE s.saga_id = '$saga'}),
		qr/ended while it ran/, "$saga: with the reason");
}

my $killed_pid;
stop_mid_chain('killed', sub {
	$killed_pid = worker_pid($node, 'shop');
	ok(kill('KILL', $killed_pid), 'kill -9 of the worker while the third link runs');
});
ok( $node->log_contains(
		qr/background worker "payments worker" \(PID $killed_pid\) was terminated by signal 9/),
	'the worker was really killed, and the server restarted after it');

stop_mid_chain('stopped', sub {
	$node->stop('immediate');
	$node->start;
});

# --- a saga past its timeout is aborted by the worker ---

# Begun and its two steps recorded in one transaction, so that the steps
# cannot come after its timeout however slow the machine is.
app_sql(q{
BEGIN;
SELECT payments.saga_begin('late', '2 seconds');
SELECT payments.saga_step('late', 'step-' || i, 'app.undo(jsonb)',
                          jsonb_build_object('saga', 'late', 'step', 'step-' || i))
  FROM generate_series(1, 2) i;
COMMIT;
});
forward('on-time', 2, '1 hour');
app_sql(q{SELECT payments.saga_complete('on-time')});
forward('in-time', 2, '1 hour');
wait_saga('late', 'aborted');
is(saga_row('late', "status || ' ' || steps || ' ' || steps_undone || ' ' || abort_reason"),
	'aborted 2 2 timed out', 'the worker aborted the saga past its timeout, which was undone');
is(undone('late'), 'step-2,step-1', 'its two steps undone last to first, each once');
is(saga_row('on-time', "status || ' ' || steps_undone || ' ' || (abort_reason IS NULL)"),
	'completed 0 true', 'a saga completed within its timeout is never aborted');
is(saga_row('in-time', "status || ' ' || steps_undone || ' ' || (abort_reason IS NULL)"),
	'running 0 true', 'and one still within its timeout is left running');
is(undone('on-time') . undone('in-time'), '', 'neither has anything undone');

# --- a dead link halts the chain; a retry resumes it ---

forward('halted', 4);
app_sql(q{INSERT INTO app.fail VALUES ('halted', 'step-2')});
app_sql(q{
SET payments.max_attempts = 2;
SELECT payments.saga_abort('halted', 'fraud suspected');
});
wait_saga('halted', 'stuck');
is(links('halted'),
	'step-4:succeeded:1 step-3:succeeded:1 step-2:dead:2 step-1:waiting:0',
	'the third link died after its two attempts and the one after it still waits');
is(failed_attempts('halted'), 'step-2:1:08006 step-2:2:08006', 'with both failures recorded');
is(undone('halted'), 'step-4,step-3', 'only the links before the dead one did their work');
is(saga_row('halted', "status || ' ' || steps_undone"), 'stuck 2',
	'payments.sagas shows the saga stuck with two steps undone');

my $dead = $node->safe_psql('shop',
	q{SELECT compensation_id FROM payments.saga_steps WHERE saga_id = 'halted' AND step = 'step-2'});
app_sql(q{DELETE FROM app.fail});
app_sql("SELECT payments.retry_compensation($dead)");
wait_saga('halted', 'aborted');
is(undone('halted'), 'step-4,step-3,step-2,step-1',
	'the retry resumed the chain, which finished last to first, each step undone once');
is(saga_row('halted', "status || ' ' || steps_undone"), 'aborted 4',
	'payments.sagas shows it aborted with four steps undone');

is( $node->safe_psql('shop',
		q{SELECT count(*) FROM payments.compensations WHERE status NOT IN ('succeeded')}),
	'0', 'in the end no compensation of any saga is left unfinished');

$node->stop;
done_testing();
