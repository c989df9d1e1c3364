\set k random(1, 9223372036854775807)
BEGIN;
INSERT INTO baseline_keys (scope, key, request_hash, expires_at)
VALUES ('bench', 'k' || :k, sha256('{"order": "A-1001", "amount": 4990, "currency": "EUR"}'), now() + interval '1 day')
ON CONFLICT DO NOTHING;
UPDATE baseline_keys SET state = 'completed', response = '{"charge_id": 1, "status": "succeeded"}', response_code = 201
 WHERE scope = 'bench' AND key = 'k' || :k;
END;
