-- The schema itself is created by CREATE EXTENSION (payments.control names
-- it).  A schema of that name that already existed is reused by CREATE
-- EXTENSION, so it is accepted only if no role but a superuser can own or
-- create objects in it: such a role could otherwise rename it, or put
-- objects of its own beside the extension's, where the worker (a
-- superuser) works.
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

-- Nothing in it is usable by PUBLIC (which includes CREATE): applications
-- get access through the payments_app role, see 90_privileges.sql.
REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC;
