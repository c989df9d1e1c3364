-- Idempotency keys: see src/idempotency.c for the locking and lease rules.
--
-- The table is written only by the functions below, which validate every
-- value (lengths, states, codes) before it reaches the table.  It has no
-- CHECK constraints on purpose: the executor re-reads each constraint's
-- expression tree from its text form on every INSERT and UPDATE, a cost
-- the hot path does not need to pay twice (doc/benchmarks.md).

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

-- Scopes restricted to some roles (payments.restrict_scope); a scope with
-- no row here is shared by every role.  Roles are stored as regrole so that
-- pg_dump writes their names, not OIDs that differ in another cluster.
CREATE TABLE payments.idempotency_scopes (
    scope         text COLLATE "C" PRIMARY KEY,
    roles         regrole[]   NOT NULL,
    restricted_at timestamptz NOT NULL DEFAULT now(),
    restricted_by name        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE payments.idempotency_scopes IS
    'Idempotency scopes that only members of the listed roles may use';

SELECT pg_catalog.pg_extension_config_dump('payments.idempotency_scopes', '');

-- Every backend caches the restrictions; any change to the table, however
-- it is made, tells them to read it again.
CREATE FUNCTION payments.idempotency_scopes_changed()
    RETURNS trigger
    AS 'MODULE_PATHNAME', 'payments_idempotency_scopes_changed'
    LANGUAGE C;

CREATE TRIGGER idempotency_scopes_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON payments.idempotency_scopes
    FOR EACH STATEMENT EXECUTE FUNCTION payments.idempotency_scopes_changed();

-- The four key functions are not SECURITY DEFINER: a scope restriction is
-- checked for the caller's role (current_user), which a SECURITY DEFINER
-- function cannot see.  They read keys as the caller with a direct index
-- scan and run their SQL as their owner with search_path pinned, as
-- SECURITY DEFINER SET search_path = pg_catalog, pg_temp would
-- (src/idempotency.c); without a SET clause a replay also no longer pays
-- for PostgreSQL 15's scan of every setting on leaving the function.
CREATE FUNCTION payments.idempotency_begin(
        scope text, key text, request jsonb,
        ttl interval DEFAULT '24 hours')
    RETURNS payments.idempotency_result
    AS 'MODULE_PATHNAME', 'payments_idempotency_begin'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_begin(text, text, jsonb, interval) IS
    'Start, replay or resume the request with this key: outcome is started, replayed or recovering';

CREATE FUNCTION payments.idempotency_checkpoint(
        scope text, key text, recovery_point text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_checkpoint'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_checkpoint(text, text, text) IS
    'Record the phase a multi-transaction flow has reached and renew its lease';

CREATE FUNCTION payments.idempotency_complete(
        scope text, key text, response jsonb,
        response_code integer DEFAULT 200)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_complete'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_complete(text, text, jsonb, integer) IS
    'Store the final response of the request with this key';

CREATE FUNCTION payments.idempotency_abandon(scope text, key text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_abandon'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_abandon(text, text) IS
    'Forget a started key whose work failed in a way the client may retry';

CREATE FUNCTION payments.purge_idempotency_keys(max_rows integer DEFAULT 10000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_purge_idempotency_keys'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.purge_idempotency_keys(integer) IS
    'Delete up to max_rows expired idempotency keys; returns how many';

CREATE FUNCTION payments.restrict_scope(scope text, roles regrole[])
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_restrict_scope'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.restrict_scope(text, regrole[]) IS
    'Let only members of these roles use the keys of an idempotency scope; replaces an earlier list';

CREATE FUNCTION payments.unrestrict_scope(scope text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_unrestrict_scope'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.unrestrict_scope(text) IS
    'Share an idempotency scope with every role again; false if it was not restricted';
