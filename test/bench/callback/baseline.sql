\set ev random(1, 9223372036854775807)
\set id random(1, 100000)
\set succeeded random(0, 1)
BEGIN;
-- A signature that does not match fails the transaction (division by zero).
SELECT 1 / (hmac(r.body, s.secret, 'sha256') = decode(substr(r.headers ->> 'X-Signature', 8), 'hex'))::int
  FROM request r, webhook_secrets s WHERE s.provider = 'bench';
\if :succeeded
INSERT INTO inbox (provider, event_id, payment_ref, event_type, payload)
SELECT 'bench', 'evt_' || :ev, :id, 'charge.succeeded', payload FROM request
    ON CONFLICT DO NOTHING;
UPDATE orders_base SET status = 'paid' WHERE id = :id AND status = 'pending';
\else
INSERT INTO inbox (provider, event_id, payment_ref, event_type, payload)
SELECT 'bench', 'evt_' || :ev, :id, 'charge.pending', payload FROM request
    ON CONFLICT DO NOTHING;
UPDATE orders_base SET status = 'pending' WHERE id = :id AND status = 'paid';
\endif
END;
