--
-- Fault drills: arming, disarming and the view; each action at a point
-- whose effect can be seen in one session (error, delay, duplicate), with
-- the tables left as they were by a failed step; bad input; who may arm.
-- test/regress.conf turns payments.fault_injection on; a server with it
-- off refuses to arm (test/t/801_fault_drills.pl, which also drills the
-- crash and wait actions).
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
SELECT payments.fault_disarm();

-- Every point, none armed
SELECT point, action, times_left, hits >= 0 AS counted FROM payments.fault_points ORDER BY point;
SELECT count(*) = count(DISTINCT step) AS one_step_each FROM payments.fault_points;

-- error: the step fails with PM701 as often as armed, and its write is
-- gone with it; then the point disarms itself
SELECT hits AS hits_before FROM payments.fault_points WHERE point = 'tcc_fence_write' \gset
SELECT payments.fault_arm('tcc_fence_write', 'error', times => 2);
SELECT point, action, times_left, probability, delay, pid FROM payments.fault_points
 WHERE action IS NOT NULL;
\set VERBOSITY sqlstate
SELECT payments.tcc_try('g-1', 'stock');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.tcc_cancel('g-1', 'stock');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT count(*) AS fence_rows FROM payments.tcc_fence;
SELECT payments.tcc_try('g-1', 'stock');
SELECT action, times_left, hits - :hits_before AS fired FROM payments.fault_points
 WHERE point = 'tcc_fence_write';

-- the message a caller sees
SELECT payments.fault_arm('tcc_fence_write', 'error');
SELECT payments.tcc_confirm('g-1', 'stock');
SELECT state FROM payments.tcc_fence WHERE gid = 'g-1';

-- reserve: the stock taken before the failure comes back with the rollback
SELECT payments.stock_set('mug', 10);
SELECT payments.fault_arm('reserve_after_take', 'error');
SELECT payments.reserve('order-1', 'mug', 3);
SELECT sku, on_hand, held, available FROM payments.stock_levels;
SELECT count(*) AS holds FROM payments.reservations;

-- only in the process armed for: another pid passes untouched
SELECT payments.fault_arm('reserve_after_take', 'error', pid => 1);
SELECT payments.reserve('order-1', 'mug', 3) > 0 AS reserved;
SELECT sku, on_hand, held, available FROM payments.stock_levels;
SELECT payments.fault_disarm('reserve_after_take');
SELECT payments.fault_disarm('reserve_after_take');

-- delay: the step goes on after the pause
SELECT payments.fault_arm('idempotency_begin', 'delay', delay => '10 milliseconds');
SELECT outcome FROM payments.idempotency_begin('shop', 'k-1', '{"amount": 5}');
SELECT action FROM payments.fault_points WHERE point = 'idempotency_begin';

-- duplicate: the worker's step runs a handler that succeeded twice (a
-- handler must take a second run), and counts one attempt
CREATE TABLE handler_runs (n serial, payload jsonb);
CREATE FUNCTION log_run(p jsonb) RETURNS void LANGUAGE sql
    AS 'INSERT INTO public.handler_runs (payload) VALUES (p)';
SELECT payments.enqueue_compensation('log_run(jsonb)', '{"refund": 1}') AS item \gset
SELECT payments.fault_arm('worker_after_handler', 'duplicate');
SELECT payments.run_compensations();
SELECT count(*) AS runs FROM handler_runs;
SELECT status, attempts FROM payments.compensations WHERE id = :item;

-- error after the claim: the batch rolls back and the item is due again
SELECT payments.enqueue_compensation('log_run(jsonb)', '{"refund": 2}') AS item2 \gset
SELECT payments.fault_arm('worker_after_claim', 'error');
SELECT payments.run_compensations();
SELECT status, attempts FROM payments.compensations WHERE id = :item2;
SELECT payments.run_compensations();
SELECT status, attempts FROM payments.compensations WHERE id = :item2;

-- duplicate: a callback delivered again between its record and its route
-- is told it is a duplicate: the event is recorded once, delivered twice
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a-secret-of-the-psp') > 0 AS key_added;
SELECT payments.fault_arm('callback_after_dedupe', 'duplicate');
SELECT payments.receive_callback('psp', 'evt-1', 'A-1', 'payment.authorized', '{}');
SELECT event_id, outcome, deliveries FROM payments.callbacks;

-- disarm all: how many were armed
SELECT payments.fault_arm('saga_chain_step', 'error', times => 5);
SELECT payments.fault_arm('reconcile_mid_run', 'delay', delay => '1 second', probability => 0.5);
SELECT payments.fault_arm('saga_chain_step', 'error', times => 3);
SELECT point, action, times_left, probability, delay FROM payments.fault_points
 WHERE action IS NOT NULL ORDER BY point;
SELECT payments.fault_disarm();
SELECT count(*) AS armed FROM payments.fault_points WHERE action IS NOT NULL;

-- Bad input: clear errors, nothing armed
\set VERBOSITY sqlstate
SELECT payments.fault_arm('no_such_point', 'error');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'explode');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm(NULL, 'error');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', times => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', times => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', times => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', probability => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', probability => 1.5);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', probability => -0.1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', probability => 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', delay => '1 second');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'delay');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'delay', delay => '-1 second');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'delay', delay => '2 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'error', pid => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm('tcc_fence_write', 'duplicate');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_arm(repeat('x', 100000), 'error');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_disarm('no_such_point');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT count(*) AS armed FROM payments.fault_points WHERE action IS NOT NULL;
SELECT payments.fault_arm('tcc_fence_write', 'duplicate');

-- Only a superuser arms or disarms, even with EXECUTE granted; an
-- operator reads the view
CREATE ROLE regress_fault_app LOGIN;
CREATE ROLE regress_fault_operator LOGIN;
GRANT payments_app TO regress_fault_app;
GRANT payments_operator TO regress_fault_operator;
SET ROLE regress_fault_app;
\set VERBOSITY sqlstate
SELECT payments.fault_arm('tcc_fence_write', 'error');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.fault_points;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT EXECUTE ON FUNCTION payments.fault_arm(text, text, integer, float8, interval, integer),
    payments.fault_disarm(text) TO regress_fault_app;
SET ROLE regress_fault_app;
SELECT payments.fault_arm('tcc_fence_write', 'error');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fault_disarm();
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.fault_arm('tcc_fence_write', 'error');
RESET ROLE;
SET ROLE regress_fault_operator;
SELECT count(*) AS points FROM payments.fault_points;
RESET ROLE;
SELECT count(*) AS armed FROM payments.fault_points WHERE action IS NOT NULL;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP TABLE handler_runs;
DROP FUNCTION log_run(jsonb);
DROP ROLE regress_fault_app, regress_fault_operator;
