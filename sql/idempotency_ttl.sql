--
-- TTL and lease arithmetic.  Every function that takes a TTL or a lease
-- interval (idempotency_begin, both reserves, claim_compensations) checks
-- the time it gives, now() + ttl, not a 30-day-month approximation: months
-- and days are calendar units.  The check is shared (src/args.c), so the
-- other capabilities are tested here too.  Each refused call has its
-- SQLSTATE and changes nothing.
--
-- And a started key whose TTL is shorter than its lease is not given to
-- another caller (nor purged) while the lease lasts.
--
CREATE EXTENSION payments;
-- Days are 24 hours long in UTC; elsewhere a day across a DST change is not,
-- which would make the cases below depend on the date they run.
SET TimeZone = 'UTC';
SELECT payments.stock_set('ttl_sku', 10);
CREATE FUNCTION ttl_handler(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT payments.register_external_handler('ttl_handler(jsonb)');
SELECT payments.enqueue_compensation('ttl_handler(jsonb)', '{}') > 0 AS queued;

CREATE TEMP TABLE before AS
SELECT 'keys' AS t, to_jsonb(k) - 'updated_at' AS r FROM payments.idempotency_keys k
UNION ALL SELECT 'reservations', to_jsonb(r) FROM payments.reservations r
UNION ALL SELECT 'stock', to_jsonb(s) FROM payments.stock s
UNION ALL SELECT 'slots', to_jsonb(s) FROM payments.stock_slots s
UNION ALL SELECT 'compensations', to_jsonb(c) FROM payments.compensations c;
CREATE FUNCTION nothing_changed() RETURNS boolean LANGUAGE sql AS $$
    WITH now_rows AS (
        SELECT 'keys' AS t, to_jsonb(k) - 'updated_at' AS r FROM payments.idempotency_keys k
        UNION ALL SELECT 'reservations', to_jsonb(r) FROM payments.reservations r
        UNION ALL SELECT 'stock', to_jsonb(s) FROM payments.stock s
        UNION ALL SELECT 'slots', to_jsonb(s) FROM payments.stock_slots s
        UNION ALL SELECT 'compensations', to_jsonb(c) FROM payments.compensations c)
    SELECT NOT EXISTS (SELECT * FROM now_rows EXCEPT ALL SELECT * FROM before)
       AND NOT EXISTS (SELECT * FROM before EXCEPT ALL SELECT * FROM now_rows)
$$;

-- Calls each function with one interval and prints its SQLSTATE and
-- message, or 'accepted'; an accepted call is rolled back.  (The other
-- files show a refused call as psql prints it, then its SQLSTATE; here a
-- table of four calls for each of eighteen intervals reads better.)
CREATE FUNCTION try_ttl(ttl interval) RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    call text;
    st text;
    msg text;
BEGIN
    FOREACH call IN ARRAY ARRAY[
        'SELECT payments.idempotency_begin(''ttl'', ''k'', ''{}'', $1)',
        'SELECT payments.reserve(''o'', ''ttl_sku'', 1, $1)',
        'SELECT payments.reserve(''o'', ''[{"sku": "ttl_sku", "qty": 1}]'', $1)',
        'SELECT payments.claim_compensations(''ttl_handler(jsonb)'', 1, $1)']
    LOOP
        BEGIN
            EXECUTE call USING ttl;
            RAISE EXCEPTION USING ERRCODE = 'PMTST', MESSAGE = 'accepted';
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            RETURN NEXT split_part(call, '(', 1) || ': ' ||
                CASE WHEN st = 'PMTST' THEN msg ELSE st || ' ' || msg END;
        END;
    END LOOP;
END
$$;

-- Twelve months back is 365 or 366 days, so 364 days more is still in the
-- past, although 12 * 30 = 360 < 364.  (Before, all four were accepted.)
SELECT try_ttl('-12 months 364 days');
-- The same with time: twelve months back and 8,700 hours (362.5 days) on.
SELECT try_ttl(make_interval(months => -12, hours => 8700));
-- Twelve months and six days is at least 371 days: past every limit,
-- although 12 * 30 + 6 = 366.  (Before, the idempotency TTL was accepted.)
SELECT try_ttl('12 months 6 days');
-- A thousand years less 365,000 days is 242 days (the leap days), a TTL
-- within the idempotency limit; 1000 * 360 - 365,000 days was refused as
-- negative before.
SELECT try_ttl(make_interval(years => 1000, days => -365000));
-- Mixed signs that add up to nothing or less.
SELECT try_ttl('1 day -24 hours');
SELECT try_ttl('-1 day 86399 seconds');
SELECT try_ttl(make_interval(days => 1, secs => -86400.000001));
-- Huge fields, alone and against each other: refused, never an overflow.
SELECT try_ttl(make_interval(months => 2147483647));
SELECT try_ttl(make_interval(months => -2147483647));
SELECT try_ttl(make_interval(days => 2147483647));
SELECT try_ttl(make_interval(days => -2147483647));
SELECT try_ttl('2562047788 hours');
SELECT try_ttl('-2562047788 hours');
SELECT try_ttl('2147483647 months -2147483647 days -2562047788 hours');
SELECT try_ttl('-2147483647 months 2147483647 days 2562047788 hours');
SELECT try_ttl('-178000000 years 2147483647 days');
-- infinity is not an interval in PostgreSQL 15
SELECT try_ttl('infinity');
\echo :LAST_ERROR_SQLSTATE

SELECT nothing_changed();

-- Mixed signs that add up to a positive span are accepted, and the key or
-- hold expires at now() + ttl in calendar arithmetic: '12 months -1 day'
-- is 364 or 365 days, not 359.
SELECT clock_timestamp() AS t0 \gset
SELECT outcome FROM payments.idempotency_begin('ttl', 'mixed', '{}', '12 months -1 day');
SELECT payments.reserve('o-mixed', 'ttl_sku', 1, '1 month -1 day') > 0 AS reserved;
SELECT expires_at BETWEEN :'t0'::timestamptz + interval '12 months -1 day'
                      AND clock_timestamp() + interval '12 months -1 day' AS key_expiry_is_calendar
  FROM payments.idempotency_keys WHERE key = 'mixed';
SELECT expires_at BETWEEN :'t0'::timestamptz + interval '1 month -1 day'
                      AND clock_timestamp() + interval '1 month -1 day' AS hold_expiry_is_calendar
  FROM payments.reservations WHERE order_ref = 'o-mixed';
-- A span of one microsecond is positive.
SELECT outcome FROM payments.idempotency_begin('ttl', 'tiny', '{}', '-1 day 86400.000001 seconds');
SELECT outcome FROM payments.idempotency_begin('ttl', 'usec', '{}', '1 microsecond');

--
-- A TTL shorter than the lease.  A flow begins a key with a TTL of one
-- second and commits, to go on in a later transaction; its lease
-- (payments.idempotency_lease, 60 s) still runs when the TTL is over.  The
-- TTL's end is simulated by moving expires_at into the past.
--
SELECT outcome FROM payments.idempotency_begin('ttl', 'short', '{"order": 1}', '1 second');
UPDATE payments.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = 'short';
CREATE TEMP VIEW short_key AS
SELECT state, recovery_point, lease_expires_at > clock_timestamp() AS leased,
       encode(request_hash, 'hex') = encode(sha256('{"order": 1}'), 'hex') AS original_request
  FROM payments.idempotency_keys WHERE key = 'short';

-- Another caller with the same request is told it is in progress (before:
-- 'started', a second effect), one with another request that the key is
-- taken (before: 'started', the flow's key rewritten under it) ...
\set VERBOSITY terse
SELECT outcome FROM payments.idempotency_begin('ttl', 'short', '{"order": 1}');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT outcome FROM payments.idempotency_begin('ttl', 'short', '{"order": 2}');
\echo :LAST_ERROR_SQLSTATE
-- ... purge leaves it (before: deleted) ...
SELECT payments.purge_idempotency_keys() AS purged;
SELECT * FROM short_key;
-- ... and the flow goes on and completes.
SELECT payments.idempotency_checkpoint('ttl', 'short', 'charged');
SELECT payments.idempotency_complete('ttl', 'short', '{"paid": true}');
SELECT state, recovery_point, leased, original_request FROM short_key;

-- Once the lease has run out too, a started key past its TTL is expired:
-- the next caller starts afresh and purge deletes it.
SELECT outcome FROM payments.idempotency_begin('ttl', 'short2', '{"order": 3}', '1 second');
UPDATE payments.idempotency_keys
   SET expires_at = now() - interval '1 second', lease_expires_at = now() - interval '1 second'
 WHERE key = 'short2';
SELECT outcome FROM payments.idempotency_begin('ttl', 'short2', '{"order": 4}');
UPDATE payments.idempotency_keys
   SET expires_at = now() - interval '1 second', lease_expires_at = now() - interval '1 second'
 WHERE key = 'short2';
-- (with the completed 'short', which is past its TTL too)
SELECT payments.purge_idempotency_keys() AS purged;
SELECT count(*) AS short2_rows FROM payments.idempotency_keys WHERE key = 'short2';

DROP VIEW short_key;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP FUNCTION ttl_handler(jsonb);
