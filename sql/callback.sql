--
-- Callbacks: receive_callback records each provider event once and routes
-- it to a guarded status column.  The outcomes (applied, duplicate, stale,
-- conflict, new) and the refusals that record nothing (PM406, PM407,
-- PM408); a rollback takes an event back; expectations are met, chased by
-- a query, met by the query's result or lost; old events are purged.
--
-- No signature is checked here (headers and body are NULL: the caller
-- verified the callback itself); the schemes have tests of their own.  The
-- regress configuration turns the worker off, so chase_callbacks and
-- purge_callbacks are called by hand, as a superuser, after a deadline or
-- an event's age was moved into the past with an UPDATE.  Ids are captured
-- with \gset, never written down.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never

SELECT payments.define_state_machine('payment', '{
    "created": ["authorized", "cancelled"],
    "authorized": ["captured", "cancelled"],
    "captured": ["refunded"]}');
CREATE TABLE orders (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('orders', 'status', 'payment');

CREATE TABLE refunds (payload jsonb);
CREATE FUNCTION refund(p jsonb) RETURNS void LANGUAGE sql AS 'INSERT INTO refunds VALUES (p)';
CREATE FUNCTION ask_psp(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run by the query executor, never here';
END
$$;
SELECT payments.register_external_handler('ask_psp(jsonb)');

-- Every row of the tables a callback may write, and the guarded table.
CREATE FUNCTION cb_state() RETURNS text LANGUAGE sql AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(c::text, ',' ORDER BY c.provider, c.event_id) FROM payments.callbacks c),
        (SELECT string_agg(p::text, ',' ORDER BY p.provider) FROM payments.callback_providers p),
        (SELECT string_agg(r::text, ',' ORDER BY r.provider, r.event_type) FROM payments.callback_routes r),
        (SELECT string_agg(e::text, ',' ORDER BY e.id) FROM payments.expected_callbacks e),
        (SELECT string_agg(q::text, ',' ORDER BY q.id) FROM payments.compensations q),
        (SELECT string_agg(h::text, ',' ORDER BY h.id) FROM payments.state_history h),
        (SELECT string_agg(o::text, ',' ORDER BY o.ref) FROM public.orders o)))
$$;
CREATE VIEW events AS
    SELECT provider, event_id, payment_ref, event_type, payload, outcome, key_id, deliveries,
           compensation_id IS NOT NULL AS compensated, received_by = current_user::regrole AS by_me,
           last_delivered_at >= first_delivered_at AS times_ordered
      FROM payments.callbacks;
CREATE VIEW moves AS
    SELECT row_key, from_state, to_state, changed_by = current_user AS by_me
      FROM payments.state_history WHERE tbl = 'orders'::regclass;

--
-- Routes: one per provider and event type.  The first route names the
-- provider, which becomes the caller's.
--
SELECT payments.callback_route('psp', 'payment.authorized', 'orders', 'ref', 'status', 'authorized');
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'captured',
                               on_conflict => 'refund(jsonb)');
SELECT payments.callback_route('psp', 'payment.cancelled', 'orders', 'ref', 'status', 'cancelled');
SELECT payments.callback_route('psp', 'payment.refunded', 'orders', 'ref', 'status', 'refunded');
SELECT provider, owner = current_user::regrole AS mine FROM payments.callback_providers;
SELECT event_type, tbl, key_col, state_col, to_state, on_conflict,
       on_conflict_owner = current_user::regrole AS handler_mine, routed_by = current_user::regrole AS by_me
  FROM payments.callback_routes ORDER BY event_type;
-- Routing an event type again replaces its route.
SELECT payments.callback_route('psp', 'payment.cancelled', 'orders', 'ref', 'status', 'created');
SELECT to_state FROM payments.callback_routes WHERE event_type = 'payment.cancelled';
SELECT payments.callback_route('psp', 'payment.cancelled', 'orders', 'ref', 'status', 'cancelled');
SELECT to_state FROM payments.callback_routes WHERE event_type = 'payment.cancelled';

INSERT INTO orders VALUES ('A-1', 'created'), ('A-2', 'created'), ('A-3', 'created'), ('A-4', 'created');

--
-- applied: the row moves along an edge, as the caller, through the state
-- guard, which records the move.
--
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', 'payment.authorized', '{"amount": 1000}');
SELECT status FROM orders WHERE ref = 'A-1';
SELECT * FROM moves WHERE row_key = 'A-1';
SELECT * FROM events;

--
-- duplicate: the provider's retries are counted and answered 'duplicate';
-- nothing moves again and the first payload stays.
--
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', 'payment.authorized', '{"amount": 1000}');
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', 'payment.authorized', '{"amount": 1000, "retry": 2}');
SELECT * FROM events;
SELECT count(*) AS moves_of_a1 FROM moves WHERE row_key = 'A-1';

--
-- stale: the row is there already, or past it.
--
SELECT payments.receive_callback('psp', 'evt_2', 'A-1', 'payment.captured', '{"amount": 1000}');
-- a late authorization, after the capture
SELECT payments.receive_callback('psp', 'evt_0', 'A-1', 'payment.authorized', '{"amount": 1000}');
-- a second capture event of the same payment: the same state
SELECT payments.receive_callback('psp', 'evt_2b', 'A-1', 'payment.captured', NULL);
SELECT status FROM orders WHERE ref = 'A-1';
SELECT * FROM moves WHERE row_key = 'A-1';
SELECT event_id, outcome, payload, deliveries, compensated FROM events
 WHERE payment_ref = 'A-1' ORDER BY event_id;

--
-- conflict: money captured for a cancelled order.  The route's on_conflict
-- handler is queued once for the event, as the caller, with the event in
-- its payload; a retry of the event queues nothing more.
--
UPDATE orders SET status = 'cancelled' WHERE ref = 'A-2';
SELECT count(*) AS queued_before FROM payments.compensations \gset
SELECT payments.receive_callback('psp', 'evt_3', 'A-2', 'payment.captured', '{"amount": 500}');
SELECT status FROM orders WHERE ref = 'A-2';
SELECT count(*) - :queued_before AS queued FROM payments.compensations;
SELECT c.handler, c.payload, c.status, c.enqueued_by = current_user::regrole AS by_me
  FROM payments.compensations c JOIN payments.callbacks e ON e.compensation_id = c.id
 WHERE e.event_id = 'evt_3';
SELECT payments.receive_callback('psp', 'evt_3', 'A-2', 'payment.captured', '{"amount": 500}');
SELECT count(*) - :queued_before AS queued FROM payments.compensations;
SELECT event_id, outcome, deliveries, compensated FROM events WHERE event_id = 'evt_3';
-- A conflict of a route without on_conflict queues nothing.
SELECT payments.receive_callback('psp', 'evt_4', 'A-2', 'payment.refunded', NULL);
SELECT count(*) - :queued_before AS queued FROM payments.compensations;
SELECT event_id, outcome, compensated FROM events WHERE event_id = 'evt_4';
SELECT count(*) AS moves_of_a2 FROM moves WHERE row_key = 'A-2';
-- Each conflicting event queues its own item, whatever the providers' and
-- events' names.
SELECT payments.callback_route('a b', 'payment.captured', 'orders', 'ref', 'status', 'captured', 'refund(jsonb)');
SELECT payments.callback_route('a', 'payment.captured', 'orders', 'ref', 'status', 'captured', 'refund(jsonb)');
SELECT payments.receive_callback('a b', 'c', 'A-2', 'payment.captured', NULL);
SELECT payments.receive_callback('a', 'b c', 'A-2', 'payment.captured', NULL);
SELECT count(DISTINCT compensation_id) AS items FROM payments.callbacks WHERE provider IN ('a', 'a b');

--
-- new: an event type no route covers is recorded and left to the
-- application; nothing moves.  Its retry is a duplicate.
--
SELECT payments.receive_callback('psp', 'evt_5', 'A-3', 'charge.dispute.created', '{"reason": "fraud"}');
SELECT payments.receive_callback('psp', 'evt_5', 'A-3', 'charge.dispute.created', '{"reason": "fraud"}');
SELECT status FROM orders WHERE ref = 'A-3';
SELECT count(*) AS moves_of_a3 FROM moves WHERE row_key = 'A-3' AND from_state IS NOT NULL;
SELECT event_id, outcome, deliveries FROM events WHERE event_id = 'evt_5';
-- The payment_ref of an unrouted event names no row of any table.
SELECT payments.receive_callback('psp', 'evt_6', 'no such order', 'charge.dispute.created', NULL);

--
-- Refusals that record nothing.
--
SELECT cb_state() AS before \gset
-- PM406: an event id received before, for another payment or of another
-- type, is no retry.
SELECT payments.receive_callback('psp', 'evt_1', 'A-2', 'payment.authorized', '{"amount": 1000}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', 'payment.captured', '{"amount": 1000}');
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;
-- A query result is an event whose id names its type and payment; a
-- provider's event cannot take such an id.
SELECT payments.record_query_result('psp', 'A-1', 'charge.dispute.created', NULL);
SELECT cb_state() AS before \gset
SELECT payments.receive_callback('psp', 'query:22:charge.dispute.created:A-1', 'A-2', 'charge.dispute.created', NULL);
\echo :LAST_ERROR_SQLSTATE
-- PM407: no row has the payment_ref.
SELECT payments.receive_callback('psp', 'evt_7', 'A-404', 'payment.authorized', NULL);
\echo :LAST_ERROR_SQLSTATE
-- PM408: the row reaches the route's state only through others (a capture
-- before the authorization); the provider sends it again later.
SELECT payments.receive_callback('psp', 'evt_9', 'A-3', 'payment.captured', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;
SELECT count(*) AS recorded FROM events WHERE event_id IN ('evt_7', 'evt_9');
-- After the authorization, the capture's next delivery applies.
SELECT payments.receive_callback('psp', 'evt_8', 'A-3', 'payment.authorized', NULL);
SELECT payments.receive_callback('psp', 'evt_9', 'A-3', 'payment.captured', NULL);
SELECT * FROM moves WHERE row_key = 'A-3';
SELECT event_id, outcome, deliveries FROM events WHERE event_id IN ('evt_8', 'evt_9') ORDER BY event_id;

--
-- A rollback of the caller's transaction takes the event back with the
-- move: the provider's next delivery is a first one.
--
BEGIN;
SELECT payments.receive_callback('psp', 'evt_10', 'A-4', 'payment.authorized', NULL);
SELECT status FROM orders WHERE ref = 'A-4';
ROLLBACK;
SELECT status FROM orders WHERE ref = 'A-4';
SELECT count(*) AS recorded FROM events WHERE event_id = 'evt_10';
SELECT payments.receive_callback('psp', 'evt_10', 'A-4', 'payment.authorized', NULL);
SELECT event_id, outcome, deliveries FROM events WHERE event_id = 'evt_10';
SELECT * FROM moves WHERE row_key = 'A-4';
-- A savepoint rolled back takes it back too.
BEGIN;
SAVEPOINT s;
SELECT payments.receive_callback('psp', 'evt_11', 'A-4', 'payment.captured', NULL);
ROLLBACK TO SAVEPOINT s;
SELECT payments.receive_callback('psp', 'evt_11', 'A-4', 'payment.captured', NULL);
COMMIT;
SELECT status FROM orders WHERE ref = 'A-4';
SELECT event_id, outcome, deliveries FROM events WHERE event_id = 'evt_11';

--
-- A bigint key column and an enum state column: the payment_ref is cast
-- to the key's type, the state to the enum.
--
CREATE TYPE pay_state AS ENUM ('created', 'authorized', 'captured', 'cancelled', 'refunded');
CREATE TABLE pays (id bigint PRIMARY KEY, st pay_state NOT NULL);
SELECT payments.guard_state('pays', 'st', 'payment');
INSERT INTO pays VALUES (42, 'created'), (43, 'created');
SELECT payments.callback_route('psp', 'pay.authorized', 'pays', 'id', 'st', 'authorized');
SELECT payments.receive_callback('psp', 'evt_20', '42', 'pay.authorized', NULL);
-- the same number spelled otherwise is the same row
SELECT payments.receive_callback('psp', 'evt_21', '0042', 'pay.authorized', NULL);
SELECT payments.receive_callback('psp', 'evt_22', '44', 'pay.authorized', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT id, st, pg_typeof(st) FROM pays ORDER BY id;
SELECT row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = 'pays'::regclass AND from_state IS NOT NULL;

--
-- callback_unroute: the event type is new from then on.
--
SELECT payments.callback_unroute('psp', 'payment.refunded');
SELECT payments.callback_unroute('psp', 'payment.refunded');
SELECT payments.receive_callback('psp', 'evt_12', 'A-1', 'payment.refunded', NULL);
SELECT status FROM orders WHERE ref = 'A-1';
SELECT event_type FROM payments.callback_routes WHERE tbl = 'orders'::regclass ORDER BY 1;

--
-- Expectations.
--
INSERT INTO orders VALUES ('B-1', 'created'), ('B-2', 'created'), ('B-3', 'created'),
                          ('B-4', 'created'), ('B-5', 'created');
-- Expected before its event: waiting, then met by the routed event.
SELECT payments.expect_callback('psp', 'B-1', '1 hour', 'ask_psp(jsonb)') AS e1 \gset
SELECT payment_ref, status, deadline > now() + interval '59 minutes' AS deadline_in_an_hour,
       query_handler, expected_by = current_user::regrole AS by_me, met_by
  FROM payments.callback_expectations WHERE id = :e1;
SELECT payments.receive_callback('psp', 'evt_30', 'B-1', 'payment.authorized', NULL);
SELECT status, met_by, met_at IS NOT NULL AS met_at_set FROM payments.callback_expectations WHERE id = :e1;
-- Expected after its event: met at once, by the first routed event (here,
-- of A-1: evt_1; the unrouted evt_12 came later, and unrouted events
-- never meet an expectation).
SELECT payments.expect_callback('psp', 'A-1', '1 hour', 'ask_psp(jsonb)') AS e0 \gset
SELECT status, met_by FROM payments.callback_expectations WHERE id = :e0;
-- An unrouted event does not meet one.
SELECT payments.expect_callback('psp', 'B-2', '1 hour', 'ask_psp(jsonb)') AS e2 \gset
SELECT payments.receive_callback('psp', 'evt_31', 'B-2', 'charge.dispute.created', NULL);
SELECT status, met_by FROM payments.callback_expectations WHERE id = :e2;

-- Past the deadline: B-2, B-3 and B-4 are overdue (their deadlines moved
-- into the past by hand); B-5's handler is dropped before the chase.
CREATE FUNCTION ask_gone(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.expect_callback('psp', 'B-3', '1 hour', 'ask_psp(jsonb)') AS e3 \gset
SELECT payments.expect_callback('psp', 'B-4', '1 hour', 'ask_psp(jsonb)') AS e4 \gset
SELECT payments.expect_callback('psp', 'B-5', '1 hour', 'ask_gone(jsonb)') AS e5 \gset
DROP FUNCTION ask_gone(jsonb);
SELECT payments.chase_callbacks();
UPDATE payments.expected_callbacks SET deadline = now() - interval '1 second'
 WHERE id IN (:e2, :e3, :e4, :e5);
SELECT overdue_expectations FROM payments.callback_stats WHERE provider = 'psp';
SELECT count(*) AS queued_before FROM payments.compensations \gset
SELECT payments.chase_callbacks();
SELECT payments.chase_callbacks();
SELECT count(*) - :queued_before AS queued FROM payments.compensations;
SELECT payment_ref, status, met_by, compensation_id IS NOT NULL AS has_query, queried_at IS NOT NULL AS queried,
       query_error IS NOT NULL AS has_error
  FROM payments.callback_expectations WHERE id IN (:e1, :e0, :e2, :e3, :e4, :e5) ORDER BY payment_ref;
-- A dropped query handler: the expectation is lost, and says why.
SELECT query_error FROM payments.callback_expectations WHERE id = :e5;
-- The query item: the expectation's handler, as the role that expected it.
SELECT c.handler, c.status, c.enqueued_by = current_user::regrole AS by_me,
       c.payload = jsonb_build_object('provider', 'psp', 'payment_ref', 'B-2', 'expectation_id', :e2) AS payload_names_it
  FROM payments.compensations c JOIN payments.expected_callbacks e ON e.compensation_id = c.id
 WHERE e.id = :e2;
-- The executor records what the provider's query API said: it routes like
-- a callback and meets the expectation; the same result again is a
-- duplicate.
SELECT payments.record_query_result('psp', 'B-2', 'payment.authorized', '{"status": "AUTHORIZED"}');
SELECT payments.record_query_result('psp', 'B-2', 'payment.authorized', '{"status": "AUTHORIZED"}');
SELECT status FROM orders WHERE ref = 'B-2';
SELECT event_id, payment_ref, event_type, payload, outcome, deliveries FROM events WHERE payment_ref = 'B-2'
 ORDER BY event_id;
SELECT status, met_by FROM payments.callback_expectations WHERE id = :e2;
-- Its query item, which no executor had claimed, is cancelled: the
-- provider need not be asked any more.
SELECT c.status FROM payments.compensations c
  JOIN payments.expected_callbacks e ON e.compensation_id = c.id WHERE e.id = :e2;
-- The query item of B-3 is cancelled: the expectation is lost.
SELECT payments.cancel_compensation(compensation_id) FROM payments.expected_callbacks WHERE id = :e3;
SELECT payment_ref, status FROM payments.callback_expectations WHERE id IN (:e2, :e3, :e4, :e5)
 ORDER BY payment_ref;

--
-- callback_stats: per provider, the events and what their first delivery
-- did, the repeated deliveries, and the expectations past their deadline
-- that no event met.
--
SELECT outcome, count(*), sum(deliveries - 1) AS repeated FROM payments.callbacks
 WHERE provider = 'psp' GROUP BY outcome ORDER BY outcome;
SELECT * FROM payments.callback_stats;

--
-- Purge: events first delivered longer ago than payments.callback_retention,
-- and expectations as old that are met or whose query is over (lost);
-- waiting and querying ones stay, however old.
--
SET payments.callback_retention = '1h';
SELECT payments.purge_callbacks();
UPDATE payments.callbacks SET first_delivered_at = first_delivered_at - interval '2 hours'
 WHERE event_id IN ('evt_1', 'evt_0', 'evt_5');
UPDATE payments.expected_callbacks SET created_at = created_at - interval '2 hours';
-- a waiting one, as old
SELECT payments.expect_callback('psp', 'B-6', '1 hour', 'ask_psp(jsonb)') AS e6 \gset
UPDATE payments.expected_callbacks SET created_at = created_at - interval '2 hours' WHERE id = :e6;
SELECT count(*) AS events_before FROM payments.callbacks \gset
SELECT payments.purge_callbacks(2) + payments.purge_callbacks() AS purged;
SELECT payments.purge_callbacks();
SELECT :events_before - count(*) AS events_purged FROM payments.callbacks;
SELECT count(*) AS purged_left FROM payments.callbacks WHERE event_id IN ('evt_1', 'evt_0', 'evt_5');
SELECT payment_ref, status FROM payments.callback_expectations ORDER BY payment_ref;
-- A purged event id delivered again is a first delivery (here stale: A-1
-- was captured since); that is why the retention outlives every
-- provider's retries.
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', 'payment.authorized', '{"amount": 1000}');
RESET payments.callback_retention;

--
-- A trigger on the routed table that receives another event of the same
-- route while the first one's UPDATE runs, after an invalidation of the
-- table (a GRANT): both apply, and the session goes on.  A trigger on a
-- routed table runs inside receive_callback, whose search_path is
-- pg_catalog, pg_temp: it sets its own.
--
CREATE TABLE chained (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('chained', 'status', 'payment');
INSERT INTO chained SELECT 'C-' || i, 'created' FROM generate_series(1, 3) AS i;
SELECT payments.callback_route('chain', 'payment.authorized', 'chained', 'ref', 'status', 'authorized');
CREATE FUNCTION chained_next() RETURNS trigger LANGUAGE plpgsql
    SET search_path = public AS $$
BEGIN
    IF NEW.ref = 'C-1' THEN
        GRANT SELECT ON chained TO PUBLIC;
        PERFORM payments.receive_callback('chain', 'evt_c2', 'C-2', 'payment.authorized', NULL);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER chained_next AFTER UPDATE ON chained FOR EACH ROW EXECUTE FUNCTION chained_next();
SELECT payments.receive_callback('chain', 'evt_c1', 'C-1', 'payment.authorized', NULL);
SELECT payments.receive_callback('chain', 'evt_c3', 'C-3', 'payment.authorized', NULL);
SELECT ref, status FROM chained ORDER BY ref;
-- A redelivery is a duplicate whatever became of its row since.
DELETE FROM chained WHERE ref = 'C-3';
SELECT payments.receive_callback('chain', 'evt_c3', 'C-3', 'payment.authorized', NULL);

--
-- In a machine with a cycle, an event whose state the row can still reach
-- is early (PM408), even if that state could also lead back to the row's:
-- recorded as stale, it would never be applied.
--
SELECT payments.define_state_machine('cycle', '{
    "new": ["pending", "cancelled"],
    "pending": ["paid", "new"],
    "paid": ["new", "shipped"]}', '{new}');
CREATE TABLE cycled (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('cycled', 'status', 'cycle');
INSERT INTO cycled VALUES ('Y-1', 'new');
SELECT payments.callback_route('cyc', 'paid', 'cycled', 'ref', 'status', 'paid');
SELECT payments.receive_callback('cyc', 'evt_y1', 'Y-1', 'paid', NULL);
\echo :LAST_ERROR_SQLSTATE
UPDATE cycled SET status = 'pending' WHERE ref = 'Y-1';
SELECT payments.receive_callback('cyc', 'evt_y1', 'Y-1', 'paid', NULL);
SELECT ref, status FROM cycled;

DROP TABLE chained, cycled;
DROP FUNCTION chained_next();

DROP VIEW events, moves;
DROP FUNCTION cb_state();
DROP TABLE orders, pays, refunds;
DROP TYPE pay_state;
DROP FUNCTION refund(jsonb), ask_psp(jsonb);
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
