--
-- Idempotency keys: every outcome and the lifecycle of a key.
--
CREATE EXTENSION payments;

-- A convenience view of the keys, without the timestamps that change per run.
CREATE VIEW keys AS
SELECT scope, key, state, recovery_point, response, response_code,
       lease_expires_at IS NOT NULL AS leased, encode(request_hash, 'hex') AS fingerprint
  FROM payments.idempotency_keys ORDER BY scope, key;

-- A new key starts; nothing stored but the fingerprint.
SELECT * FROM payments.idempotency_begin('shop', 'k1', '{"amount": 4990, "order": "A-1"}');
SELECT scope, key, state, recovery_point, response, leased FROM keys;

-- The fingerprint is the SHA-256 of the canonical jsonb text.
SELECT fingerprint = encode(sha256(convert_to('{"order": "A-1", "amount": 4990}', 'UTF8')), 'hex')
       AS fingerprint_is_sha256_of_canonical_form
  FROM keys WHERE key = 'k1';

SELECT payments.idempotency_complete('shop', 'k1', '{"charge": 7}', 201);
SELECT scope, key, state, response, response_code, leased FROM keys;

-- The same request, keys reordered and spaced differently: replayed.
SELECT * FROM payments.idempotency_begin('shop', 'k1', '{ "order" : "A-1",   "amount":4990 }');

-- The same key with a different request: PM001, whatever the key's state.
SELECT * FROM payments.idempotency_begin('shop', 'k1', '{"amount": 9990, "order": "A-1"}');
\echo :LAST_ERROR_SQLSTATE

-- Keys are per scope: the same key in another scope is a new key.
SELECT outcome FROM payments.idempotency_begin('refunds', 'k1', '{"amount": 1}');
SELECT payments.idempotency_complete('refunds', 'k1', '{"ok": true}');
SELECT scope, key, state, response_code FROM keys WHERE key = 'k1';

--
-- Single-transaction use is exactly-once: an aborted transaction takes its
-- key with it, and the retry starts afresh.
--
CREATE TABLE charges (order_ref text PRIMARY KEY, amount bigint);
BEGIN;
SELECT outcome FROM payments.idempotency_begin('shop', 'k2', '{"order": "A-2"}');
INSERT INTO charges VALUES ('A-2', 100);
ROLLBACK;
SELECT count(*) AS k2_rows FROM keys WHERE key = 'k2';
SELECT count(*) AS charges FROM charges;

BEGIN;
SELECT outcome FROM payments.idempotency_begin('shop', 'k2', '{"order": "A-2"}');
INSERT INTO charges VALUES ('A-2', 100);
SELECT payments.idempotency_complete('shop', 'k2', '{"charged": 100}');
COMMIT;
SELECT outcome, response, response_code FROM payments.idempotency_begin('shop', 'k2', '{"order": "A-2"}');
SELECT * FROM charges;

-- An error after begin aborts the key too.
BEGIN;
SELECT outcome FROM payments.idempotency_begin('shop', 'k2b', '{"order": "A-2b"}');
SELECT 1 / 0;
ROLLBACK;
SELECT count(*) AS k2b_rows FROM keys WHERE key = 'k2b';

--
-- Multi-transaction flows: checkpoints and leases.
--
SELECT outcome FROM payments.idempotency_begin('shop', 'k3', '{"order": "A-3"}');
SELECT payments.idempotency_checkpoint('shop', 'k3', 'gateway_charged');
SELECT key, state, recovery_point, leased FROM keys WHERE key = 'k3';

-- While the lease runs, another caller is told the request is in progress.
-- (terse: the detail names the lease's expiry time)
\set VERBOSITY terse
SELECT * FROM payments.idempotency_begin('shop', 'k3', '{"order": "A-3"}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
-- ... and a different request is still a reuse.
SELECT * FROM payments.idempotency_begin('shop', 'k3', '{"order": "A-4"}');
\echo :LAST_ERROR_SQLSTATE

-- The flow stops; its lease runs out.  The next caller resumes it.
UPDATE payments.idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'k3';
SELECT * FROM payments.idempotency_begin('shop', 'k3', '{"order": "A-3"}');
-- The resuming caller now holds a fresh lease: a third caller is refused.
SELECT lease_expires_at > clock_timestamp() AS lease_renewed FROM payments.idempotency_keys WHERE key = 'k3';
\set VERBOSITY terse
SELECT * FROM payments.idempotency_begin('shop', 'k3', '{"order": "A-3"}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.idempotency_checkpoint('shop', 'k3', 'order_marked_paid');
SELECT payments.idempotency_complete('shop', 'k3', '{"paid": true}');
SELECT * FROM payments.idempotency_begin('shop', 'k3', '{"order": "A-3"}');

-- A flow that began and committed without any checkpoint recovers from the start.
SELECT outcome FROM payments.idempotency_begin('shop', 'k3b', '{"order": "A-3b"}');
UPDATE payments.idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'k3b';
SELECT * FROM payments.idempotency_begin('shop', 'k3b', '{"order": "A-3b"}');

-- The lease length is payments.idempotency_lease.
SET payments.idempotency_lease = '10min';
SELECT payments.idempotency_checkpoint('shop', 'k3b', 'step2');
SELECT lease_expires_at BETWEEN clock_timestamp() + interval '9 min' AND clock_timestamp() + interval '10 min'
       AS lease_is_ten_minutes
  FROM payments.idempotency_keys WHERE key = 'k3b';
RESET payments.idempotency_lease;
SHOW payments.idempotency_lease;

--
-- Abandon: the key is forgotten and the request may be retried.
--
SELECT outcome FROM payments.idempotency_begin('shop', 'k4', '{"order": "A-5"}');
SELECT payments.idempotency_abandon('shop', 'k4');
SELECT count(*) AS k4_rows FROM keys WHERE key = 'k4';
SELECT outcome FROM payments.idempotency_begin('shop', 'k4', '{"order": "A-5"}');

-- A completed key is final: it cannot be abandoned, completed or
-- checkpointed again (PM004).
SELECT payments.idempotency_abandon('shop', 'k1');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'k1', '{"charge": 8}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_checkpoint('shop', 'k1', 'again');
\echo :LAST_ERROR_SQLSTATE
SELECT key, state, response FROM keys WHERE scope = 'shop' AND key = 'k1';

-- A key never begun: PM003.
SELECT payments.idempotency_complete('shop', 'nope', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_checkpoint('shop', 'nope', 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_abandon('shop', 'nope');
\echo :LAST_ERROR_SQLSTATE

--
-- Expiry: a key past its TTL counts as new, even for a different request,
-- and purge deletes expired keys.
--
SELECT outcome FROM payments.idempotency_begin('shop', 'k5', '{"order": "A-6"}', '1 hour');
SELECT expires_at BETWEEN now() + interval '59 min' AND clock_timestamp() + interval '1 hour'
       AS ttl_is_one_hour
  FROM payments.idempotency_keys WHERE key = 'k5';
SELECT payments.idempotency_complete('shop', 'k5', '{"v": 1}');
UPDATE payments.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'k5';
SELECT * FROM payments.idempotency_begin('shop', 'k5', '{"order": "A-7"}');
SELECT key, state, response, response_code FROM keys WHERE key = 'k5';

-- The default TTL is 24 hours.
SELECT expires_at BETWEEN now() + interval '23 hours 59 min' AND clock_timestamp() + interval '24 hours'
       AS default_ttl_is_24_hours
  FROM payments.idempotency_keys WHERE key = 'k4';

UPDATE payments.idempotency_keys SET expires_at = now() - interval '1 second'
 WHERE key IN ('k1', 'k2', 'k3');
SELECT payments.purge_idempotency_keys(2);
SELECT payments.purge_idempotency_keys();
SELECT payments.purge_idempotency_keys();
SELECT scope, key, state FROM keys;

-- Purged keys begin afresh.
SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{"anything": "new"}');

DROP VIEW keys;
DROP TABLE charges;
DROP EXTENSION payments;

-- A backend that has used the functions keeps working after the extension
-- is dropped and created again (cached table OIDs are invalidated).
CREATE EXTENSION payments;
SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{"again": true}');
SELECT payments.idempotency_complete('shop', 'k1', '{"ok": 1}');
SELECT outcome, response FROM payments.idempotency_begin('shop', 'k1', '{"again": true}');
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
