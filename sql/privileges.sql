--
-- Privileges: applications use the functions through payments_app and
-- cannot touch the tables; nothing is open to PUBLIC.
--
CREATE EXTENSION payments;
CREATE ROLE regress_app LOGIN;
CREATE ROLE regress_stranger LOGIN;
GRANT payments_app TO regress_app;

-- Every function is SECURITY DEFINER with a pinned search_path, except the
-- trigger function, guard_state / unguard_state, which deliberately run with
-- the caller's rights so that PostgreSQL's own rules (the TRIGGER privilege,
-- table ownership) decide who may guard a table; the compensation
-- functions that act for their caller or check its rights on an item (all
-- but run_compensations, src/compensation.c): they pin search_path and take
-- their owner's rights themselves; reserve and
-- confirm_reservation, whose hot path runs no SQL and whose slow path takes
-- the owner's rights and pins search_path itself (src/sql/20_reservation.sql); and
-- the four idempotency key functions, which check scope restrictions for
-- their caller and likewise take the owner's rights and pin search_path
-- around their SQL (src/sql/10_idempotency.sql).
SELECT p.oid::regprocedure AS function, p.prosecdef, p.proconfig
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'payments' AND p.prorettype <> 'trigger'::regtype
   AND p.proname NOT IN ('guard_state', 'unguard_state')
   AND (NOT p.prosecdef OR p.proconfig IS DISTINCT FROM '{"search_path=pg_catalog, pg_temp"}')
 ORDER BY p.oid::regprocedure::text;

-- PUBLIC has no privilege on any object of the schema.
SELECT c.relname, a.privilege_type
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
       aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE n.nspname = 'payments' AND a.grantee = 0;
SELECT p.oid::regprocedure
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
       aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
 WHERE n.nspname = 'payments' AND a.grantee = 0;
SELECT has_schema_privilege('public', 'payments', 'USAGE') AS public_has_usage;

-- The tables are kept by pg_dump (in name order: an updated install marks
-- them in another order than a fresh one).
SELECT array(SELECT unnest(extconfig)::regclass::text ORDER BY 1) AS extconfig
  FROM pg_extension WHERE extname = 'payments';

-- The application role calls the functions ...
SET ROLE regress_app;
SELECT outcome FROM payments.idempotency_begin('app', 'k1', '{"a": 1}');
SELECT payments.idempotency_complete('app', 'k1', '{"done": true}');
SELECT outcome, response FROM payments.idempotency_begin('app', 'k1', '{"a": 1}');
-- ... but cannot read or write the tables, nor run maintenance.
SELECT * FROM payments.idempotency_keys;
INSERT INTO payments.idempotency_keys (scope, key, request_hash, expires_at)
VALUES ('app', 'forged', '\x00', now());
UPDATE payments.idempotency_keys SET response = '{"done": false}';
DELETE FROM payments.idempotency_keys;
SELECT payments.purge_idempotency_keys();
RESET ROLE;

-- A role without payments_app can do nothing at all.
SET ROLE regress_stranger;
SELECT payments.idempotency_begin('app', 'k2', '{}');
SELECT * FROM payments.idempotency_keys;
RESET ROLE;

SELECT scope, key, state, response FROM payments.idempotency_keys;

-- payments_operator: created by the extension, cannot log in, granted to
-- nobody; it may read the compensation queue and call the four functions
-- that change an item (which check who may change which item), and
-- nothing else.  payments_app may not read the queue.
SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolinherit
  FROM pg_roles WHERE rolname IN ('payments_app', 'payments_operator') ORDER BY 1;
SELECT count(*) AS members FROM pg_auth_members WHERE roleid = 'payments_operator'::regrole;
SELECT c.relname, a.privilege_type
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
       aclexplode(c.relacl) a
 WHERE n.nspname = 'payments' AND a.grantee = 'payments_operator'::regrole
 ORDER BY 1, 2;
SELECT p.oid::regprocedure
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace,
       aclexplode(p.proacl) a
 WHERE n.nspname = 'payments' AND a.grantee = 'payments_operator'::regrole
 ORDER BY p.oid::regprocedure::text;
SELECT has_schema_privilege('payments_operator', 'payments', 'USAGE') AS operator_usage,
       has_schema_privilege('payments_operator', 'payments', 'CREATE') AS operator_create,
       has_table_privilege('payments_app', 'payments.compensations', 'SELECT') AS app_reads_queue;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP ROLE regress_app;
DROP ROLE regress_stranger;
