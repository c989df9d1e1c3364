--
-- Compensations: enqueue, dedup, running by the worker's step, retries,
-- retry/cancel, and the claim/complete/fail protocol of external executors.
--
-- The worker of this database runs whatever is committed and due, so the
-- items here are either due later, of an external handler (which the worker
-- never runs), or run by payments.run_compensations inside a transaction
-- that the worker cannot see.
--
CREATE EXTENSION payments;

CREATE TABLE comp_log (item text, who regrole);
CREATE FUNCTION comp_ok(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.comp_log VALUES (p->>'item', current_user::regrole);
END
$$;
-- Does its work, then fails: the work must not stay.
CREATE FUNCTION comp_fail(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.comp_log VALUES (p->>'item', current_user::regrole);
    RAISE EXCEPTION 'refund of % declined', p->>'item' USING ERRCODE = '22012';
END
$$;
CREATE FUNCTION comp_loop(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        PERFORM pg_sleep(0.01);
    END LOOP;
END
$$;
CREATE FUNCTION comp_gateway(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run by the gateway executor, never here';
END
$$;

CREATE VIEW items AS
    SELECT id, regexp_replace(handler, '^public\.|\(.*', '', 'g') AS handler, payload,
           dedup_key, status, attempts, max_attempts, last_error,
           enqueued_by = current_user::regrole AS by_me, finished_at IS NOT NULL AS finished
      FROM payments.compensations ORDER BY id;

-- Enqueue: the handler's signature is stored, the item is pending, due at
-- run_at, with payments.max_attempts attempts.
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "a"}',
                                     run_at => now() + interval '1 day');
SELECT handler, payload, status, attempts, max_attempts,
       next_attempt_at BETWEEN now() + interval '23 hours' AND now() + interval '1 day' AS due_at_run_at,
       enqueued_by = current_user::regrole AS enqueued_by_me, handler_owner = current_user::regrole AS owner_recorded,
       lease_expires_at, claim_token, last_error, finished_at
  FROM payments.compensations;
SET payments.max_attempts = 4;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "b"}', run_at => now() + interval '1 day');
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "c"}', max_attempts => 7,
                                     run_at => now() + interval '1 day');
RESET payments.max_attempts;
SELECT * FROM items;

-- Dedup: the same key returns the first id and adds nothing, whatever the
-- handler and payload of the second call.
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "d"}', 'order-42/refund',
                                     run_at => now() + interval '1 day') AS first;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "d"}', 'order-42/refund',
                                     run_at => now() + interval '1 day') AS again;
SELECT payments.enqueue_compensation('comp_fail(jsonb)', '{"item": "other"}', 'order-42/refund') AS other_request;
SELECT count(*) FILTER (WHERE dedup_key = 'order-42/refund') AS with_key, count(*) AS total
  FROM payments.compensations;
-- A 255-byte key is accepted.
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', repeat('k', 255),
                                     run_at => now() + interval '1 day') > 0 AS accepted;

-- Cancel: a pending item is cancelled; cancelling again is a no-op; a
-- cancelled item cannot be retried.
SELECT payments.cancel_compensation(2);
SELECT payments.cancel_compensation(2);
SELECT payments.retry_compensation(2);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.retry_compensation(1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.cancel_compensation(999);
\echo :LAST_ERROR_SQLSTATE
SELECT id, status, finished FROM items WHERE id IN (1, 2);

-- The worker's step, in one transaction: the first call claims the due
-- items (each attempt counted before it runs), the second runs them.
BEGIN;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "e"}') AS e,
       payments.enqueue_compensation('comp_fail(jsonb)', '{"item": "f"}', max_attempts => 2) AS f,
       payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "g"}', run_at => now() + interval '1 hour') AS g
\gset
SELECT payments.run_compensations(10) AS finished;
SELECT i.id - :e AS item, i.handler, i.status, i.attempts, c.lease_expires_at > now() AS leased,
       c.claim_token IS NOT NULL AS has_token
  FROM items i JOIN payments.compensations c USING (id) WHERE id >= :e ORDER BY id;
SELECT payments.run_compensations(10) AS finished;
-- e succeeded and its effect is there; f's effect was rolled back with its
-- failed attempt, which is recorded, and f is due again within backoff_base
-- (1 s, full jitter); g is not due yet.
SELECT item, who = current_user::regrole AS run_as_me FROM comp_log;
SELECT id - :e AS item, handler, status, attempts, last_error, finished FROM items WHERE id >= :e;
SELECT next_attempt_at BETWEEN updated_at - interval '1 ms' AND updated_at + interval '1 s' AS backoff_within_base,
       lease_expires_at, claim_token
  FROM payments.compensations WHERE id = :f;
SELECT compensation_id - :e AS item, attempt, error, sqlstate, failed_at IS NOT NULL AS has_time
  FROM payments.compensation_attempts ORDER BY id;
-- Its second failure is its last: dead.
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :f;
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT handler, status, attempts, last_error, finished FROM items WHERE id = :f;
SELECT compensation_id - :e AS item, attempt, error, sqlstate FROM payments.compensation_attempts ORDER BY id;
-- Nothing runs twice: e is not claimed again.
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT count(*) AS e_runs FROM comp_log WHERE item = 'e';
-- A dead item goes back to pending, due now, with a fresh budget; its
-- history stays.
SELECT payments.retry_compensation(:f);
SELECT c.status, c.attempts, c.finished_at, c.next_attempt_at <= clock_timestamp() AS due
  FROM payments.compensations c WHERE id = :f;
SELECT count(*) AS attempt_rows FROM payments.compensation_attempts WHERE compensation_id = :f;
-- A succeeded item can be neither cancelled nor retried.
SELECT payments.cancel_compensation(:e);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "h"}') AS h \gset
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT payments.retry_compensation(:h);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- payments.handler_timeout stops a handler that never returns: a failure
-- with SQLSTATE 57014.
BEGIN;
SET LOCAL payments.handler_timeout = '100ms';
SELECT payments.enqueue_compensation('comp_loop(jsonb)', '{}', max_attempts => 1) AS loop_id \gset
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT status, attempts, last_error FROM payments.compensations WHERE id = :loop_id;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :loop_id;
ROLLBACK;
SHOW payments.handler_timeout;

-- External executors: a registered handler's items are never run by the
-- worker; executors claim them, then complete or fail them.
SELECT payments.register_external_handler('comp_gateway(jsonb)');
SELECT payments.register_external_handler('comp_gateway(jsonb)');
SELECT handler, registered_by = current_user::regrole AS by_me FROM payments.external_handlers;
SELECT payments.enqueue_compensation('comp_gateway(jsonb)', jsonb_build_object('refund', i))
  FROM generate_series(1, 4) i;
SELECT pg_sleep(0.3);
SELECT id, status, attempts FROM payments.compensations WHERE handler LIKE '%comp_gateway%' ORDER BY id;
SELECT id, payload, status, attempts, lease_expires_at > now() + interval '59 minutes' AS leased
  FROM payments.claim_compensations('comp_gateway(jsonb)', 2, '1 hour');
SELECT id, payload, status, attempts FROM payments.claim_compensations('comp_gateway(jsonb)', 10, '1 hour');
SELECT count(*) AS nothing_left FROM payments.claim_compensations('comp_gateway(jsonb)', 10, '1 hour');
SELECT payments.complete_compensation(13);
SELECT payments.fail_compensation(14, 'gateway answered 502');
SELECT id, status, attempts, last_error, finished FROM items WHERE id IN (13, 14);
SELECT compensation_id, attempt, error, sqlstate FROM payments.compensation_attempts;
-- A claim can be completed or failed once; worker items not at all.
SELECT payments.complete_compensation(13);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fail_compensation(14, 'again');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.complete_compensation(1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fail_compensation(1, 'no');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.complete_compensation(999);
\echo :LAST_ERROR_SQLSTATE
-- Only registered handlers can be claimed.
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
-- A claimed item can be cancelled; its executor's completion is then refused.
SELECT payments.cancel_compensation(15);
SELECT payments.complete_compensation(15);
\echo :LAST_ERROR_SQLSTATE

-- A claim whose lease runs out goes back to pending as a failed attempt
-- (PM304), given back by the worker or by the next claim or run.
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = 14;
SELECT id, attempts FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '10 ms');
SELECT pg_sleep(0.1);
SELECT payments.run_compensations(10) >= 0 AS ran;
SELECT id, status, attempts, last_error, lease_expires_at, claim_token FROM payments.compensations WHERE id = 14;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = 14 ORDER BY id;
-- Its executor's late completion is refused.
SELECT payments.complete_compensation(14);
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = 14;
SELECT id, attempts FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour');
SELECT payments.complete_compensation(14);
-- The next claim of the handler also gives expired claims back first (in a
-- transaction, so that the worker cannot do it instead).
BEGIN;
SELECT payments.enqueue_compensation('comp_gateway(jsonb)', '{"refund": 5}') AS r5 \gset
SELECT count(*) AS claimed FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '10 ms');
SELECT pg_sleep(0.05);
SET LOCAL payments.backoff_base = '1h';
SELECT count(*) AS claimed_again FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour');
SELECT status, attempts FROM payments.compensations WHERE id = :r5;
SELECT attempt, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :r5;
ROLLBACK;

-- Statistics per handler.
SELECT regexp_replace(handler, '\(.*', '') AS handler, pending, running, succeeded, dead, cancelled,
       oldest_pending_age > interval '0' AS has_pending_age
  FROM payments.compensation_stats ORDER BY 1;

DROP VIEW items;
DROP TABLE comp_log;
DROP FUNCTION comp_ok(jsonb), comp_fail(jsonb), comp_loop(jsonb), comp_gateway(jsonb);
DROP EXTENSION payments CASCADE;
