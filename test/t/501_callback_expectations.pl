# Callbacks with the real worker and real crashes: an expected callback
# that does not come in time is chased by one query item, which an
# executor claims and answers with record_query_result, meeting the
# expectation and moving the order; a backend killed with kill -9 in the
# middle of receive_callback leaves the event and its move both or neither,
# and the provider's redelivery after the restart applies it once; a kill
# -9 of the worker in the middle of a chase queues no second query.
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
CREATE ROLE shop_app LOGIN;
GRANT payments_app TO shop_app;
CREATE SCHEMA shop AUTHORIZATION shop_app;
SELECT payments.define_state_machine('shop_order', jsonb_build_object(
    'created', jsonb_build_array('awaiting_payment', 'cancelled'),
    'awaiting_payment', jsonb_build_array('paid', 'cancelled'),
    'paid', jsonb_build_array('shipped', 'refunded')));
});
$node->safe_psql('shop', q{
CREATE TABLE shop.orders (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('shop.orders', 'status', 'shop_order');
-- The provider's query API, asked by the application's executor.
CREATE FUNCTION shop.ask_provider(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT payments.register_external_handler('shop.ask_provider(jsonb)');
SELECT payments.callback_route('psp', 'payment.succeeded', 'shop.orders', 'ref', 'status', 'paid');
INSERT INTO shop.orders SELECT 'o' || i, 'created' FROM generate_series(1, 5) i;
UPDATE shop.orders SET status = 'awaiting_payment';
}, extra_params => [ '-U', 'shop_app' ]);

wait_for_worker($node, 'shop');

sub app
{
	my ($sql) = @_;
	return $node->safe_psql('shop', $sql, extra_params => [ '-U', 'shop_app' ]);
}

sub receive_sql
{
	my ($event, $ref) = @_;
	return "SELECT payments.receive_callback('psp', '$event', '$ref', 'payment.succeeded', '{}')";
}

# The moves of an order to "paid" in the state history.
sub paid_moves
{
	my ($ref) = @_;
	return $node->safe_psql('shop',
		"SELECT count(*) FROM payments.state_history WHERE tbl = 'shop.orders'::regclass"
		  . " AND row_key = '$ref' AND to_state = 'paid'");
}

# --- an expectation passes its deadline with the real worker ---

app(q{SELECT payments.expect_callback('psp', 'o1', '100 milliseconds', 'shop.ask_provider(jsonb)')});
$node->poll_query_until('shop',
	q{SELECT status FROM payments.callback_expectations WHERE payment_ref = 'o1'}, 'querying')
  or die 'the worker did not chase the expectation: '
  . $node->safe_psql('shop', q{SELECT * FROM payments.callback_expectations});
is( $node->safe_psql('shop',
		q{SELECT count(*) || ' ' || string_agg(c.status || ':' || c.attempts || ':' || c.enqueued_by, ',')
		    || ' ' || bool_and(c.id = e.compensation_id)
		    FROM payments.compensations c, payments.expected_callbacks e
		   WHERE c.handler::regprocedure = 'shop.ask_provider(jsonb)'::regprocedure AND e.payment_ref = 'o1'}),
	'1 pending:0:shop_app true',
	'past its deadline, the worker queues one query item as the role that expected the callback, and leaves it to the executor');

# The executor claims the item, asks the provider, and reports the answer
# and the item's completion in one transaction.
is( app(q{
BEGIN;
SELECT id, claim_token, payload->>'provider' AS provider, payload->>'payment_ref' AS ref
  FROM payments.claim_compensations('shop.ask_provider(jsonb)', 10, '1 minute') \gset
SELECT payments.record_query_result(:'provider', :'ref', 'payment.succeeded', '{"status": "succeeded"}');
SELECT payments.complete_compensation(:id, :claim_token);
COMMIT;
}) =~ s/\n+$//r,
	'applied', 'the query result routes like a callback: applied');
is( $node->safe_psql('shop',
		q{SELECT status || ' ' || met_by FROM payments.callback_expectations WHERE payment_ref = 'o1'}),
	'met query:17:payment.succeeded:o1', 'the expectation is met by the query result');
is($node->safe_psql('shop', q{SELECT status FROM shop.orders WHERE ref = 'o1'}),
	'paid', 'and the order moved to paid');
is( $node->safe_psql('shop',
		q{SELECT status || ' ' || attempts FROM payments.compensations WHERE handler::regprocedure = 'shop.ask_provider(jsonb)'::regprocedure}),
	'succeeded 1', 'the query item succeeded at its one claim');
is( $node->safe_psql('shop',
		q{SELECT from_state || ' ' || changed_by FROM payments.state_history
		   WHERE tbl = 'shop.orders'::regclass AND row_key = 'o1' AND to_state = 'paid'}),
	'awaiting_payment shop_app', 'the state history records the move once, by the executor\'s role');
is(app(receive_sql('evt_o1', 'o1')), 'stale',
	'the provider\'s late callback for the same payment is stale: nothing moves again');

# --- kill -9 of a backend in the middle of receive_callback ---

# o2: received in a transaction that is still open.
my $open = $node->background_psql('shop', on_error_stop => 0,
	extra_params => [ '-U', 'shop_app' ]);
$open->query_safe('BEGIN');
is($open->query_safe(receive_sql('evt_o2', 'o2')), 'applied',
	'a callback received in an open transaction is applied in it');

# o3: the application holds the order's row lock, so receive_callback has
# recorded the event and waits in the middle of its move.
my $holder = $node->background_psql('shop', on_error_stop => 0,
	extra_params => [ '-U', 'shop_app' ]);
$holder->query_safe('BEGIN');
$holder->query_safe(q{SELECT FROM shop.orders WHERE ref = 'o3' FOR UPDATE});
my $blocked = $node->background_psql('shop', on_error_stop => 0,
	extra_params => [ '-U', 'shop_app' ]);
my $pid = $blocked->query_safe('SELECT pg_backend_pid()');
$blocked->query_until(qr/receiving/, "\\echo receiving\n" . receive_sql('evt_o3', 'o3') . ";\n");
$node->poll_query_until('shop', "SELECT cardinality(pg_blocking_pids($pid)) > 0")
  or die 'receive_callback did not wait for the row lock';
is( $node->safe_psql('shop',
		"SELECT count(*) FROM pg_locks WHERE pid = $pid AND mode = 'RowExclusiveLock'"
		  . " AND relation = 'payments.callbacks'::regclass"),
	'1', 'a callback waiting for its row has written its event, uncommitted');

my $log_offset = -s $node->logfile;
kill 'KILL', $pid or die "could not kill backend $pid";
# The psql whose query was in flight has exited with its connection.
eval { $_->quit } for ($open, $holder, $blocked);
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$node->poll_query_until('shop', 'SELECT 1', '1')
  or die 'server did not come back after the crash';
ok($node->log_contains(qr/terminated by signal 9/, $log_offset),
	'the backend was really killed and the server restarted');

is( $node->safe_psql('shop',
		q{SELECT count(*) FROM payments.callbacks WHERE event_id IN ('evt_o2', 'evt_o3')}),
	'0', 'after the crash, neither event is recorded');
is( $node->safe_psql('shop',
		q{SELECT string_agg(ref || ':' || status, ',' ORDER BY ref) FROM shop.orders WHERE ref IN ('o2', 'o3')}),
	'o2:awaiting_payment,o3:awaiting_payment', 'and neither order moved');
is(paid_moves('o2') + paid_moves('o3'), 0, 'nor is any move in the state history');

# The provider delivers again, twice.
for my $ref ('o2', 'o3')
{
	is( app(receive_sql("evt_$ref", $ref)) . ' ' . app(receive_sql("evt_$ref", $ref)),
		'applied duplicate', "redelivered after the restart, $ref\'s event is applied once, then a duplicate");
	is( $node->safe_psql('shop',
			"SELECT s.status || ' ' || c.outcome || ' ' || c.deliveries FROM shop.orders s, payments.callbacks c"
			  . " WHERE s.ref = '$ref' AND c.event_id = 'evt_$ref'"),
		'paid applied 2', "$ref is paid, its event recorded once with two deliveries");
	is(paid_moves($ref), '1', "one move of $ref in the state history");
}

# --- kill -9 of the worker in the middle of a chase ---

# A test-only trigger holds the worker inside the chase's transaction while
# it queues the second of two overdue expectations' queries: the first is
# queued and recorded, uncommitted, when the worker dies.  The flag is a
# committed row, so the worker that comes back goes through.
$node->safe_psql('shop', q{
CREATE TABLE pause_chase_on ();
INSERT INTO pause_chase_on DEFAULT VALUES;
CREATE FUNCTION pause_chase() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.handler::regprocedure = 'shop.ask_provider(jsonb)'::regprocedure
       AND EXISTS (SELECT FROM public.pause_chase_on)
       AND EXISTS (SELECT FROM payments.compensations c
                    WHERE c.handler = NEW.handler AND c.status = 'pending') THEN
        PERFORM pg_sleep(600);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER pause_chase BEFORE INSERT ON payments.compensations
    FOR EACH ROW EXECUTE FUNCTION pause_chase();
});
# In one transaction: the same deadline, so one chase finds both overdue.
app(q{
BEGIN;
SELECT payments.expect_callback('psp', 'o4', '100 milliseconds', 'shop.ask_provider(jsonb)');
SELECT payments.expect_callback('psp', 'o5', '100 milliseconds', 'shop.ask_provider(jsonb)');
COMMIT;
});
$node->poll_query_until('shop',
	"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'payments worker'"
	  . " AND datname = 'shop' AND wait_event = 'PgSleep'", '1')
  or die 'the worker did not stop in the middle of its chase';
is( $node->safe_psql('shop',
		q{SELECT string_agg(payment_ref || ':' || status, ',' ORDER BY payment_ref)
		    FROM payments.callback_expectations WHERE payment_ref IN ('o4', 'o5')}),
	'o4:waiting,o5:waiting', 'mid-chase, nothing of it is committed');

$node->safe_psql('shop', 'DELETE FROM pause_chase_on');
$pid = worker_pid($node, 'shop');
$log_offset = -s $node->logfile;
kill 'KILL', $pid or die "could not kill worker $pid";
$node->wait_for_log(qr/all server processes terminated; reinitializing/, $log_offset);
$node->poll_query_until('shop',
	q{SELECT count(*) FROM payments.callback_expectations
	   WHERE payment_ref IN ('o4', 'o5') AND status = 'querying'}, '2')
  or die 'the expectations were not chased after the crash: '
  . $node->safe_psql('shop', q{SELECT * FROM payments.callback_expectations});
isnt(worker_pid($node, 'shop'), $pid, 'the worker was killed and started again');

# Let the new worker finish a few more rounds: none may queue another item.
my $since = $node->safe_psql('shop', 'SELECT clock_timestamp()');
for (1 .. 3)
{
	$node->poll_query_until('shop',
		"SELECT last_run > '$since' FROM payments.worker_status()")
	  or die 'the worker did not finish a round';
	$since = $node->safe_psql('shop', 'SELECT clock_timestamp()');
}
is( $node->safe_psql('shop',
		q{SELECT string_agg(e.payment_ref || ':' ||
		        (SELECT count(*) FROM payments.compensations c
		          WHERE c.handler::regprocedure = 'shop.ask_provider(jsonb)'::regprocedure
		            AND c.payload->>'expectation_id' = e.id::text) || ':' ||
		        (SELECT count(*) FROM payments.compensations c WHERE c.id = e.compensation_id),
		        ',' ORDER BY e.payment_ref)
		    FROM payments.expected_callbacks e WHERE e.payment_ref IN ('o4', 'o5')}),
	'o4:1:1,o5:1:1', 'after the kill -9 and the restart, each overdue expectation has exactly one query item, the one it records');

$node->stop;
done_testing();
