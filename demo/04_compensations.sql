-- Demo step 4: compensations.
\set QUIET on
\pset footer off
\echo
\echo '== 4. Compensations: an undo that must happen does happen, exactly once =='
\echo
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS payments;
RESET client_min_messages;

-- The application's side: refunds it has issued, and a gateway that is down
-- for the first call (counted in a sequence, which a failed attempt's
-- rollback does not undo).
CREATE TABLE demo_refunds (order_ref text, amount bigint, refunded_at timestamptz DEFAULT now());
CREATE SEQUENCE demo_gateway_calls;
CREATE FUNCTION demo_refund(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF nextval('public.demo_gateway_calls') = 1 THEN
        RAISE EXCEPTION 'gateway unavailable' USING ERRCODE = '08006';
    END IF;
    INSERT INTO public.demo_refunds (order_ref, amount) VALUES (p->>'order', (p->>'amount')::bigint);
END
$$;
-- Wait (at most 30 s) until the worker has finished with a compensation.
CREATE FUNCTION demo_wait(item bigint) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..300 LOOP
        IF (SELECT finished_at IS NOT NULL FROM payments.compensations WHERE id = item) THEN
            EXIT;
        END IF;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RETURN (SELECT status FROM payments.compensations WHERE id = item);
END
$$;

\echo 'Order A-2001 was paid (4990 EUR captured), then shipping failed. The app cancels the order'
\echo 'and, in the same transaction, queues the refund: if the transaction commits, the refund'
\echo 'will happen; if it rolls back, it was never queued.'
BEGIN;
-- UPDATE orders SET status = 'cancelled' WHERE order_ref = 'A-2001';
SELECT payments.enqueue_compensation('demo_refund(jsonb)', '{"order": "A-2001", "amount": 4990}',
                                     dedup_key => 'A-2001/refund') AS refund_id \gset
COMMIT;

\echo
\echo 'The background worker runs it at once. The gateway fails the first call: the attempt is'
\echo 'rolled back and recorded, and the worker retries after a backoff with jitter.'
SELECT demo_wait(:refund_id) AS status;
SELECT status, attempts, last_error FROM payments.compensations WHERE id = :refund_id;
SELECT attempt, error, sqlstate FROM payments.compensation_attempts WHERE compensation_id = :refund_id;

\echo
\echo 'A retry of the failing request queues the refund again with the same dedup key: same id, nothing added.'
SELECT payments.enqueue_compensation('demo_refund(jsonb)', '{"order": "A-2001", "amount": 4990}',
                                     dedup_key => 'A-2001/refund') = :refund_id AS same_refund;
\echo 'Refunds issued for A-2001:'
SELECT order_ref, count(*) AS refunds, sum(amount) AS total FROM demo_refunds GROUP BY order_ref;

\echo
\echo 'A refund through a provider''s HTTP API is run outside the database: register the handler,'
\echo 'and an executor claims the item for a lease, calls the provider, then completes it with'
\echo 'the claim''s token (a claim whose lease ran out can no longer complete it).'
CREATE FUNCTION demo_http_refund(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'run by the HTTP executor';
END
$$;
\o /dev/null
SELECT payments.register_external_handler('demo_http_refund(jsonb)');
SELECT payments.enqueue_compensation('demo_http_refund(jsonb)', '{"order": "A-2002", "amount": 1500}');
\o
SELECT id AS claimed_id, claim_token, payload, status, attempts
  FROM payments.claim_compensations('demo_http_refund(jsonb)', 10, '30 seconds') \gset
\echo 'claimed:' :claimed_id :payload :status 'attempt' :attempts
\o /dev/null
SELECT payments.complete_compensation(:claimed_id, :claim_token);
\o
SELECT status FROM payments.compensations WHERE id = :claimed_id;

\echo
\echo 'Rights: a handler runs as the role that queued it, never as the worker''s superuser, and'
\echo 'queueing needs EXECUTE on it. An application role cannot queue an admin-only function:'
CREATE FUNCTION demo_admin_only(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
REVOKE EXECUTE ON FUNCTION demo_admin_only(jsonb) FROM PUBLIC;
CREATE ROLE demo_app;
GRANT payments_app TO demo_app;
SET ROLE demo_app;
\set ON_ERROR_STOP off
SELECT payments.enqueue_compensation('demo_admin_only(jsonb)', '{}');
\echo 'SQLSTATE' :LAST_ERROR_SQLSTATE
\set ON_ERROR_STOP on
RESET ROLE;
DROP ROLE demo_app;

\echo
\echo 'The queue at a glance:'
SELECT handler, pending, running, succeeded, dead, cancelled FROM payments.compensation_stats ORDER BY handler;
