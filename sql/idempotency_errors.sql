--
-- Idempotency keys: bad input gets a clear error with a standard SQLSTATE
-- and changes nothing.
--
CREATE EXTENSION payments;

SELECT payments.idempotency_begin('shop', 'existing', '{"order": 1}');
SELECT payments.idempotency_complete('shop', 'existing', '{"ok": true}');
SELECT payments.idempotency_begin('shop', 'open', '{"order": 2}');
CREATE TEMP TABLE before AS SELECT * FROM payments.idempotency_keys;
CREATE FUNCTION keys_unchanged() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT * FROM payments.idempotency_keys EXCEPT SELECT * FROM before)
       AND NOT EXISTS (SELECT * FROM before EXCEPT SELECT * FROM payments.idempotency_keys)
$$;

-- NULLs: 22004
SELECT payments.idempotency_begin(NULL, 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', '{}', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_checkpoint('shop', 'open', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'open', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'open', '{}', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_abandon(NULL, 'open');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.purge_idempotency_keys(NULL);
\echo :LAST_ERROR_SQLSTATE

-- Empty and oversized scope, key and recovery point: 22023
SELECT payments.idempotency_begin('', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', '', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin(repeat('s', 65), 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', repeat('k', 256), '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', repeat('k', 1000000), '{}');
\echo :LAST_ERROR_SQLSTATE
-- limits are in bytes: 128 two-byte characters are 256 bytes
SELECT payments.idempotency_begin('shop', repeat('é', 128), '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_checkpoint('shop', 'open', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_checkpoint('shop', 'open', repeat('p', 256));
\echo :LAST_ERROR_SQLSTATE

-- TTL: positive and at most 366 days (22023); wrong type (22007)
SELECT payments.idempotency_begin('shop', 'k', '{}', '0 seconds');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', '{}', '-1 hour');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', '{}', '1 day -25 hours');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', '{}', '367 days');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', '{}', '178000000 years');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', '{}', 'soon');
\echo :LAST_ERROR_SQLSTATE

-- Response code: 100 to 599 (22003); request not JSON (22P02)
SELECT payments.idempotency_complete('shop', 'open', '{}', 99);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'open', '{}', 600);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'open', '{}', -2147483648);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_begin('shop', 'k', 'not json');
\echo :LAST_ERROR_SQLSTATE

-- max_rows must be positive (22003)
SELECT payments.purge_idempotency_keys(0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.purge_idempotency_keys(-5);
\echo :LAST_ERROR_SQLSTATE

-- None of the refused calls changed anything.
SELECT keys_unchanged();

-- The largest accepted values work, and hostile strings are plain data.
SELECT outcome FROM payments.idempotency_begin(repeat('s', 64), repeat('é', 127) || 'k', '{}', '366 days');
SELECT outcome FROM payments.idempotency_begin('shop', $$'; DROP TABLE payments.idempotency_keys; --$$, '"x"');
SELECT outcome FROM payments.idempotency_begin('shop', E'tab\there "quoted" \\ back', '{"x": "\u00e9\ud83d\ude00"}');
SELECT outcome FROM payments.idempotency_begin('shop', 'big', jsonb_build_object('blob', repeat('x', 10000000)));
SELECT payments.idempotency_complete('shop', 'big', jsonb_build_object('blob', repeat('y', 10000000)));
SELECT outcome, length(response->>'blob') FROM payments.idempotency_begin('shop', 'big', jsonb_build_object('blob', repeat('x', 10000000)));
SELECT octet_length(key), octet_length(scope) FROM payments.idempotency_keys WHERE scope <> 'shop';
SELECT count(*) FROM payments.idempotency_keys;

-- A pinned search_path: objects that shadow built-ins in the caller's
-- search_path are never used by the extension's functions.
CREATE SCHEMA evil;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT 'infinity'::timestamptz $$;
SET search_path = evil, pg_catalog, public;
SELECT outcome FROM payments.idempotency_begin('shop', 'shadowed', '{}');
SELECT isfinite(expires_at) AND isfinite(lease_expires_at) AS timestamps_are_real
  FROM payments.idempotency_keys WHERE key = 'shadowed';
RESET search_path;
DROP SCHEMA evil CASCADE;

-- Writing functions refuse to run during recovery is tested by the TAP
-- standby test; here, the GUCs refuse nonsense.
SET payments.idempotency_lease = 0;
SET payments.idempotency_lease = '30d';
SET payments.idempotency_wait = 'maybe';
SET payments.no_such_setting = 1;

DROP FUNCTION keys_unchanged();
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
