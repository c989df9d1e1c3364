--
-- Retention: payments.purge() and the worker's purge_retention remove the
-- rows past their retention that nothing needs any more, and only those: a
-- held hold, an unfinished or dead compensation, a saga whose undo has not
-- finished, an open check result and (by default) state history stay.
-- The worker is off; rows are made old by moving their times back.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE ROLE regress_retention_app LOGIN;
GRANT payments_app TO regress_retention_app;

CREATE FUNCTION public.retention_ok(p jsonb) RETURNS void LANGUAGE sql AS 'SELECT';
CREATE FUNCTION public.retention_fail(p jsonb) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'refund rejected'; END $$;

-- The settings, their defaults and who may change them.
SELECT name, setting, unit, context FROM pg_settings
 WHERE name LIKE 'payments.%retention' ORDER BY name;
SET ROLE regress_retention_app;
SET payments.reservation_retention = '1s';
RESET ROLE;

-- Holds: one confirmed, one released, one expired long ago; one confirmed
-- today; one still held although it was made long ago.
SELECT payments.stock_set('R', 100);
SELECT payments.reserve('old-confirmed', 'R', 1, '1 hour') AS old_confirmed \gset
SELECT payments.reserve('old-released', 'R', 1, '1 hour') AS old_released \gset
SELECT payments.reserve('old-expired', 'R', 1, '1 hour') AS old_expired \gset
SELECT payments.reserve('new-confirmed', 'R', 1, '1 hour') AS new_confirmed \gset
SELECT payments.reserve('old-held', 'R', 1, '1 hour') AS old_held \gset
SELECT payments.confirm_reservation(:old_confirmed), payments.confirm_reservation(:new_confirmed),
       payments.release_reservation(:old_released);
UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE id = :old_expired;
SELECT payments.expire_reservations(100);
UPDATE payments.reservations
   SET created_at = now() - interval '40 days', resolved_at = now() - interval '40 days'
 WHERE id IN (:old_confirmed, :old_released, :old_expired);
UPDATE payments.reservations SET created_at = now() - interval '40 days' WHERE id = :old_held;

-- Compensations: one succeeded and one cancelled long ago (each with its
-- attempt, if it ran), one dead long ago, one pending, one succeeded today,
-- and a dedup key on the old succeeded one.
SELECT payments.enqueue_compensation('public.retention_ok(jsonb)', '{"n": 1}', 'refund-1') AS c_old_ok \gset
SELECT payments.enqueue_compensation('public.retention_ok(jsonb)', '{"n": 2}') AS c_old_cancelled \gset
SELECT payments.enqueue_compensation('public.retention_fail(jsonb)', '{"n": 3}', NULL, 1) AS c_old_dead \gset
SELECT payments.enqueue_compensation('public.retention_ok(jsonb)', '{"n": 4}') AS c_new_ok \gset
SELECT payments.cancel_compensation(:c_old_cancelled);
SELECT payments.run_compensations(100);
SELECT payments.enqueue_compensation('public.retention_ok(jsonb)', '{"n": 5}', NULL, NULL,
                                     now() + interval '1 hour') AS c_pending \gset
UPDATE payments.compensations SET finished_at = now() - interval '40 days'
 WHERE id IN (:c_old_ok, :c_old_cancelled, :c_old_dead);
SELECT id = :c_old_ok AS old_ok, id = :c_old_dead AS old_dead, status,
       (SELECT count(*) FROM payments.compensation_attempts a WHERE a.compensation_id = c.id) AS attempts
  FROM payments.compensations c ORDER BY id;

-- Sagas: one completed and one aborted whose undo finished, long ago; one
-- aborted long ago whose undo is dead; one running.
SELECT payments.saga_begin('s-done'), payments.saga_complete('s-done');
SELECT payments.saga_begin('s-undone'),
       payments.saga_step('s-undone', 'charge', 'public.retention_ok(jsonb)', '{}'),
       payments.saga_abort('s-undone', 'test');
SELECT payments.saga_begin('s-stuck'),
       payments.saga_step('s-stuck', 'charge', 'public.retention_fail(jsonb)', '{}'),
       payments.saga_abort('s-stuck', 'test');
SELECT payments.saga_begin('s-running');
UPDATE payments.compensations SET max_attempts = 1
 WHERE id = (SELECT compensation_id FROM payments.saga_steps WHERE saga_id = 's-stuck');
SELECT payments.run_compensations(100);
UPDATE payments.saga_state SET finished_at = now() - interval '40 days', created_at = now() - interval '40 days'
 WHERE saga_id <> 's-running';
SELECT s.saga_id, s.status, c.status AS undo
  FROM payments.saga_state s
  LEFT JOIN payments.saga_steps t USING (owner, saga_id)
  LEFT JOIN payments.compensations c ON c.id = t.compensation_id
 ORDER BY s.saga_id;

-- Check results: one cleared long ago, one open long ago.
INSERT INTO payments.check_results (owner, check_name, object, first_seen, last_seen, cleared_at)
VALUES (current_user::regrole, 'c', 'cleared', now() - interval '50 days', now() - interval '40 days',
        now() - interval '40 days'),
       (current_user::regrole, 'c', 'open', now() - interval '50 days', now(), NULL);

-- State history, kept by default.
CREATE TABLE public.retention_orders (id int PRIMARY KEY, status text);
SELECT payments.define_state_machine('retention_order', '{"new": ["paid"]}');
SELECT payments.guard_state('public.retention_orders', 'status', 'retention_order');
INSERT INTO public.retention_orders VALUES (1, 'new'), (2, 'new');
UPDATE public.retention_orders SET status = 'paid';
UPDATE payments.state_history SET changed_at = now() - interval '400 days' WHERE row_key = '1';

-- What the operator sees before the purge.
SELECT capability, rows, active, failed, purge_backlog FROM payments.stats
 WHERE capability IN ('reservations', 'compensations', 'sagas', 'checks', 'state_guard')
 ORDER BY capability;

-- payments_app may neither purge nor read the statistics.
SET ROLE regress_retention_app;
\set VERBOSITY sqlstate
SELECT * FROM payments.purge();
SELECT payments.purge_retention();
SELECT * FROM payments.stats;
\set VERBOSITY default
RESET ROLE;

-- Bad arguments.
\set VERBOSITY sqlstate
SELECT * FROM payments.purge(0);
SELECT * FROM payments.purge(NULL);
SELECT payments.purge_retention(-1);
SELECT payments.purge_retention(2000000);
\set VERBOSITY default

-- The worker's batch is bounded: one row per table and call.
SELECT payments.purge_retention(1);
SELECT count(*) AS reservations_left FROM payments.reservations;

-- Then everything by hand.
SELECT * FROM payments.purge(1) ORDER BY table_name;
SELECT order_ref, state FROM payments.reservations ORDER BY order_ref;
SELECT available FROM payments.stock_levels WHERE sku = 'R';
SELECT c.id = :c_old_dead AS old_dead, c.id = :c_pending AS pending, c.id = :c_new_ok AS new_ok,
       c.status,
       (SELECT count(*) FROM payments.compensation_attempts a WHERE a.compensation_id = c.id) AS attempts
  FROM payments.compensations c
 WHERE c.id IN (:c_old_ok, :c_old_cancelled, :c_old_dead, :c_new_ok, :c_pending)
 ORDER BY c.id;
SELECT count(*) AS orphan_attempts FROM payments.compensation_attempts a
 WHERE NOT EXISTS (SELECT FROM payments.compensations c WHERE c.id = a.compensation_id);
SELECT saga_id, status FROM payments.saga_state ORDER BY saga_id;
SELECT count(*) AS orphan_steps FROM payments.saga_steps t
 WHERE NOT EXISTS (SELECT FROM payments.saga_state s WHERE s.owner = t.owner AND s.saga_id = t.saga_id);
SELECT object FROM payments.check_results ORDER BY object;
SELECT row_key, to_state FROM payments.state_history ORDER BY id;

-- A dedup key whose item was purged queues a new item.
SELECT payments.enqueue_compensation('public.retention_ok(jsonb)', '{"n": 1}', 'refund-1') <> :c_old_ok
    AS new_item;

-- History goes only when a retention is set for it.
SET payments.history_retention = '365d';
SELECT * FROM payments.purge() WHERE table_name = 'state_history';
SELECT row_key, to_state FROM payments.state_history ORDER BY id;
RESET payments.history_retention;

-- 0 keeps a table's rows for ever.
SET payments.reservation_retention = 0;
UPDATE payments.reservations SET resolved_at = now() - interval '40 days' WHERE state <> 'held';
SELECT * FROM payments.purge() WHERE table_name = 'reservations';
RESET payments.reservation_retention;

-- What payments.check() finds in what this file leaves behind
DROP TABLE public.retention_orders;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP FUNCTION public.retention_ok(jsonb), public.retention_fail(jsonb);
DROP ROLE regress_retention_app;
