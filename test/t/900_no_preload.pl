# Without shared_preload_libraries every SQL function works: CREATE
# EXTENSION and LOAD load the library on demand (and must not end the
# session), each capability does its job once, and worker_status() reports
# that there is no worker.
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PaymentsNode;

my $node = payments_node('no_preload', preload => 0);

is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'),
	'', 'the node does not preload payments');

# CREATE EXTENSION loads the library in this session; the session goes on.
my ($ret, $out, $err) = $node->psql('postgres',
	"CREATE EXTENSION payments;\nSELECT 'still here'");
is($ret, 0, 'CREATE EXTENSION without preloading succeeds')
  or diag($err);
is($out, 'still here', 'the session that created the extension goes on');
unlike($err, qr/FATAL|PGC_POSTMASTER/, 'no FATAL error');

# LOAD in a fresh session, and a second LOAD of the loaded library.
($ret, $out, $err) = $node->psql('postgres',
	"LOAD 'payments';\nLOAD 'payments';\nSHOW payments.worker_enabled");
is($ret, 0, "LOAD 'payments' without preloading succeeds") or diag($err);
is($out, 'on', 'the settings a session can use are defined');

# The setting that sizes shared memory exists only when preloaded.
($ret, $out, $err) =
  $node->psql('postgres', "LOAD 'payments';\nSHOW payments.max_workers");
isnt($ret, 0, 'SHOW payments.max_workers fails without preloading');
like(
	$err,
	qr/unrecognized configuration parameter "payments\.max_workers"/,
	'... with PostgreSQL\'s own error for an unknown setting');
unlike($err, qr/FATAL/, '... and the session is not ended');

# A session whose first use of the library is a function call.
is( $node->safe_psql(
		'postgres',
		q{SELECT outcome FROM payments.idempotency_begin('checkout', 'k1', '{"amount": 10}')}
	),
	'started',
	'idempotency: a new key starts');
$node->safe_psql('postgres',
	q{SELECT payments.idempotency_complete('checkout', 'k1', '{"paid": true}', 201)});
is( $node->safe_psql(
		'postgres',
		q{SELECT outcome || ' ' || response::text || ' ' || response_code
		    FROM payments.idempotency_begin('checkout', 'k1', '{"amount": 10}')}
	),
	'replayed {"paid": true} 201',
	'idempotency: the completed key replays its stored answer');
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT payments.idempotency_begin('checkout', 'k1', '{"amount": 11}')});
like($err, qr/PM001|different request/i,
	'idempotency: the key with another request is refused');

# Reservations: set, reserve, confirm, release, expire.
$node->safe_psql('postgres', q{SELECT payments.stock_set('mug', 10)});
my $held = $node->safe_psql('postgres',
	q{SELECT payments.reserve('order-1', 'mug', 3)});
my $released = $node->safe_psql('postgres',
	q{SELECT payments.reserve('order-2', 'mug', 2)});
my $lapsed = $node->safe_psql('postgres',
	q{SELECT payments.reserve('order-3', 'mug', 1)});
is( $node->safe_psql('postgres',
		q{SELECT on_hand || '/' || held || '/' || available FROM payments.stock_levels WHERE sku = 'mug'}),
	'10/6/4',
	'reserve holds the stock');
is($node->safe_psql('postgres', "SELECT payments.confirm_reservation($held)"),
	't', 'confirm_reservation sells the hold');
is($node->safe_psql('postgres', "SELECT payments.release_reservation($released)"),
	't', 'release_reservation gives the hold back');
# Make the last hold lapse without waiting for its TTL.
$node->safe_psql('postgres',
	"UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE id = $lapsed");
is($node->safe_psql('postgres', 'SELECT payments.expire_reservations()'),
	'1', 'expire_reservations reclaims the lapsed hold');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(order_ref || ':' || state, ',' ORDER BY order_ref) FROM payments.reservations}),
	'order-1:confirmed,order-2:released,order-3:expired',
	'each hold ends in its state');
is( $node->safe_psql('postgres',
		q{SELECT on_hand || '/' || held || '/' || available FROM payments.stock_levels WHERE sku = 'mug'}),
	'7/0/7',
	'stock levels add up');

# State guard: a machine, a guarded table, a move along an edge and one off.
$node->safe_psql(
	'postgres', q{
	SELECT payments.define_state_machine('order',
		'{"created": ["paid", "cancelled"], "paid": ["shipped"]}');
	CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
	SELECT payments.guard_state('orders', 'status', 'order');
	INSERT INTO orders VALUES (1, 'created');
	UPDATE orders SET status = 'paid' WHERE id = 1;
});
($ret, $out, $err) = $node->psql('postgres',
	q{UPDATE orders SET status = 'created' WHERE id = 1});
like($err, qr/invalid transition from "paid" to "created"/,
	'state guard: a move off the machine is refused');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(coalesce(from_state, '-') || '>' || to_state, ',' ORDER BY id) FROM payments.state_history}),
	'->created,created>paid',
	'state guard: the accepted moves are recorded');

# Compensations: queued, then run by run_compensations in one session.
$node->safe_psql(
	'postgres', q{
	CREATE TABLE refunds (order_ref text);
	CREATE FUNCTION refund(p jsonb) RETURNS void LANGUAGE sql
		AS $$INSERT INTO public.refunds VALUES (p->>'order')$$;
});
my $item = $node->safe_psql('postgres',
	q{SELECT payments.enqueue_compensation('refund(jsonb)', '{"order": "order-2"}')});
($ret, $out, $err) = $node->psql(
	'postgres', q{
	SELECT payments.run_compensations(10);
	SELECT payments.run_compensations(10);
});
is($ret, 0, 'run_compensations runs without a worker') or diag($err);
is($node->safe_psql('postgres', "SELECT status FROM payments.compensations WHERE id = $item"),
	'succeeded', 'the compensation succeeded');
is($node->safe_psql('postgres', 'SELECT string_agg(order_ref, \',\') FROM refunds'),
	'order-2', 'its handler ran once');

# The worker: none, and asking about it or waking it is no error.
is( $node->safe_psql(
		'postgres',
		q{SELECT coalesce(pid::text, '-') || ' ' || state FROM payments.worker_status()}),
	'- not preloaded',
	'worker_status() reports that there is no worker');
is($node->safe_psql('postgres', 'SELECT state FROM payments.worker_activity'),
	'not preloaded', 'so does the view');
($ret, $out, $err) = $node->psql('postgres',
	"BEGIN;\nSELECT payments.notify_worker();\nCOMMIT;\nSELECT 'woken'");
is($ret, 0, 'notify_worker() commits without a worker to wake') or diag($err);
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'payments%'}),
	'0',
	'no payments process runs');

$node->stop;
done_testing();
