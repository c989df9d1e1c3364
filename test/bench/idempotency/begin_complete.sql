\set k random(1, 9223372036854775807)
BEGIN;
SELECT outcome FROM payments.idempotency_begin('bench', 'k' || :k, '{"order": "A-1001", "amount": 4990, "currency": "EUR"}');
SELECT payments.idempotency_complete('bench', 'k' || :k, '{"charge_id": 1, "status": "succeeded"}', 201);
END;
