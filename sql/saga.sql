--
-- Sagas: steps recorded in their own transactions, an abort that queues
-- their compensations as a chain run in reverse order, each only after the
-- later one succeeded; a dead link halts the chain and a retry resumes it;
-- the errors, and nothing changed by them; one role's sagas are not
-- another's; the worker's abort of a saga past its timeout.  The worker
-- is off: this file runs the queue with payments.run_compensations.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE ROLE regress_saga_alice LOGIN;
CREATE ROLE regress_saga_bob LOGIN;
GRANT payments_app TO regress_saga_alice, regress_saga_bob;

-- What the compensations did, in order; a step fails while its name is in
-- saga_fail.
CREATE TABLE public.saga_undo_log (n serial, step text);
CREATE TABLE public.saga_fail (step text);
GRANT ALL ON public.saga_undo_log, public.saga_undo_log_n_seq, public.saga_fail
    TO regress_saga_alice, regress_saga_bob;
CREATE FUNCTION public.saga_undo(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM public.saga_fail f WHERE f.step = p->>'step') THEN
        RAISE EXCEPTION 'cannot undo %', p->>'step';
    END IF;
    INSERT INTO public.saga_undo_log (step) VALUES (p->>'step');
END $$;
CREATE FUNCTION public.saga_not_a_handler(p jsonb) RETURNS integer LANGUAGE sql AS 'SELECT 1';
-- Run the queue until no item is pending (a failed one is due again after
-- its backoff, which this file sets to a millisecond).
CREATE FUNCTION public.saga_drain() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    LOOP
        IF payments.run_compensations(100) = 0 THEN
            EXIT WHEN NOT EXISTS (SELECT FROM payments.compensations WHERE status = 'pending');
            PERFORM pg_sleep(0.002);
        END IF;
    END LOOP;
END $$;

SET ROLE regress_saga_alice;

-- Begin, begin again (a retry), five steps, a step recorded twice
SELECT payments.saga_begin('order-1', '1 hour');
SELECT payments.saga_begin('order-1');
SELECT payments.saga_step('order-1', 'step-' || i, 'public.saga_undo(jsonb)',
                          jsonb_build_object('step', 'step-' || i))
  FROM generate_series(1, 3) i;
-- a step whose transaction rolls back is never compensated
BEGIN;
SELECT payments.saga_step('order-1', 'step-lost', 'public.saga_undo(jsonb)', '{"step": "step-lost"}');
ROLLBACK;
SELECT payments.saga_step('order-1', 'step-4', 'public.saga_undo(jsonb)', '{"step": "step-4"}');
SELECT payments.saga_step('order-1', 'step-5', 'public.saga_undo(jsonb)', '{"step": "step-5"}');
SELECT payments.saga_step('order-1', 'step-2', 'public.saga_undo(jsonb)', '{"step": "step-2"}');
SELECT payments.saga_step('order-1', 'step-2', 'public.saga_undo(jsonb)', '{"step": "other"}');
SELECT saga_id, status, steps, steps_undone, timeout_at > now() AS has_timeout
  FROM payments.sagas;

-- The abort queues five compensations as one chain, the last step's first;
-- aborting again is a no-op
INSERT INTO public.saga_fail VALUES ('step-3');
SELECT payments.saga_abort('order-1', 'payment declined');
SELECT payments.saga_abort('order-1', 'again');
SELECT saga_id, status, steps, steps_undone, abort_reason FROM payments.sagas;
RESET ROLE;
SELECT count(*) FILTER (WHERE status = 'pending') AS pending,
       count(*) FILTER (WHERE status = 'waiting') AS waiting,
       count(*) FILTER (WHERE status = 'waiting' AND next_attempt_at = 'infinity') AS never_due
  FROM payments.compensations;
-- each link comes after the compensation of the step that followed its own
SELECT s.step, p.step AS after_step
  FROM payments.saga_steps s
  JOIN payments.compensations c ON c.id = s.compensation_id
  LEFT JOIN payments.saga_steps p ON p.compensation_id = c.after
 ORDER BY s.step_no;

-- Running the queue undoes step 5 and step 4, then step 3 fails until it
-- is dead, and the chain halts there: steps 2 and 1 wait
SET payments.backoff_base = 1;
SET payments.backoff_max = 1;
UPDATE payments.compensations SET max_attempts = 2;
SELECT public.saga_drain();
SELECT step FROM public.saga_undo_log ORDER BY n;
SELECT s.step, c.status FROM payments.saga_steps s
  JOIN payments.compensations c ON c.id = s.compensation_id ORDER BY s.step_no DESC;
SET ROLE regress_saga_alice;
SELECT saga_id, status, steps, steps_undone FROM payments.sagas;

-- A retry of the dead link resumes the chain, which finishes in order
DELETE FROM public.saga_fail;
RESET ROLE;
SELECT s.compensation_id AS dead_id FROM payments.saga_steps s WHERE s.step = 'step-3' \gset
SET ROLE regress_saga_alice;
SELECT payments.retry_compensation(:dead_id);
RESET ROLE;
SELECT public.saga_drain();
SELECT step FROM public.saga_undo_log ORDER BY n;
SET ROLE regress_saga_alice;
SELECT saga_id, status, steps, steps_undone FROM payments.sagas;

-- Complete after abort, step after abort
\set VERBOSITY sqlstate
SELECT payments.saga_complete('order-1');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.saga_step('order-1', 'step-6', 'public.saga_undo(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- Complete, complete again; abort after complete, step after complete
SELECT payments.saga_begin('order-2');
SELECT payments.saga_step('order-2', 'charge', 'public.saga_undo(jsonb)', '{"step": "refund"}');
SELECT payments.saga_complete('order-2');
SELECT payments.saga_complete('order-2');
SELECT payments.saga_abort('order-2', 'too late');
SELECT payments.saga_step('order-2', 'ship', 'public.saga_undo(jsonb)', '{}');
-- A saga without steps aborts at once
SELECT payments.saga_begin('order-3');
SELECT payments.saga_abort('order-3', NULL);
SELECT saga_id, status, steps, steps_undone FROM payments.sagas ORDER BY saga_id;

-- Bad input: a clear error, and nothing changed
CREATE TEMP TABLE before AS
    SELECT (SELECT count(*) FROM payments.sagas) AS sagas,
           (SELECT sum(steps) FROM payments.sagas) AS steps;
SELECT payments.saga_begin(NULL);
SELECT payments.saga_begin('');
SELECT payments.saga_begin(repeat('x', 256));
SELECT payments.saga_begin(repeat('x', 255)) AS longest_id_fits;
SELECT payments.saga_begin('t1', '0 seconds');
SELECT payments.saga_begin('t1', '-1 day');
SELECT payments.saga_begin('t1', '1 month -31 days');
SELECT payments.saga_begin('t1', '2 years');
SELECT payments.saga_begin('t1', '10000 years');
SELECT payments.saga_begin('t1', NULL::interval) AS null_timeout_means_none;
SELECT payments.saga_step('nope', 'a', 'public.saga_undo(jsonb)', '{}');
SELECT payments.saga_step('t1', NULL, 'public.saga_undo(jsonb)', '{}');
SELECT payments.saga_step('t1', '', 'public.saga_undo(jsonb)', '{}');
SELECT payments.saga_step('t1', repeat('s', 256), 'public.saga_undo(jsonb)', '{}');
SELECT payments.saga_step('t1', 'a', NULL, '{}');
SELECT payments.saga_step('t1', 'a', 'public.saga_undo(jsonb)', NULL);
SELECT payments.saga_step('t1', 'a', 'public.saga_not_a_handler(jsonb)', '{}');
SELECT payments.saga_step('t1', 'a', 'now()', '{}');
SELECT payments.saga_step('t1', 'a', 'public.no_such_function(jsonb)', '{}');
SELECT payments.saga_complete(NULL);
SELECT payments.saga_complete('nope');
SELECT payments.saga_abort('nope', 'x');
SELECT payments.saga_abort('t1', repeat('r', 1025));
-- only the two sagas begun above are new
SELECT (SELECT count(*) FROM payments.sagas) - sagas AS new_sagas,
       (SELECT sum(steps) FROM payments.sagas) - steps AS new_steps FROM before;
DROP TABLE before;
RESET ROLE;
SET payments.max_payload_size = 64;
SET ROLE regress_saga_alice;
SELECT payments.saga_step('t1', 'big', 'public.saga_undo(jsonb)',
                          jsonb_build_object('pad', repeat('p', 100)));
RESET ROLE;
RESET payments.max_payload_size;

-- A compensation the role may not execute is refused when the step is
-- recorded
CREATE FUNCTION public.saga_admin_only(p jsonb) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION public.saga_admin_only(jsonb) FROM PUBLIC;
SET ROLE regress_saga_alice;
SELECT payments.saga_step('t1', 'a', 'public.saga_admin_only(jsonb)', '{}');

-- Another role sees none of alice's sagas and cannot steer them: the same
-- id is another saga
SET ROLE regress_saga_bob;
SELECT count(*) FROM payments.sagas;
SELECT payments.saga_abort('order-2', 'hostile');
SELECT payments.saga_step('t1', 'a', 'public.saga_undo(jsonb)', '{}');
SELECT payments.saga_begin('t1');
SELECT payments.saga_abort('t1', 'bob''s own');
SET ROLE regress_saga_alice;
SELECT saga_id, status FROM payments.sagas WHERE saga_id = 't1';
-- and no role can read the tables behind the view
SELECT count(*) FROM payments.saga_state;
SELECT count(*) FROM payments.saga_steps;
SELECT payments.abort_timed_out_sagas();
RESET ROLE;

-- The worker's task: a saga past its timeout is aborted and its chain
-- queued; one whose compensation was dropped is aborted too, its chain
-- halted at that link, queued dead with the reason; sagas without a
-- timeout or not yet due are left
SET ROLE regress_saga_alice;
SELECT payments.saga_begin('late', '1 minute');
SELECT payments.saga_step('late', 'a', 'public.saga_undo(jsonb)', '{"step": "late-a"}');
SELECT payments.saga_step('late', 'b', 'public.saga_undo(jsonb)', '{"step": "late-b"}');
SELECT payments.saga_begin('broken', '1 minute');
RESET ROLE;
CREATE FUNCTION public.saga_gone(p jsonb) RETURNS void LANGUAGE sql AS '';
SET ROLE regress_saga_alice;
SELECT payments.saga_step('broken', 'a', 'public.saga_gone(jsonb)', '{}');
SELECT payments.saga_begin('not-due', '1 hour');
RESET ROLE;
DROP FUNCTION public.saga_gone(jsonb);
UPDATE payments.saga_state SET timeout_at = now() - interval '1 second'
 WHERE saga_id IN ('late', 'broken');
SET client_min_messages = error;
SELECT payments.abort_timed_out_sagas();
RESET client_min_messages;
SELECT payments.abort_timed_out_sagas() AS retried_within_a_minute;
SELECT saga_id, status, abort_reason, abort_error IS NOT NULL AS has_error
  FROM payments.sagas WHERE saga_id IN ('late', 'broken', 'not-due', 't1') ORDER BY 1, owner;
SELECT c.status, c.attempts, c.last_error FROM payments.saga_steps s
  JOIN payments.compensations c ON c.id = s.compensation_id WHERE s.saga_id = 'broken';
DELETE FROM public.saga_undo_log;
SELECT public.saga_drain();
SELECT step FROM public.saga_undo_log ORDER BY n;

-- A dead link queued before its turn came (its compensation was dropped)
-- and cancelled at once passes its place: the step before it waits for the
-- step after it, and the chain still runs in reverse order
CREATE FUNCTION public.saga_gone(p jsonb) RETURNS void LANGUAGE sql AS '';
SET ROLE regress_saga_alice;
SELECT payments.saga_begin('gap');
SELECT payments.saga_step('gap', 'a', 'public.saga_undo(jsonb)', '{"step": "gap-a"}');
SELECT payments.saga_step('gap', 'b', 'public.saga_gone(jsonb)', '{}');
SELECT payments.saga_step('gap', 'c', 'public.saga_undo(jsonb)', '{"step": "gap-c"}');
RESET ROLE;
DROP FUNCTION public.saga_gone(jsonb);
SET ROLE regress_saga_alice;
SELECT payments.saga_abort('gap', 'declined');
RESET ROLE;
SELECT compensation_id AS gap_a FROM payments.saga_steps WHERE saga_id = 'gap' AND step = 'a' \gset
SELECT compensation_id AS gap_b FROM payments.saga_steps WHERE saga_id = 'gap' AND step = 'b' \gset
SELECT compensation_id AS gap_c FROM payments.saga_steps WHERE saga_id = 'gap' AND step = 'c' \gset
SET ROLE regress_saga_alice;
SELECT payments.cancel_compensation(:gap_b);
RESET ROLE;
SELECT status, after = :gap_c AS after_c FROM payments.compensations WHERE id = :gap_a;
DELETE FROM public.saga_undo_log;
SELECT public.saga_drain();
SELECT step FROM public.saga_undo_log ORDER BY n;
SELECT s.step, c.status FROM payments.saga_steps s
  JOIN payments.compensations c ON c.id = s.compensation_id
 WHERE s.saga_id = 'gap' ORDER BY s.step_no;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP TABLE public.saga_undo_log, public.saga_fail;
DROP FUNCTION public.saga_undo(jsonb), public.saga_not_a_handler(jsonb),
    public.saga_drain(), public.saga_admin_only(jsonb);
DROP ROLE regress_saga_alice, regress_saga_bob;
