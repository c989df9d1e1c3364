-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION payments UPDATE TO '0.2.0'" to load this file. \quit

-- 0.2.0: the worker's trust boundary (issue 13).  Idempotency scopes can be
-- restricted to roles, the key functions and the compensation API act with
-- their caller's rights, an external claim is identified by its token, and
-- payments_operator steers the compensation queue.

-- Idempotency: scopes restricted to some roles.
CREATE TABLE payments.idempotency_scopes (
    scope         text COLLATE "C" PRIMARY KEY,
    roles         regrole[]   NOT NULL,
    restricted_at timestamptz NOT NULL DEFAULT now(),
    restricted_by name        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE payments.idempotency_scopes IS
    'Idempotency scopes that only members of the listed roles may use';

SELECT pg_catalog.pg_extension_config_dump('payments.idempotency_scopes', '');

CREATE FUNCTION payments.idempotency_scopes_changed()
    RETURNS trigger
    AS 'MODULE_PATHNAME', 'payments_idempotency_scopes_changed'
    LANGUAGE C;

CREATE TRIGGER idempotency_scopes_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON payments.idempotency_scopes
    FOR EACH STATEMENT EXECUTE FUNCTION payments.idempotency_scopes_changed();

-- A restriction is checked for the caller's role, which a SECURITY DEFINER
-- function cannot see; the C code takes the owner's rights for its own
-- statements.
ALTER FUNCTION payments.idempotency_begin(text, text, jsonb, interval)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION payments.idempotency_checkpoint(text, text, text)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION payments.idempotency_complete(text, text, jsonb, integer)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION payments.idempotency_abandon(text, text)
    SECURITY INVOKER RESET search_path;

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

REVOKE ALL ON payments.idempotency_scopes FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.idempotency_scopes_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.restrict_scope(text, regrole[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.unrestrict_scope(text) FROM PUBLIC;

-- State guard: only a comment changed.
COMMENT ON FUNCTION payments.state_guard() IS
    'Trigger of payments.guard_state: checks and records every move of a guarded column';

-- Compensations: the role of an external claim, dedup keys per handler.
ALTER TABLE payments.compensations ADD COLUMN claimed_by regrole;

DROP INDEX payments.compensations_dedup_key_idx;
CREATE UNIQUE INDEX compensations_dedup_key_idx
    ON payments.compensations (handler, dedup_key) WHERE dedup_key IS NOT NULL;

ALTER FUNCTION payments.retry_compensation(bigint) SECURITY INVOKER;
ALTER FUNCTION payments.cancel_compensation(bigint) SECURITY INVOKER;

CREATE FUNCTION payments.unregister_external_handler(handler regprocedure)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_unregister_external_handler'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.unregister_external_handler(regprocedure) IS
    'Give a handler''s items back to the worker; refused while executors hold claims of them';

-- An external executor now names the claim it holds.  The functions without
-- the token are dropped: an executor still calling them fails loudly instead
-- of completing another claim's item.
DROP FUNCTION payments.complete_compensation(bigint);
DROP FUNCTION payments.fail_compensation(bigint, text);

CREATE FUNCTION payments.complete_compensation(id bigint, claim_token bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_complete_compensation_0_2'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.complete_compensation(bigint, bigint) IS
    'Record that an external executor carried out a compensation its claim holds';

CREATE FUNCTION payments.fail_compensation(id bigint, claim_token bigint, error text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_fail_compensation_0_2'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.fail_compensation(bigint, bigint, text) IS
    'Record a failed attempt of a compensation its claim holds and schedule the next one';

COMMENT ON FUNCTION payments.run_compensations(integer) IS
    'The worker''s step: return expired claims to the queue, claim and run up to max_items due compensations; returns how many finished';

REVOKE ALL ON FUNCTION payments.unregister_external_handler(regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.complete_compensation(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.fail_compensation(bigint, bigint, text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    payments.unregister_external_handler(regprocedure),
    payments.complete_compensation(bigint, bigint),
    payments.fail_compensation(bigint, bigint, text)
    TO payments_app;

-- The operator: the compensation queue, read and steered, and the roles
-- that share an idempotency scope.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'payments_operator') THEN
        CREATE ROLE payments_operator NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA payments TO payments_operator;
GRANT EXECUTE ON FUNCTION
    payments.retry_compensation(bigint),
    payments.cancel_compensation(bigint),
    payments.complete_compensation(bigint, bigint),
    payments.fail_compensation(bigint, bigint, text)
    TO payments_operator;
GRANT SELECT ON payments.compensations, payments.compensation_attempts,
    payments.external_handlers, payments.compensation_stats TO payments_operator;
GRANT EXECUTE ON FUNCTION
    payments.restrict_scope(text, regrole[]),
    payments.unrestrict_scope(text)
    TO payments_operator;
GRANT SELECT ON payments.idempotency_scopes TO payments_operator;
