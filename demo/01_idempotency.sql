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
\o /dev/null
SELECT payments.idempotency_complete('checkout', 'k-1',
    '{"charge_id": 1, "status": "succeeded"}', 201);
\o
COMMIT;

\echo
\echo 'The network drops the answer; the client retries the same request (keys in another order).'
\echo 'The database replays the stored answer, and the app does not charge again:'
SELECT outcome, response, response_code
  FROM payments.idempotency_begin('checkout', 'k-1',
       '{"currency": "EUR", "amount": 4990, "order": "A-1001"}');

\echo
\echo 'A buggy client reuses k-1 for a different amount: refused with SQLSTATE PM001.'
\set ON_ERROR_STOP off
SELECT * FROM payments.idempotency_begin('checkout', 'k-1',
    '{"order": "A-1001", "amount": 9990, "currency": "EUR"}');
\echo 'SQLSTATE' :LAST_ERROR_SQLSTATE '(the app answers 422)'
\set ON_ERROR_STOP on

\echo
\echo 'Two retries race: while the first transaction holds key k-2, the second is told at once (PM002).'
BEGIN;
SELECT outcome FROM payments.idempotency_begin('checkout', 'k-2', '{"order": "A-1002", "amount": 1500, "currency": "EUR"}');
\! psql -X -q -d "$PGDATABASE" -c "SELECT * FROM payments.idempotency_begin('checkout', 'k-2', '{\"order\": \"A-1002\", \"amount\": 1500, \"currency\": \"EUR\"}')" 2>&1 | sed 's/^/    other session: /'
ROLLBACK;
\echo 'The first transaction rolled back, so the key is free again:'
SELECT outcome FROM payments.idempotency_begin('checkout', 'k-2', '{"order": "A-1002", "amount": 1500, "currency": "EUR"}');

\echo
\echo 'Charges recorded for order A-1001 after three requests:'
SELECT order_ref, count(*) AS charges, sum(amount) AS total FROM charges GROUP BY order_ref;
