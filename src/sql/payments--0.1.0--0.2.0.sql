-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION payments UPDATE TO '0.2.0'" to load this file. \quit

-- 0.2.0: the worker's trust boundary (issue 13).  Idempotency scopes can be
-- restricted to roles, the key functions and the compensation API act with
-- their caller's rights, an external claim is identified by its token, and
-- payments_operator steers the compensation queue.
--
-- Every name is qualified with @extschema@, the schema the extension is
-- in, never with a name a role could give another schema.

-- 0.1.0 reused a schema of that name that already existed, whoever owned
-- it.  The update requires what a fresh install does: no role but a
-- superuser owns the schema or may create objects in it...
DO $$
DECLARE
    culprit name;
BEGIN
    SELECT r.rolname INTO culprit
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
     WHERE n.oid = '@extschema@'::pg_catalog.regnamespace AND NOT r.rolsuper;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('schema %I is owned by role %I, which is not a superuser',
                                        '@extschema@', culprit),
            DETAIL = 'The payments worker runs as a superuser in the extension''s schema, so only a superuser may own it.',
            HINT = 'Drop or rename the existing schema, or make a superuser its owner, then create the extension again.';
    END IF;

    SELECT r.rolname INTO culprit
      FROM pg_catalog.pg_namespace n,
           pg_catalog.aclexplode(n.nspacl) a
      JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
     WHERE n.oid = '@extschema@'::pg_catalog.regnamespace
       AND a.privilege_type = 'CREATE' AND NOT r.rolsuper
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('role %I may create objects in schema %I and is not a superuser',
                                        culprit, '@extschema@'),
            DETAIL = 'The payments worker runs as a superuser in the extension''s schema, so only superusers may create objects in it.',
            HINT = 'Revoke CREATE on the schema from that role, then create the extension again.';
    END IF;
END
$$;

-- ... and nothing in it that is not the extension's: a function, type,
-- operator or relation someone put beside the extension's would stay where
-- the worker, a superuser, works.
DO $$
DECLARE
    culprit text;
BEGIN
    SELECT pg_catalog.pg_describe_object(o.classid, o.objid, 0) INTO culprit
      FROM (SELECT 'pg_catalog.pg_proc'::pg_catalog.regclass, p.oid
              FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = '@extschema@'::pg_catalog.regnamespace
            UNION ALL
            SELECT 'pg_catalog.pg_class'::pg_catalog.regclass, c.oid
              FROM pg_catalog.pg_class c
             WHERE c.relnamespace = '@extschema@'::pg_catalog.regnamespace
               AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            UNION ALL
            SELECT 'pg_catalog.pg_type'::pg_catalog.regclass, t.oid
              FROM pg_catalog.pg_type t
             WHERE t.typnamespace = '@extschema@'::pg_catalog.regnamespace
               AND t.typrelid = 0 AND t.typcategory <> 'A'
            UNION ALL
            SELECT 'pg_catalog.pg_operator'::pg_catalog.regclass, o.oid
              FROM pg_catalog.pg_operator o
             WHERE o.oprnamespace = '@extschema@'::pg_catalog.regnamespace) AS o(classid, objid)
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                         JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                        WHERE d.classid = o.classid AND d.objid = o.objid
                          AND d.refclassid = 'pg_catalog.pg_extension'::pg_catalog.regclass
                          AND d.deptype = 'e' AND e.extname = 'payments')
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('%s in schema %I does not belong to extension "payments"',
                                        culprit, '@extschema@'),
            DETAIL = 'The payments worker runs as a superuser in the extension''s schema, so only the extension''s objects may be there.',
            HINT = 'Move the object to another schema or drop it, then update the extension again.';
    END IF;
END
$$;

-- Idempotency: scopes restricted to some roles.
CREATE TABLE @extschema@.idempotency_scopes (
    scope         text COLLATE "C" PRIMARY KEY,
    roles         regrole[]   NOT NULL,
    restricted_at timestamptz NOT NULL DEFAULT now(),
    restricted_by name        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE @extschema@.idempotency_scopes IS
    'Idempotency scopes that only members of the listed roles may use';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.idempotency_scopes', '');

CREATE FUNCTION @extschema@.idempotency_scopes_changed()
    RETURNS trigger
    AS 'MODULE_PATHNAME', 'payments_idempotency_scopes_changed'
    LANGUAGE C;

CREATE TRIGGER idempotency_scopes_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.idempotency_scopes
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.idempotency_scopes_changed();

-- A restriction is checked for the caller's role, which a SECURITY DEFINER
-- function cannot see; the C code takes the owner's rights for its own
-- statements.
ALTER FUNCTION @extschema@.idempotency_begin(text, text, jsonb, interval)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION @extschema@.idempotency_checkpoint(text, text, text)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION @extschema@.idempotency_complete(text, text, jsonb, integer)
    SECURITY INVOKER RESET search_path;
ALTER FUNCTION @extschema@.idempotency_abandon(text, text)
    SECURITY INVOKER RESET search_path;

CREATE FUNCTION @extschema@.restrict_scope(scope text, roles regrole[])
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_restrict_scope'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.restrict_scope(text, regrole[]) IS
    'Let only members of these roles use the keys of an idempotency scope; replaces an earlier list';

CREATE FUNCTION @extschema@.unrestrict_scope(scope text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_unrestrict_scope'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.unrestrict_scope(text) IS
    'Share an idempotency scope with every role again; false if it was not restricted';

REVOKE ALL ON @extschema@.idempotency_scopes FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.idempotency_scopes_changed() FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.restrict_scope(text, regrole[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.unrestrict_scope(text) FROM PUBLIC;

-- State guard: only a comment changed.
COMMENT ON FUNCTION @extschema@.state_guard() IS
    'Trigger of @extschema@.guard_state: checks and records every move of a guarded column';

-- Compensations.  0.1.0 let any role with EXECUTE on a function register
-- it for an external executor; 0.2.0 lets only its owner (and members), so
-- a registration by another role is removed: that role could otherwise
-- claim, and mark done, items the owner's role queued.  Its items go back
-- to the worker.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT h.handler, h.registered_by
          FROM @extschema@.external_handlers h
          JOIN pg_catalog.pg_proc p ON p.oid = pg_catalog.to_regprocedure(h.handler)
         WHERE NOT pg_catalog.pg_has_role(h.registered_by, p.proowner, 'USAGE')
    LOOP
        DELETE FROM @extschema@.external_handlers WHERE handler = r.handler;
        RAISE NOTICE 'removed the external registration of handler % by role %',
            r.handler, r.registered_by
            USING DETAIL = 'Only the function''s owner may register it since version 0.2.0.';
    END LOOP;
END
$$;

-- The role of an external claim, dedup keys per handler.
ALTER TABLE @extschema@.compensations ADD COLUMN claimed_by regrole;

DROP INDEX @extschema@.compensations_dedup_key_idx;
CREATE UNIQUE INDEX compensations_dedup_key_idx
    ON @extschema@.compensations (handler, dedup_key) WHERE dedup_key IS NOT NULL;

ALTER FUNCTION @extschema@.retry_compensation(bigint) SECURITY INVOKER;
ALTER FUNCTION @extschema@.cancel_compensation(bigint) SECURITY INVOKER;

CREATE FUNCTION @extschema@.unregister_external_handler(handler regprocedure)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_unregister_external_handler'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.unregister_external_handler(regprocedure) IS
    'Give a handler''s items back to the worker; refused while executors hold claims of them';

-- An external executor now names the claim it holds.  The functions without
-- the token are dropped: an executor still calling them fails loudly instead
-- of completing another claim's item.
DROP FUNCTION @extschema@.complete_compensation(bigint);
DROP FUNCTION @extschema@.fail_compensation(bigint, text);

CREATE FUNCTION @extschema@.complete_compensation(id bigint, claim_token bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_complete_compensation_0_2'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.complete_compensation(bigint, bigint) IS
    'Record that an external executor carried out a compensation its claim holds';

CREATE FUNCTION @extschema@.fail_compensation(id bigint, claim_token bigint, error text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_fail_compensation_0_2'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.fail_compensation(bigint, bigint, text) IS
    'Record a failed attempt of a compensation its claim holds and schedule the next one';

COMMENT ON FUNCTION @extschema@.run_compensations(integer) IS
    'The worker''s step: return expired claims to the queue, claim and run up to max_items due compensations; returns how many finished';

REVOKE ALL ON FUNCTION @extschema@.unregister_external_handler(regprocedure) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.complete_compensation(bigint, bigint) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.fail_compensation(bigint, bigint, text) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    @extschema@.unregister_external_handler(regprocedure),
    @extschema@.complete_compensation(bigint, bigint),
    @extschema@.fail_compensation(bigint, bigint, text)
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

GRANT USAGE ON SCHEMA @extschema@ TO payments_operator;
GRANT EXECUTE ON FUNCTION
    @extschema@.retry_compensation(bigint),
    @extschema@.cancel_compensation(bigint),
    @extschema@.complete_compensation(bigint, bigint),
    @extschema@.fail_compensation(bigint, bigint, text)
    TO payments_operator;
GRANT SELECT ON @extschema@.compensations, @extschema@.compensation_attempts,
    @extschema@.external_handlers, @extschema@.compensation_stats TO payments_operator;
GRANT EXECUTE ON FUNCTION
    @extschema@.restrict_scope(text, regrole[]),
    @extschema@.unrestrict_scope(text)
    TO payments_operator;
GRANT SELECT ON @extschema@.idempotency_scopes TO payments_operator;

-- Default privileges (ALTER DEFAULT PRIVILEGES) may have granted rights on
-- the objects above to other roles: only the owner, payments_app and
-- payments_operator keep any.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::pg_catalog.regrole AS grantee
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.relnamespace = '@extschema@'::pg_catalog.regnamespace
           AND a.grantee <> 0 AND a.grantee <> c.relowner
        UNION
        SELECT a.grantee::pg_catalog.regrole
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.pronamespace = '@extschema@'::pg_catalog.regnamespace
           AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        CONTINUE WHEN r.grantee::text IN ('payments_app', 'payments_operator');
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', r.grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', r.grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM %s', r.grantee);
    END LOOP;
END
$$;

-- Last, as every update step ends: a change of the schema's catalog row.
-- It tells every session to look up the installed version again
-- (src/extension_catalog.c), so that a session that used the previous
-- version refuses the new schema instead of running on it.
GRANT USAGE ON SCHEMA @extschema@ TO payments_app;
