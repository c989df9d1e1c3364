--
-- Compensations: enqueue, dedup, running by the worker's step, retries,
-- retry/cancel, and the claim/complete/fail protocol of external executors.
--
-- The regress configuration turns the worker off, so nothing runs unless
-- this file calls payments.run_compensations.  Items that must stay queued
-- are due tomorrow, of an external handler (never run by the worker's
-- step), or queued in a transaction that is rolled back.  Ids are captured
-- with \gset, never written down: they depend on sequence consumption.
-- So a refusal whose message names an item is printed as its SQLSTATE
-- alone (VERBOSITY sqlstate), and the message follows with that item's
-- id masked; every other refusal is printed in full, then its SQLSTATE.
--
-- run_compensations is always called twice in a row and only the sum of
-- what the calls finished is shown: that holds whether a call runs the
-- items it claims itself or those its session's previous call claimed.
--
CREATE EXTENSION payments;

CREATE TABLE comp_log (item text, who regrole);
CREATE FUNCTION comp_ok(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.comp_log VALUES (p->>'item', current_user::regrole);
END
$$;
CREATE FUNCTION comp_other(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.comp_log VALUES ('other ' || (p->>'item'), current_user::regrole);
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
    SELECT id, coalesce(payload->>'item', 'refund ' || (payload->>'refund')) AS item,
           regexp_replace(handler, '^public\.|\(.*', '', 'g') AS handler,
           dedup_key, status, attempts, max_attempts, last_error,
           enqueued_by = current_user::regrole AS by_me, finished_at IS NOT NULL AS finished
      FROM payments.compensations;

-- Enqueue: the handler's signature is stored, the item is pending, due at
-- run_at, with payments.max_attempts attempts.
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "a"}',
                                     run_at => now() + interval '1 day') AS a \gset
SELECT handler, payload, status, attempts, max_attempts,
       next_attempt_at BETWEEN now() + interval '23 hours' AND now() + interval '1 day' AS due_at_run_at,
       enqueued_by = current_user::regrole AS enqueued_by_me, handler_owner = current_user::regrole AS owner_recorded,
       lease_expires_at, claim_token, claimed_by, last_error, finished_at
  FROM payments.compensations WHERE id = :a;
SET payments.max_attempts = 4;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "b"}', run_at => now() + interval '1 day') AS b \gset
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "c"}', max_attempts => 7,
                                     run_at => now() + interval '1 day') AS c \gset
RESET payments.max_attempts;
SELECT item, handler, status, attempts, max_attempts, by_me, finished FROM items ORDER BY id;

-- Dedup keys are per handler: the same key and handler returns the first
-- id and adds nothing, whatever the payload of the second call; the same
-- key with another handler is another item.
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "d"}', 'order-42/refund',
                                     run_at => now() + interval '1 day') AS d \gset
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "d again"}', 'order-42/refund',
                                     run_at => now() + interval '1 day') = :d AS same_item;
SELECT payments.enqueue_compensation('comp_other(jsonb)', '{"item": "d"}', 'order-42/refund',
                                     run_at => now() + interval '1 day') AS d_other \gset
SELECT :d_other <> :d AS another_item;
SELECT payments.enqueue_compensation('comp_other(jsonb)', '{"item": "d again"}', 'order-42/refund',
                                     run_at => now() + interval '1 day') = :d_other AS same_other_item;
SELECT item, handler, dedup_key FROM items WHERE dedup_key = 'order-42/refund' ORDER BY id;
-- A 255-byte key is accepted.
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', repeat('k', 255),
                                     run_at => now() + interval '1 day') > 0 AS accepted;

-- Payload size: at most payments.max_payload_size bytes, counted as the
-- jsonb value takes uncompressed; a larger one is refused (54000) and
-- nothing is queued.
SHOW payments.max_payload_size;
SELECT pg_column_size(jsonb_build_object('blob', repeat('x', 200))) AS payload_size \gset
SELECT count(*) AS before_limit FROM payments.compensations \gset
SET payments.max_payload_size = :payload_size;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', jsonb_build_object('blob', repeat('x', 200)),
                                     run_at => now() + interval '1 day') > 0 AS at_the_limit;
SELECT :payload_size - 1 AS below \gset
SET payments.max_payload_size = :below;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', jsonb_build_object('blob', repeat('x', 200)),
                                     run_at => now() + interval '1 day');
\echo :LAST_ERROR_SQLSTATE
-- A payload stored compressed counts with its uncompressed size.
CREATE TABLE comp_big (p jsonb);
INSERT INTO comp_big SELECT jsonb_build_object('blob', repeat('x', 100000));
SELECT pg_column_size(p) < 10000 AS stored_compressed FROM comp_big;
SET payments.max_payload_size = '64kB';
SELECT payments.enqueue_compensation('comp_ok(jsonb)', p, run_at => now() + interval '1 day') FROM comp_big;
\echo :LAST_ERROR_SQLSTATE
RESET payments.max_payload_size;
SELECT payments.enqueue_compensation('comp_ok(jsonb)', p, run_at => now() + interval '1 day') > 0 AS under_default
  FROM comp_big;
DROP TABLE comp_big;
SELECT count(*) - :before_limit AS queued_at_limit_and_under_default FROM payments.compensations;

-- Cancel: a pending item is cancelled; cancelling again is a no-op; a
-- cancelled or pending item cannot be retried; an unknown id is PM301.
SELECT payments.cancel_compensation(:b);
SELECT payments.cancel_compensation(:b);
\set VERBOSITY sqlstate
SELECT payments.retry_compensation(:b);
SELECT replace(:'LAST_ERROR_MESSAGE', :'b', '<id>') AS error;
SELECT payments.retry_compensation(:a);
SELECT replace(:'LAST_ERROR_MESSAGE', :'a', '<id>') AS error;
\set VERBOSITY default
-- (an id the sequence handed out and nobody used)
SELECT nextval('payments.compensations_id_seq') AS missing \gset
\set VERBOSITY sqlstate
SELECT payments.cancel_compensation(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SELECT payments.retry_compensation(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
SELECT item, status, finished FROM items WHERE id IN (:a, :b) ORDER BY id;

-- The worker's step, in one transaction: each attempt is counted before it
-- runs; a success commits with the item's succeeded mark, a failure rolls
-- the handler's work back and records the attempt.  (backoff_base 1h: a
-- failed item is not due again within this test.)
BEGIN;
SET LOCAL payments.backoff_base = '1h';
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "e"}') AS e,
       payments.enqueue_compensation('comp_fail(jsonb)', '{"item": "f"}', max_attempts => 2) AS f,
       payments.enqueue_compensation('comp_ok(jsonb)', '{"item": "g"}', run_at => now() + interval '1 hour') AS g
\gset
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
-- e succeeded as me and its effect is there; f's effect was rolled back
-- with its failed attempt, which is recorded, and f is due again within
-- backoff_base; g is not due yet.
SELECT item, who = current_user::regrole AS run_as_me FROM comp_log;
SELECT item, handler, status, attempts, last_error, finished FROM items WHERE id IN (:e, :f, :g) ORDER BY id;
SELECT next_attempt_at > updated_at AND next_attempt_at <= updated_at + interval '1 hour' AS backoff_within_base,
       lease_expires_at, claim_token
  FROM payments.compensations WHERE id = :f;
SELECT attempt, error, sqlstate, failed_at IS NOT NULL AS has_time
  FROM payments.compensation_attempts WHERE compensation_id = :f ORDER BY id;
-- Its second failure is its last: dead.
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :f;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT item, status, attempts, last_error, finished FROM items WHERE id = :f;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :f ORDER BY id;
-- Nothing runs twice: e and the dead f are not run again.
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT item, count(*) AS runs FROM comp_log GROUP BY item ORDER BY item;
-- A dead item goes back to pending, due now, with a fresh budget; its
-- history stays.
SELECT payments.retry_compensation(:f);
SELECT c.status, c.attempts, c.finished_at, c.next_attempt_at <= clock_timestamp() AS due
  FROM payments.compensations c WHERE id = :f;
SELECT count(*) AS attempt_rows FROM payments.compensation_attempts WHERE compensation_id = :f;
-- A succeeded item can be neither cancelled nor retried.
\set VERBOSITY sqlstate
SAVEPOINT refused;
SELECT payments.cancel_compensation(:e);
ROLLBACK TO refused;
SELECT replace(:'LAST_ERROR_MESSAGE', :'e', '<id>') AS error;
SAVEPOINT refused;
SELECT payments.retry_compensation(:e);
ROLLBACK TO refused;
SELECT replace(:'LAST_ERROR_MESSAGE', :'e', '<id>') AS error;
\set VERBOSITY default
SELECT item, status FROM items WHERE id = :e;
ROLLBACK;

-- A handler's error text is stored clipped to 8192 bytes, at a character
-- boundary: 2730 three-byte characters.
BEGIN;
CREATE FUNCTION comp_long_error(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', repeat('€', 10000);
END
$$;
SELECT payments.enqueue_compensation('comp_long_error(jsonb)', '{}', max_attempts => 1) AS long_id \gset
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, octet_length(last_error) AS stored_bytes, last_error = repeat('€', 2730) AS clipped
  FROM payments.compensations WHERE id = :long_id;
SELECT octet_length(error) AS attempt_bytes FROM payments.compensation_attempts WHERE compensation_id = :long_id;
ROLLBACK;

-- payments.handler_timeout stops a handler that never returns: a failure
-- with SQLSTATE 57014.
BEGIN;
SET LOCAL payments.handler_timeout = '100ms';
SELECT payments.enqueue_compensation('comp_loop(jsonb)', '{}', max_attempts => 1) AS loop_id \gset
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, attempts, last_error FROM payments.compensations WHERE id = :loop_id;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :loop_id;
ROLLBACK;
SHOW payments.handler_timeout;

-- External executors: a registered handler's items are never run by the
-- worker's step; executors claim them, then complete or fail them with the
-- claim's token.  (backoff_base 1h: a failed item is not due again here.)
SET payments.backoff_base = '1h';
SELECT payments.register_external_handler('comp_gateway(jsonb)');
SELECT payments.register_external_handler('comp_gateway(jsonb)');
SELECT handler, registered_by = current_user::regrole AS by_me FROM payments.external_handlers;
SELECT count(payments.enqueue_compensation('comp_gateway(jsonb)', jsonb_build_object('refund', i))) AS queued
  FROM generate_series(1, 4) i;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT item, status, attempts FROM items WHERE handler = 'comp_gateway' ORDER BY id;
-- Claims hand out the oldest due items, each counted as an attempt, held
-- for the lease, with the claim's token and the claiming role.
CREATE TEMP TABLE claim1 AS SELECT * FROM payments.claim_compensations('comp_gateway(jsonb)', 2, '1 hour');
CREATE TEMP TABLE claim2 AS SELECT * FROM payments.claim_compensations('comp_gateway(jsonb)', 10, '1 hour');
SELECT count(*) AS nothing_left FROM payments.claim_compensations('comp_gateway(jsonb)', 10, '1 hour');
SELECT 1 AS claim, payload, status, attempts, lease_expires_at > now() + interval '59 minutes' AS leased,
       claimed_by = current_user::regrole AS claimed_by_me
  FROM claim1
UNION ALL
SELECT 2, payload, status, attempts, lease_expires_at > now() + interval '59 minutes',
       claimed_by = current_user::regrole
  FROM claim2 ORDER BY 1, 2;
SELECT (SELECT count(DISTINCT claim_token) FROM claim1) AS tokens1,
       (SELECT count(DISTINCT claim_token) FROM claim2) AS tokens2,
       (SELECT min(claim_token) FROM claim1) <> (SELECT min(claim_token) FROM claim2) AS claims_differ;
SELECT id AS g1, claim_token AS t1 FROM claim1 WHERE payload->>'refund' = '1' \gset
SELECT id AS g2 FROM claim1 WHERE payload->>'refund' = '2' \gset
SELECT id AS g3, claim_token AS t2 FROM claim2 WHERE payload->>'refund' = '3' \gset
SELECT id AS g4 FROM claim2 WHERE payload->>'refund' = '4' \gset
SELECT payments.complete_compensation(:g1, :t1);
SELECT payments.fail_compensation(:g2, :t1, 'gateway answered 502');
SELECT item, status, attempts, last_error, finished FROM items WHERE id IN (:g1, :g2) ORDER BY id;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :g2;
-- A claim can be completed or failed once; only with the token of the
-- claim that holds the item (PM302); worker items not at all (PM303).
\set VERBOSITY sqlstate
SELECT payments.complete_compensation(:g1, :t1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'g1', '<id>') AS error;
SELECT payments.fail_compensation(:g2, :t1, 'again');
SELECT replace(:'LAST_ERROR_MESSAGE', :'g2', '<id>') AS error;
SELECT payments.complete_compensation(:g3, :t1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'g3', '<id>') AS error;
SELECT payments.fail_compensation(:g3, :t1, 'wrong claim');
SELECT replace(:'LAST_ERROR_MESSAGE', :'g3', '<id>') AS error;
SELECT payments.complete_compensation(:a, :t1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'a', '<id>') AS error;
SELECT payments.fail_compensation(:a, :t1, 'no');
SELECT replace(:'LAST_ERROR_MESSAGE', :'a', '<id>') AS error;
SELECT payments.complete_compensation(:missing, :t1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
SELECT item, status, attempts FROM items WHERE id IN (:g1, :g2, :g3, :a) ORDER BY id;
-- Only registered handlers can be claimed.
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
-- A claimed item can be cancelled; its executor's completion is then refused.
SELECT payments.cancel_compensation(:g4);
\set VERBOSITY sqlstate
SELECT payments.complete_compensation(:g4, :t2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'g4', '<id>') AS error;
\set VERBOSITY default
SELECT item, status, attempts FROM items WHERE id = :g4;

-- A claim whose lease runs out goes back to pending as a failed attempt
-- (PM304), given back by the worker's step or by the next claim of the
-- handler; its executor's late completion or failure is refused (PM302),
-- also once the item is claimed again.  The lease is made to run out by
-- moving it into the past.
UPDATE payments.compensations SET lease_expires_at = now() - interval '1 second' WHERE id = :g3;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished \gset
SELECT item, status, attempts, last_error FROM items WHERE id = :g3;
SELECT lease_expires_at, claim_token FROM payments.compensations WHERE id = :g3;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :g3 ORDER BY id;
\set VERBOSITY sqlstate
SELECT payments.complete_compensation(:g3, :t2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'g3', '<id>') AS error;
SELECT payments.fail_compensation(:g3, :t2, 'late');
SELECT replace(:'LAST_ERROR_MESSAGE', :'g3', '<id>') AS error;
\set VERBOSITY default
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :g3;
SELECT id = :g3 AS same_item, attempts, claim_token AS t3 FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour') \gset
SELECT :'same_item' AS same_item, :attempts AS attempts, :t3 <> :t2 AS new_token;
\set VERBOSITY sqlstate
SELECT payments.complete_compensation(:g3, :t2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'g3', '<id>') AS error;
\set VERBOSITY default
SELECT payments.complete_compensation(:g3, :t3);
SELECT item, status, attempts FROM items WHERE id = :g3;
-- The next claim of the handler also gives expired claims back first.
BEGIN;
SELECT payments.enqueue_compensation('comp_gateway(jsonb)', '{"refund": 5}') AS r5 \gset
SELECT id = :r5 AS claimed_r5 FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour');
UPDATE payments.compensations SET lease_expires_at = now() - interval '1 second' WHERE id = :r5;
SELECT count(*) AS claimed_again FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour');
SELECT status, attempts FROM payments.compensations WHERE id = :r5;
SELECT attempt, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :r5;
ROLLBACK;

-- Unregistering gives the handler's items back to the worker; it is
-- refused (55006) while an executor holds a claim of one of them.
BEGIN;
SELECT payments.enqueue_compensation('comp_gateway(jsonb)', '{"refund": 6}') AS r6 \gset
SELECT id = :r6 AS claimed_r6, claim_token AS t6 FROM payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour') \gset
SELECT :'claimed_r6' AS claimed_r6;
SAVEPOINT s;
SELECT payments.unregister_external_handler('comp_gateway(jsonb)');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO s;
SELECT count(*) AS still_registered FROM payments.external_handlers;
SELECT payments.complete_compensation(:r6, :t6);
SELECT payments.enqueue_compensation('comp_gateway(jsonb)', '{"refund": 7}', max_attempts => 1) AS r7 \gset
SELECT payments.unregister_external_handler('comp_gateway(jsonb)');
SELECT count(*) AS registered FROM payments.external_handlers;
-- Unregistering again is a no-op; claims are refused; the worker's step
-- runs the handler's items now (comp_gateway fails when run here).
SELECT payments.unregister_external_handler('comp_gateway(jsonb)');
SAVEPOINT refused;
SELECT payments.claim_compensations('comp_gateway(jsonb)', 1, '1 hour');
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO refused;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT item, status, attempts, last_error FROM items WHERE id = :r7;
ROLLBACK;
RESET payments.backoff_base;

-- Statistics per handler.
SELECT regexp_replace(handler, '\(.*', '') AS handler, pending, running, succeeded, dead, cancelled,
       oldest_pending_age > interval '0' AS has_pending_age
  FROM payments.compensation_stats ORDER BY 1;

DROP VIEW items;
DROP TABLE comp_log;
DROP FUNCTION comp_ok(jsonb), comp_other(jsonb), comp_fail(jsonb), comp_loop(jsonb), comp_gateway(jsonb);
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
