-- Demo step 1: idempotency keys.
\set QUIET on
\pset footer off
\echo
\echo '== 1. Idempotency keys: one request, one charge, one answer =='
\echo
CREATE EXTENSION IF NOT EXISTS payments;

-- The application's own table: what a charge looks like.
CREATE TABLE charges (id bigserial PRIMARY KEY, order_ref text, amount bigint, currency char(3));

\echo 'A client sends "charge order A-1001, 4990 EUR" with Idempotency-Key k-1.'
\echo 'The app opens a transaction, begins the key, does the work, stores the answer:'
BEGIN;
SELECT outcome FROM payments.idempotency_begin('checkout', 'k-1',
    '{"order": "A-1001", "amount": 4990, "currency": "EUR"}');
INSERT INTO charges (order_ref, amount, currency) VALUES ('A-1001', 4990, 'EUR');
SELECT payments.idempotency_complete('checkout', 'k-1',
    '{"charge_id": 1, "status": "succeeded"}', 201);
COMMIT;

\echo
\echo 'The network drops the answer; the client retries the same request (keys in another order).'
\echo 'The database replays the stored answer, and the app does not charge again:'
SELECT outcome, response, response_code
  FROM payments.idempotency_begin('checkout', 'k-1',
       '{"currency": "EUR", "amount": 4990, "order": "A-1001"}');

\echo
\echo 'A buggy client reuses k-1 for a different amount: refused with SQLSTATE PM001.'
\set VERBOSITY verbose
\set ON_ERROR_STOP off
SELECT * FROM payments.idempotency_begin('checkout', 'k-1',
    '{"order": "A-1001", "amount": 9990, "currency": "EUR"}');
\set ON_ERROR_STOP on
\set VERBOSITY default

\echo
\echo 'Charges recorded for order A-1001 after three requests:'
SELECT order_ref, count(*) AS charges, sum(amount) AS total FROM charges GROUP BY order_ref;
