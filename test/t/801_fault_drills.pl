# Fault drills with the worker running: every fault point is armed with
# "crash" (the process that passes it dies as with kill -9, and the server
# restarts every backend) and then with "error" (the step fails with
# PM701), its step is driven, and then every invariant is checked:
#  - the stock ledger balances: what was received equals what is on hand
#    plus what was sold, and what is held is what live holds keep;
#  - nothing half-done survives: a key, a hold, a fence row, a callback, a
#    queued undo exists only if its whole step committed;
#  - nothing is lost: once disarmed, each step done again succeeds once,
#    every compensation runs exactly once, every saga's chain in reverse;
#  - payments.check() finds nothing.
# A restart disarms every point (the armed state is in shared memory); a
# "wait" holds a step exactly there until it is disarmed, while other
# sessions go on; a server started
# with payments.fault_injection off refuses to arm.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('drills', conf => qq{
payments.fault_injection = on
payments.backoff_base = 10ms
payments.backoff_max = 100ms
});

$node->safe_psql('postgres', 'CREATE DATABASE shop');
$node->safe_psql('shop', q{
CREATE EXTENSION payments;
CREATE TABLE undo_log (n bigserial, tag text);
CREATE FUNCTION undo(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.undo_log (tag) VALUES (p->>'tag') $$;
SELECT payments.stock_set('mug', 100);
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a-secret-of-the-psp');
CREATE TABLE recon_orders (ref text, amount bigint, status text, paid_at timestamptz);
INSERT INTO recon_orders VALUES ('r-1', 100, 'paid', '2026-11-01 09:00+00');
SELECT payments.define_reconciliation('psp', 'recon_orders', 'ref', 'amount', 'status', 'paid_at',
    status_map => '{"internal": {"paid": "succeeded"}, "external": {"SUCCESS": "succeeded"}}');
});
wait_for_worker($node, 'shop');

my $n = 0;    # a fresh tag per drill

# The invariants, as one row of booleans that must all be true.
sub invariants
{
	return $node->safe_psql('shop', q{
SELECT concat_ws(' ',
  -- received (100) = on hand + sold
  (SELECT on_hand FROM payments.stock_levels WHERE sku = 'mug')
    + (SELECT coalesce(sum(qty), 0) FROM payments.reservations
        WHERE sku = 'mug' AND state = 'confirmed') = 100,
  -- held = what held reservations keep
  (SELECT held FROM payments.stock_levels WHERE sku = 'mug')
    = (SELECT coalesce(sum(qty), 0) FROM payments.reservations
        WHERE sku = 'mug' AND state = 'held' AND expires_at > clock_timestamp()),
  -- every compensation that succeeded ran exactly once
  NOT EXISTS (SELECT FROM payments.compensations c
               WHERE c.status = 'succeeded' AND c.payload ? 'tag'
                 AND (SELECT count(*) FROM undo_log u WHERE u.tag = c.payload->>'tag') <> 1),
  -- no undo ran for an item that was not queued
  NOT EXISTS (SELECT FROM undo_log u WHERE NOT EXISTS
               (SELECT FROM payments.compensations c WHERE c.payload->>'tag' = u.tag)),
  -- nothing is left running
  NOT EXISTS (SELECT FROM payments.compensations WHERE status = 'running'))});
}

# Wait until the queue has run everything that is due.
sub drain
{
	$node->poll_query_until('shop', q{
SELECT count(*) = 0 FROM payments.compensations
 WHERE status IN ('pending', 'running', 'waiting')})
	  or die 'the queue did not drain';
}

# Wait for the server to come back after a process died, and for the
# worker to be back in the database.
sub wait_restarted
{
	my ($offset) = @_;
	$node->wait_for_log(qr/terminated by signal 9: Killed/, $offset);
	$node->poll_query_until('postgres', 'SELECT true') or die 'server did not restart';
	wait_for_worker($node, 'shop');
}

# Every point: how to drive its step (SQL of one session, or of the worker
# when it is queued), and how to check, after the fault, that the step
# left nothing half-done and that done again it succeeds once.
my %drills = (
	idempotency_begin => {
		step => sub { "SELECT payments.idempotency_begin('shop', 'k-$_[0]', '{}')" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT count(*) FROM payments.idempotency_keys WHERE key = 'k-$_[0]'"),
				'0', "idempotency_begin ($_[1]): no key was written");
			is($node->safe_psql('shop',
				"SELECT outcome FROM payments.idempotency_begin('shop', 'k-$_[0]', '{}')"),
				'started', "idempotency_begin ($_[1]): the retry starts the key");
		},
	},
	idempotency_complete => {
		before => sub { "SELECT payments.idempotency_begin('shop', 'c-$_[0]', '{}')" },
		step => sub { "SELECT payments.idempotency_complete('shop', 'c-$_[0]', '{\"ok\": 1}')" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT state FROM payments.idempotency_keys WHERE key = 'c-$_[0]'"),
				'started', "idempotency_complete ($_[1]): the key is still started");
			$node->safe_psql('shop',
				"SELECT payments.idempotency_complete('shop', 'c-$_[0]', '{\"ok\": 1}')");
			is($node->safe_psql('shop',
				"SELECT outcome FROM payments.idempotency_begin('shop', 'c-$_[0]', '{}')"),
				'replayed', "idempotency_complete ($_[1]): completed on retry, then replayed");
		},
	},
	reserve_after_take => {
		step => sub { "SELECT payments.reserve('o-$_[0]', 'mug', 3)" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT count(*) FROM payments.reservations WHERE order_ref = 'o-$_[0]'"),
				'0', "reserve_after_take ($_[1]): no hold, and the stock taken came back");
			$node->safe_psql('shop', "SELECT payments.reserve('o-$_[0]', 'mug', 3)");
			is($node->safe_psql('shop', "SELECT payments.confirm_order('o-$_[0]')"),
				'1', "reserve_after_take ($_[1]): reserved and sold on retry");
		},
	},
	reservation_confirm => {
		before => sub { "SELECT payments.reserve('p-$_[0]', 'mug', 2)" },
		step => sub { "SELECT payments.confirm_order('p-$_[0]')" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT state FROM payments.reservations WHERE order_ref = 'p-$_[0]'"),
				'held', "reservation_confirm ($_[1]): the hold is still held");
			is($node->safe_psql('shop', "SELECT payments.confirm_order('p-$_[0]')"),
				'1', "reservation_confirm ($_[1]): confirmed on retry");
		},
	},
	reservation_expire_batch => {
		worker => 1,
		step => sub {
			"SELECT payments.reserve('e-$_[0]', 'mug', 4, '1 second')";
		},
		after => sub {
			$node->poll_query_until('shop',
				"SELECT state = 'expired' FROM payments.reservations WHERE order_ref = 'e-$_[0]'")
			  or die 'the hold did not expire';
			pass("reservation_expire_batch ($_[1]): the lapsed hold expires after the restart");
		},
	},
	worker_after_claim => {
		worker => 1,
		step => sub { "SELECT payments.enqueue_compensation('undo(jsonb)', '{\"tag\": \"w-$_[0]\"}')" },
		after => sub {
			drain();
			is($node->safe_psql('shop', "SELECT count(*) FROM undo_log WHERE tag = 'w-$_[0]'"),
				'1', "worker_after_claim ($_[1]): the handler ran once");
		},
	},
	worker_after_handler => {
		worker => 1,
		step => sub { "SELECT payments.enqueue_compensation('undo(jsonb)', '{\"tag\": \"h-$_[0]\"}')" },
		after => sub {
			drain();
			is($node->safe_psql('shop', "SELECT count(*) FROM undo_log WHERE tag = 'h-$_[0]'"),
				'1', "worker_after_handler ($_[1]): the handler's effect stands once");
		},
	},
	callback_after_dedupe => {
		step => sub { "SELECT payments.receive_callback('psp', 'evt-$_[0]', 'A-$_[0]', 'payment.authorized', '{}')" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT count(*) FROM payments.callbacks WHERE event_id = 'evt-$_[0]'"),
				'0', "callback_after_dedupe ($_[1]): the event was not recorded");
			is($node->safe_psql('shop',
				"SELECT payments.receive_callback('psp', 'evt-$_[0]', 'A-$_[0]', 'payment.authorized', '{}')"),
				'new', "callback_after_dedupe ($_[1]): the redelivery is its first delivery");
		},
	},
	reconcile_mid_run => {
		before => sub {
			"SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'f-$_[0]');"
			  . " SELECT payments.statement_add(max(id), '[{\"external_id\": \"t-1\","
			  . " \"payment_ref\": \"r-1\", \"amount\": 100, \"currency\": \"EUR\", \"status\": \"SUCCESS\","
			  . " \"occurred_at\": \"2026-11-01 09:00:05+00\"}]') FROM payments.statements;"
			  . " SELECT payments.statement_close(max(id)) FROM payments.statements;";
		},
		step => sub { "SELECT payments.reconcile('psp', max(id)) FROM payments.statements" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT count(*) FROM payments.reconciliation_runs"
				  . " WHERE statement_id = (SELECT max(id) FROM payments.statements)"),
				'0', "reconcile_mid_run ($_[1]): no run was recorded");
			$node->safe_psql('shop',
				"SELECT payments.reconcile('psp', max(id)) FROM payments.statements");
			is($node->safe_psql('shop',
				"SELECT count(*) FROM payments.reconciliation_runs"
				  . " WHERE statement_id = (SELECT max(id) FROM payments.statements)"
				  . " AND finished_at IS NOT NULL AND lines = 1 AND differences = 0"),
				'1', "reconcile_mid_run ($_[1]): the retried run finishes and matches the line");
		},
	},
	tcc_fence_write => {
		step => sub { "SELECT payments.tcc_try('g-$_[0]', 'stock')" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT count(*) FROM payments.tcc_fence WHERE gid = 'g-$_[0]'"),
				'0', "tcc_fence_write ($_[1]): no fence row");
			is($node->safe_psql('shop', "SELECT payments.tcc_try('g-$_[0]', 'stock')"),
				'proceed', "tcc_fence_write ($_[1]): the retried Try proceeds");
		},
	},
	saga_chain_step => {
		before => sub {
			"SELECT payments.saga_begin('s-$_[0]');"
			  . " SELECT payments.saga_step('s-$_[0]', 'one', 'undo(jsonb)', '{\"tag\": \"s1-$_[0]\"}');"
			  . " SELECT payments.saga_step('s-$_[0]', 'two', 'undo(jsonb)', '{\"tag\": \"s2-$_[0]\"}');";
		},
		step => sub { "SELECT payments.saga_abort('s-$_[0]', 'drill')" },
		after => sub {
			is($node->safe_psql('shop',
				"SELECT status FROM payments.saga_state WHERE saga_id = 's-$_[0]'"),
				'running', "saga_chain_step ($_[1]): the saga is still running, nothing queued");
			$node->safe_psql('shop', "SELECT payments.saga_abort('s-$_[0]', 'drill')");
			drain();
			is($node->safe_psql('shop',
				"SELECT string_agg(tag, ',' ORDER BY n) FROM undo_log WHERE tag LIKE 's_-$_[0]'"),
				"s2-$_[0],s1-$_[0]", "saga_chain_step ($_[1]): undone once, in reverse, on retry");
		},
	},
);

my @walked = sort keys %drills;
is($node->safe_psql('shop',
	"SELECT string_agg(point, ',' ORDER BY point COLLATE \"C\") FROM payments.fault_points"),
	join(',', @walked), 'every point has a drill');

for my $action ('crash', 'error')
{
	for my $point (@walked)
	{
		my $d = $drills{$point};
		my $tag = ++$n;

		$node->safe_psql('shop', $d->{before}->($tag)) if $d->{before};
		my $offset = -s $node->logfile;
		$node->safe_psql('shop', "SELECT payments.fault_arm('$point', '$action')");
		if ($d->{worker})
		{
			# The worker passes the point: it dies, or its step fails and
			# the point disarms itself.
			$node->safe_psql('shop', $d->{step}->($tag));
			if ($action eq 'crash')
			{
				wait_restarted($offset);
			}
			else
			{
				$node->wait_for_log(qr/fault injected at point "$point"/, $offset);
			}
		}
		else
		{
			my ($ret, $stdout, $stderr) = $node->psql('shop', $d->{step}->($tag));
			if ($action eq 'crash')
			{
				isnt($ret, 0, "$point (crash): the session died");
				wait_restarted($offset);
			}
			else
			{
				like($stderr, qr/fault injected at point "$point"/,
					"$point (error): the step failed with the drill's error");
			}
		}
		is($node->safe_psql('shop',
			"SELECT count(*) FROM payments.fault_points WHERE action IS NOT NULL"),
			'0', "$point ($action): no point is armed any more");
		$d->{after}->($tag, $action);
		drain();
		is(invariants(), 't t t t t', "$point ($action): every invariant holds");
		is($node->safe_psql('shop',
			"SELECT string_agg(check_name || ': ' || detail, E'\\n') FROM payments.check()"),
			'', "$point ($action): payments.check() finds nothing");
	}
}

# wait: a Try held at the fence's write, before its row exists; another
# session's Try of the same branch, which passes the point once its one
# firing is spent, finds no row, writes it and proceeds; once the point is
# disarmed, the held Try finds that row and is a duplicate.
$node->safe_psql('shop', "SELECT payments.fault_arm('tcc_fence_write', 'wait')");
my $first = $node->background_psql('shop', on_error_stop => 0);
$first->query_until(qr/started/, q{
\echo started
SELECT payments.tcc_try('held', 'stock') AS first;
});
$node->poll_query_until('shop',
	"SELECT hits > 0 FROM payments.fault_points WHERE point = 'tcc_fence_write'")
  or die 'the Try never reached the point';
is($node->safe_psql('shop', "SELECT count(*) FROM payments.tcc_fence WHERE gid = 'held'"),
	'0', 'wait: the held Try has not written its row');
is($node->safe_psql('shop', "SELECT payments.tcc_try('held', 'stock')"),
	'proceed', 'wait: a second Try meanwhile writes the row and proceeds');
is($node->safe_psql('shop', "SELECT payments.fault_disarm('tcc_fence_write')"),
	'1', 'wait: disarmed');
like($first->query('SELECT 1'), qr/duplicate/, 'wait: the held Try then is a duplicate');
$first->quit;
is($node->safe_psql('shop',
	"SELECT state FROM payments.tcc_fence WHERE gid = 'held'"),
	'tried', 'wait: one row, tried');

# A restart disarms every point.
$node->safe_psql('shop', "SELECT payments.fault_arm('tcc_fence_write', 'error', times => 5)");
$node->restart;
is($node->safe_psql('shop',
	"SELECT count(*) FROM payments.fault_points WHERE action IS NOT NULL"),
	'0', 'a restart disarms every point');

# payments.fault_injection off: arming is refused, the points are listed
# disarmed.
$node->append_conf('postgresql.conf', 'payments.fault_injection = off');
$node->restart;
my ($ret, $stdout, $stderr) = $node->psql('shop',
	"SELECT payments.fault_arm('tcc_fence_write', 'error')");
like($stderr, qr/fault injection is not enabled on this server/,
	'with payments.fault_injection off, arming is refused');
is($node->safe_psql('shop', 'SELECT count(*), count(action) FROM payments.fault_points'),
	'11|0', 'with payments.fault_injection off, every point is listed, none armed');

$node->stop;
done_testing();
