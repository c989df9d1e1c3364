\set i random(1, 100000)
SELECT outcome, response, response_code FROM payments.idempotency_begin('replay', 'r' || :i, jsonb_build_object('order', (:i)::int, 'amount', 4990));
