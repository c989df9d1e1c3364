--
-- Scope restrictions: once payments.restrict_scope names the roles that may
-- use a scope, no other role can begin, checkpoint, complete, abandon or
-- replay its keys (42501, nothing changes); unrestricted scopes stay shared.
--
CREATE EXTENSION payments;
CREATE ROLE regress_idem_shop;        -- the application that owns scope 'shop'
CREATE ROLE regress_idem_other;       -- another application
CREATE ROLE regress_idem_shop_worker; -- a member of regress_idem_shop
GRANT payments_app TO regress_idem_shop, regress_idem_other;
GRANT regress_idem_shop TO regress_idem_shop_worker;

CREATE VIEW keys AS
SELECT scope, key, state, recovery_point, response
  FROM payments.idempotency_keys ORDER BY scope, key;

-- Before any restriction, every role shares every scope: this is the hole.
-- (The first call also fills this backend's cache of restrictions, which
-- restrict_scope must then invalidate.)
SET ROLE regress_idem_other;
SELECT outcome FROM payments.idempotency_begin('shop', 'early', '{"n": 0}');
RESET ROLE;

-- Only the extension's owner (or a role it grants EXECUTE to) restricts.
SET ROLE regress_idem_other;
SELECT payments.restrict_scope('shop', '{regress_idem_other}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unrestrict_scope('shop');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT payments.restrict_scope('shop', '{regress_idem_shop}');
SELECT scope, roles FROM payments.idempotency_scopes;

-- The owning role works as before.
SET ROLE regress_idem_shop;
SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
SELECT payments.idempotency_complete('shop', 'k1', '{"charge": 1}', 201);
SELECT outcome FROM payments.idempotency_begin('shop', 'k2', '{"order": 2}');
SELECT payments.idempotency_checkpoint('shop', 'k2', 'gateway_called');
SELECT outcome FROM payments.idempotency_begin('shop', 'k3', '{"order": 3}');
RESET ROLE;
SELECT * FROM keys;

CREATE TEMP TABLE before AS SELECT * FROM payments.idempotency_keys WHERE scope = 'shop';
CREATE FUNCTION keys_unchanged() RETURNS boolean LANGUAGE sql AS $$
    SELECT NOT EXISTS (SELECT * FROM payments.idempotency_keys WHERE scope = 'shop'
                       EXCEPT SELECT * FROM before)
       AND NOT EXISTS (SELECT * FROM before
                       EXCEPT SELECT * FROM payments.idempotency_keys WHERE scope = 'shop')
$$;

-- Another role can do nothing in the scope: not replay a stored answer,
-- not begin a key, not complete, checkpoint or abandon one.
SET ROLE regress_idem_other;
SELECT * FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.idempotency_begin('shop', 'new', '{"order": 9}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'k2', '{"forged": true}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_complete('shop', 'k3', '{"forged": true}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_checkpoint('shop', 'k2', 'forged');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.idempotency_abandon('shop', 'k3');
\echo :LAST_ERROR_SQLSTATE
-- (the key it began before the restriction is out of its reach too)
SELECT payments.idempotency_complete('shop', 'early', '{}');
\echo :LAST_ERROR_SQLSTATE
-- Its own scopes are not affected.
SELECT outcome FROM payments.idempotency_begin('other', 'k1', '{"order": 1}');
SELECT payments.idempotency_complete('other', 'k1', '{"ok": true}');
RESET ROLE;
SELECT keys_unchanged() AS shop_keys_unchanged;
DELETE FROM payments.idempotency_keys WHERE scope = 'other';

-- A member of the named role may use the scope; so may a superuser.
SET ROLE regress_idem_shop_worker;
SELECT outcome, response FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
SELECT payments.idempotency_complete('shop', 'k2', '{"charge": 2}');
RESET ROLE;
SELECT outcome, response FROM payments.idempotency_begin('shop', 'k2', '{"order": 2}');

-- The role checked is current_user.  Inside a SECURITY DEFINER function
-- that is its owner: the shop's own function, called by another role, acts
-- as the shop ...
CREATE FUNCTION shop_checkout(k text) RETURNS text LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS
$$ SELECT outcome FROM payments.idempotency_begin('shop', k, '{"via": "checkout"}') $$;
ALTER FUNCTION shop_checkout(text) OWNER TO regress_idem_shop;
SET ROLE regress_idem_other;
SELECT shop_checkout('k4');
RESET ROLE;
-- ... and a function of the other role, even called by a superuser, does not.
CREATE FUNCTION other_forge(k text) RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog AS
$$ SELECT payments.idempotency_complete('shop', k, '{"forged": true}') $$;
ALTER FUNCTION other_forge(text) OWNER TO regress_idem_other;
SELECT other_forge('k3');
\echo :LAST_ERROR_SQLSTATE
SELECT key, state, response FROM keys WHERE key IN ('k3', 'k4');

-- Calling restrict_scope again replaces the list; the change is seen at
-- once by this backend, whose cache held the old list.
SELECT payments.restrict_scope('shop', '{regress_idem_other, regress_idem_shop}');
SET ROLE regress_idem_other;
SELECT outcome, response FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
RESET ROLE;
SELECT payments.restrict_scope('shop', '{regress_idem_other}');
SET ROLE regress_idem_shop;
SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- A restriction rolled back is no restriction.
BEGIN;
SELECT payments.restrict_scope('open', '{regress_idem_shop}');
ROLLBACK;
SET ROLE regress_idem_other;
SELECT outcome FROM payments.idempotency_begin('open', 'k1', '{}');
RESET ROLE;

-- An operator's own edit of the table takes effect too (a trigger tells
-- every backend to read it again).
UPDATE payments.idempotency_scopes SET roles = '{regress_idem_shop}' WHERE scope = 'shop';
SET ROLE regress_idem_shop;
SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
RESET ROLE;

-- Lifting the restriction shares the scope again.
SELECT payments.unrestrict_scope('shop');
SELECT payments.unrestrict_scope('shop');
SET ROLE regress_idem_other;
SELECT outcome FROM payments.idempotency_begin('shop', 'k1', '{"order": 1}');
RESET ROLE;
SELECT count(*) AS restrictions FROM payments.idempotency_scopes;

-- Bad arguments: 22004, 22023, 42704; nothing is stored.
SELECT payments.restrict_scope(NULL, '{regress_idem_shop}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('shop', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('shop', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('shop', '{regress_idem_shop, NULL}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('shop', '{{regress_idem_shop}}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('shop', '{regress_idem_nobody}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('shop', ARRAY[0::regrole]);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope('', '{regress_idem_shop}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.restrict_scope(repeat('s', 65), '{regress_idem_shop}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unrestrict_scope(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unrestrict_scope('');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS restrictions FROM payments.idempotency_scopes;

-- The table is kept by pg_dump, and no application role can read or change it.
SELECT 'payments.idempotency_scopes'::regclass = ANY (extconfig) AS dumped
  FROM pg_extension WHERE extname = 'payments';
SET ROLE regress_idem_shop;
SELECT * FROM payments.idempotency_scopes;
INSERT INTO payments.idempotency_scopes (scope, roles) VALUES ('x', '{regress_idem_shop}');
RESET ROLE;

DROP FUNCTION shop_checkout(text), other_forge(text), keys_unchanged();
DROP VIEW keys;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP ROLE regress_idem_shop_worker, regress_idem_shop, regress_idem_other;
