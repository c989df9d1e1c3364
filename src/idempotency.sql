-- Idempotency keys: see src/idempotency.c for the locking and lease rules.
--
-- The table is written only by the functions below, which validate every
-- value (lengths, states, codes) before it reaches the table.  It has no
-- CHECK constraints on purpose: the executor re-reads each constraint's
-- expression tree from its text form on every INSERT and UPDATE, which cost
-- a quarter of the time of begin + complete.

CREATE TABLE payments.idempotency_keys (
    scope            text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    request_hash     bytea       NOT NULL,
    state            text        NOT NULL DEFAULT 'started',
    recovery_point   text,
    response         jsonb,
    response_code    integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    lease_expires_at timestamptz,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
) WITH (fillfactor = 80);   -- room for HOT updates of begin -> complete

COMMENT ON TABLE payments.idempotency_keys IS
    'One row per idempotency key: its request fingerprint, progress and stored response';

CREATE INDEX idempotency_keys_expires_at_idx
    ON payments.idempotency_keys (expires_at);

SELECT pg_catalog.pg_extension_config_dump('payments.idempotency_keys', '');

-- A named row type rather than OUT parameters: the executor finds a named
-- type's descriptor in the type cache, where it would rebuild an anonymous
-- record's from pg_proc on every call.
CREATE TYPE payments.idempotency_result AS (
    outcome        text,
    response       jsonb,
    response_code  integer,
    recovery_point text
);

CREATE FUNCTION payments.idempotency_begin(
        scope text, key text, request jsonb,
        ttl interval DEFAULT '24 hours')
    RETURNS payments.idempotency_result
    AS 'MODULE_PATHNAME', 'payments_idempotency_begin'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.idempotency_begin(text, text, jsonb, interval) IS
    'Start, replay or resume the request with this key: outcome is started, replayed or recovering';

CREATE FUNCTION payments.idempotency_checkpoint(
        scope text, key text, recovery_point text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_checkpoint'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.idempotency_checkpoint(text, text, text) IS
    'Record the phase a multi-transaction flow has reached and renew its lease';

CREATE FUNCTION payments.idempotency_complete(
        scope text, key text, response jsonb,
        response_code integer DEFAULT 200)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_complete'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.idempotency_complete(text, text, jsonb, integer) IS
    'Store the final response of the request with this key';

CREATE FUNCTION payments.idempotency_abandon(scope text, key text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_abandon'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.idempotency_abandon(text, text) IS
    'Forget a started key whose work failed in a way the client may retry';

CREATE FUNCTION payments.purge_idempotency_keys(max_rows integer DEFAULT 10000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_purge_idempotency_keys'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.purge_idempotency_keys(integer) IS
    'Delete up to max_rows expired idempotency keys; returns how many';
