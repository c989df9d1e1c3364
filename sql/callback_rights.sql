--
-- Callbacks and rights, from the attacker's side: a provider belongs to
-- the role that first named it, and no other role adds its keys, routes,
-- receives, verifies or expects its callbacks, nor plants an event id in
-- its name; no role but a superuser reads a secret; a route needs the
-- rights the routed UPDATE needs, and the UPDATE runs with the rights of
-- the role that receives the callback; the views show each role its own
-- providers and expectations only, and every one to an operator.
--
-- Roles: alice and bob, two members of payments_app; nobody, a login role
-- with nothing; operator, a member of payments_operator.  Every refusal
-- is shown with its SQLSTATE, and the tables are compared before and after
-- each group of refusals.  No signature is checked here.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
CREATE ROLE regress_cb_alice LOGIN;
CREATE ROLE regress_cb_bob LOGIN;
CREATE ROLE regress_cb_nobody LOGIN;
CREATE ROLE regress_cb_operator LOGIN;
GRANT payments_app TO regress_cb_alice, regress_cb_bob;
GRANT payments_operator TO regress_cb_operator;
CREATE SCHEMA cb_shared;
GRANT USAGE, CREATE ON SCHEMA cb_shared TO regress_cb_alice, regress_cb_bob;

SELECT payments.define_state_machine('payment', '{
    "created": ["authorized", "cancelled"],
    "authorized": ["captured", "cancelled"],
    "captured": ["refunded"]}');

-- Every row of the tables a callback may write.
CREATE FUNCTION cb_state() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(c::text, ',' ORDER BY c.provider, c.event_id) FROM payments.callbacks c),
        (SELECT string_agg(p::text, ',' ORDER BY p.provider) FROM payments.callback_providers p),
        (SELECT string_agg(k::text, ',' ORDER BY k.id) FROM payments.callback_keys k),
        (SELECT string_agg(r::text, ',' ORDER BY r.provider, r.event_type) FROM payments.callback_routes r),
        (SELECT string_agg(e::text, ',' ORDER BY e.id) FROM payments.expected_callbacks e),
        (SELECT string_agg(q::text, ',' ORDER BY q.id) FROM payments.compensations q),
        (SELECT string_agg(h::text, ',' ORDER BY h.id) FROM payments.state_history h)))
$$;

-- A superuser's handler that nobody else may execute.
CREATE FUNCTION cb_shared.admin_refund(p jsonb) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION cb_shared.admin_refund(jsonb) FROM PUBLIC;
-- A superuser's table, on which alice gets column privileges only.
CREATE TABLE cb_shared.ledger (ref text PRIMARY KEY, status text NOT NULL, amount bigint);
SELECT payments.guard_state('cb_shared.ledger', 'status', 'payment');
INSERT INTO cb_shared.ledger VALUES ('L-1', 'created', 100), ('L-2', 'created', 200), ('L-3', 'created', 300);

--
-- alice sets up her provider: a key, routes to her own table, an event,
-- an expectation.
--
SET ROLE regress_cb_alice;
CREATE TABLE cb_shared.alice_orders (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('cb_shared.alice_orders', 'status', 'payment');
INSERT INTO cb_shared.alice_orders VALUES ('A-1', 'created'), ('A-2', 'created'), ('A-3', 'created');
CREATE FUNCTION cb_shared.alice_refund(p jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION cb_shared.alice_ask(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.callback_key_add('alice_psp', 'hmac-sha256', 'alice''s secret, sixteen bytes or more', 'ka1') AS alice_key \gset
SELECT payments.callback_route('alice_psp', 'payment.authorized', 'cb_shared.alice_orders', 'ref', 'status', 'authorized');
SELECT payments.callback_route('alice_psp', 'payment.captured', 'cb_shared.alice_orders', 'ref', 'status', 'captured',
                               'cb_shared.alice_refund(jsonb)');
SELECT payments.receive_callback('alice_psp', 'evt_a1', 'A-1', 'payment.authorized', '{}');
SELECT payments.expect_callback('alice_psp', 'A-2', '1 hour', 'cb_shared.alice_ask(jsonb)') AS alice_expectation \gset
-- The application reads none of the tables, a key's secret least of all.
SELECT secret FROM payments.callback_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT key_id FROM payments.callback_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.callbacks;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.callback_routes;
\echo :LAST_ERROR_SQLSTATE
-- Nor writes them, nor runs the worker's tasks, nor changes the retention.
UPDATE payments.callback_providers SET owner = 'regress_cb_alice';
\echo :LAST_ERROR_SQLSTATE
DELETE FROM payments.callbacks;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.chase_callbacks();
\echo :LAST_ERROR_SQLSTATE
SELECT payments.purge_callbacks();
\echo :LAST_ERROR_SQLSTATE
SET payments.callback_retention = '1s';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- bob sets up his own provider, then tries alice's: 42501 everywhere,
-- nothing changes.
--
SET ROLE regress_cb_bob;
CREATE TABLE cb_shared.bob_orders (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('cb_shared.bob_orders', 'status', 'payment');
INSERT INTO cb_shared.bob_orders VALUES ('A-2', 'created'), ('B-1', 'created');
CREATE FUNCTION cb_shared.bob_ask(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.callback_route('bob_psp', 'payment.authorized', 'cb_shared.bob_orders', 'ref', 'status', 'authorized');
SELECT payments.receive_callback('bob_psp', 'evt_b1', 'B-1', 'payment.authorized', '{}');
SELECT payments.expect_callback('bob_psp', 'B-1', '1 hour', 'cb_shared.bob_ask(jsonb)') AS bob_expectation \gset
RESET ROLE;
SELECT cb_state() AS before \gset
SET ROLE regress_cb_bob;
SELECT payments.callback_key_add('alice_psp', 'hmac-sha256', 'bob''s secret, sixteen bytes or more', 'kb1');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_revoke(:alice_key);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('alice_psp', 'payment.authorized', 'cb_shared.bob_orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('alice_psp', 'payment.refunded', 'cb_shared.bob_orders', 'ref', 'status', 'refunded');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_unroute('alice_psp', 'payment.authorized');
\echo :LAST_ERROR_SQLSTATE
-- planting an event id that alice's provider will send
SELECT payments.receive_callback('alice_psp', 'evt_a2', 'A-2', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('alice_psp', 'evt_a9', 'A-2', 'unrouted.type', '{}');
\echo :LAST_ERROR_SQLSTATE
-- or replaying one it sent, to learn whether it came
SELECT payments.receive_callback('alice_psp', 'evt_a1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('alice_psp', 'A-2', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('alice_psp', 'A-2', '1 hour', 'cb_shared.bob_ask(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('alice_psp', '{}', '\x00'::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('alice_psp', '{}', 'body'::text);
\echo :LAST_ERROR_SQLSTATE
-- alice's figures are unknown to bob
SELECT payments.callback_signature_failures('alice_psp');
-- bob routes his own provider to alice's table, on which he has no rights
SELECT payments.callback_route('bob_psp', 'payment.captured', 'cb_shared.alice_orders', 'ref', 'status', 'captured');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT cb_state() = :'before' AS unchanged;
SELECT provider, owner FROM payments.callback_providers ORDER BY provider;
-- The event id bob tried to plant is a first delivery for alice.
SET ROLE regress_cb_alice;
SELECT payments.receive_callback('alice_psp', 'evt_a2', 'A-2', 'payment.authorized', '{}');
SELECT status FROM cb_shared.alice_orders WHERE ref = 'A-2';
RESET ROLE;
SELECT event_id, received_by, deliveries FROM payments.callbacks WHERE provider = 'alice_psp' ORDER BY event_id;

-- Another role that may execute alice's handler cannot stop her conflict
-- from being queued: the item has no dedup key to take first.
UPDATE cb_shared.alice_orders SET status = 'cancelled' WHERE ref = 'A-3';
SET ROLE regress_cb_bob;
SELECT payments.enqueue_compensation('cb_shared.alice_refund(jsonb)', '{}', 'callback alice_psp evt_a3',
                                     run_at => now() + interval '1 day') > 0 AS squatted;
SET ROLE regress_cb_alice;
SELECT payments.receive_callback('alice_psp', 'evt_a3', 'A-3', 'payment.captured', '{}');
RESET ROLE;
SELECT c.enqueued_by, c.payload->>'event_id' AS event_id
  FROM payments.callbacks e JOIN payments.compensations c ON c.id = e.compensation_id
 WHERE e.event_id = 'evt_a3';

--
-- A role without payments_app can do nothing, not even name a new
-- provider.
--
SELECT cb_state() AS before \gset
SET ROLE regress_cb_nobody;
SELECT payments.callback_key_add('nobody_psp', 'hmac-sha256', 'a secret of sixteen bytes or more');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('alice_psp', 'evt_n', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.callback_stats;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.callback_expectations;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT cb_state() = :'before' AS unchanged;

--
-- Secrets: a superuser reads them; payments_operator reads every column
-- of the keyring but the secret; nobody else reads the keyring at all.
--
SELECT provider, key_id, secret FROM payments.callback_keys ORDER BY id;
SET ROLE regress_cb_operator;
SELECT provider, scheme, key_id, valid_until, revoked_at, added_by, id = :alice_key AS alice_key
  FROM payments.callback_keys ORDER BY id;
SELECT secret FROM payments.callback_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.callback_keys;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.callback_keys WHERE secret LIKE 'alice%';
\echo :LAST_ERROR_SQLSTATE
-- The operator reads every provider's events, routes and expectations ...
SELECT provider, event_id, received_by FROM payments.callbacks ORDER BY provider, event_id;
SELECT provider, event_type, routed_by FROM payments.callback_routes ORDER BY provider, event_type;
SELECT provider, payment_ref, expected_by FROM payments.expected_callbacks ORDER BY provider;
-- ... but changes none of them, and adds no keys.
UPDATE payments.callbacks SET outcome = 'new';
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('alice_psp', 'hmac-sha256', 'operator''s secret, sixteen bytes');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- The column privileges say the same.
SELECT grantee, privilege_type, count(*) AS columns, bool_or(column_name = 'secret') AS with_secret
  FROM information_schema.column_privileges
 WHERE table_schema = 'payments' AND table_name = 'callback_keys'
   AND grantee IN ('payments_app', 'payments_operator', 'PUBLIC')
 GROUP BY grantee, privilege_type ORDER BY grantee, privilege_type;

--
-- A route needs SELECT on the key and state columns and UPDATE on the
-- state column; column privileges are enough.
--
SELECT cb_state() AS before \gset
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'ledger.authorized', 'cb_shared.ledger', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT (ref, status) ON cb_shared.ledger TO regress_cb_alice;
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'ledger.authorized', 'cb_shared.ledger', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
REVOKE SELECT (ref) ON cb_shared.ledger FROM regress_cb_alice;
GRANT UPDATE (status) ON cb_shared.ledger TO regress_cb_alice;
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'ledger.authorized', 'cb_shared.ledger', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- UPDATE on another column is not UPDATE on the state
RESET ROLE;
GRANT SELECT (ref) ON cb_shared.ledger TO regress_cb_alice;
REVOKE UPDATE (status) ON cb_shared.ledger FROM regress_cb_alice;
GRANT UPDATE (amount) ON cb_shared.ledger TO regress_cb_alice;
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'ledger.authorized', 'cb_shared.ledger', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT cb_state() = :'before' AS unchanged;
-- SELECT (ref, status) and UPDATE (status): routed, and applied, stale
-- and refused as usual.
REVOKE UPDATE (amount) ON cb_shared.ledger FROM regress_cb_alice;
GRANT UPDATE (status) ON cb_shared.ledger TO regress_cb_alice;
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'ledger.authorized', 'cb_shared.ledger', 'ref', 'status', 'authorized');
SELECT payments.callback_route('alice_psp', 'ledger.captured', 'cb_shared.ledger', 'ref', 'status', 'captured');
SELECT payments.receive_callback('alice_psp', 'evt_l1', 'L-1', 'ledger.authorized', '{}');
SELECT payments.receive_callback('alice_psp', 'evt_l0', 'L-1', 'ledger.authorized', '{}');
SELECT payments.receive_callback('alice_psp', 'evt_l2', 'L-2', 'ledger.captured', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT ref, status FROM cb_shared.ledger ORDER BY ref;
SELECT row_key, from_state, to_state, changed_by FROM payments.state_history
 WHERE tbl = 'cb_shared.ledger'::regclass AND from_state IS NOT NULL;

--
-- The routed UPDATE runs with the rights of the role that receives the
-- callback, at each delivery: once alice loses UPDATE, her callbacks
-- for the table fail with 42501 and record nothing.
--
REVOKE UPDATE (status) ON cb_shared.ledger FROM regress_cb_alice;
SELECT cb_state() AS before \gset
SET ROLE regress_cb_alice;
SELECT payments.receive_callback('alice_psp', 'evt_l3', 'L-3', 'ledger.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
REVOKE SELECT (ref, status) ON cb_shared.ledger FROM regress_cb_alice;
GRANT UPDATE (status) ON cb_shared.ledger TO regress_cb_alice;
SET ROLE regress_cb_alice;
SELECT payments.receive_callback('alice_psp', 'evt_l3', 'L-3', 'ledger.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT cb_state() = :'before' AS unchanged;
SELECT ref, status FROM cb_shared.ledger WHERE ref = 'L-3';
-- A superuser receiving for alice's provider moves the row with its own
-- rights.
SELECT payments.receive_callback('alice_psp', 'evt_l3', 'L-3', 'ledger.authorized', '{}');
SELECT received_by = current_user::regrole AS received_by_me FROM payments.callbacks WHERE event_id = 'evt_l3';

--
-- Handlers: a route's on_conflict handler and an expectation's query
-- handler must be ones the caller may execute (42501), in a schema it may
-- use.
--
SELECT cb_state() AS before \gset
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'payment.captured', 'cb_shared.alice_orders', 'ref', 'status', 'captured',
                               'cb_shared.admin_refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('alice_psp', 'A-3', '1 hour', 'cb_shared.admin_refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
CREATE SCHEMA cb_private;
CREATE FUNCTION cb_private.refund(p jsonb) RETURNS void LANGUAGE sql AS '';
GRANT EXECUTE ON FUNCTION cb_private.refund(jsonb) TO regress_cb_alice;
SELECT 'cb_private.refund(jsonb)'::regprocedure::oid AS private_refund \gset
SET ROLE regress_cb_alice;
SELECT payments.callback_route('alice_psp', 'payment.captured', 'cb_shared.alice_orders', 'ref', 'status', 'captured',
                               :private_refund::oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('alice_psp', 'A-3', '1 hour', :private_refund::oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT cb_state() = :'before' AS unchanged;
SELECT on_conflict FROM payments.callback_routes WHERE provider = 'alice_psp' AND event_type = 'payment.captured';

--
-- The views: each role sees its own providers and expectations, the
-- operator every one.
--
SET ROLE regress_cb_alice;
SELECT provider, received, applied, stale, overdue_expectations FROM payments.callback_stats ORDER BY provider;
SELECT provider, payment_ref, status FROM payments.callback_expectations ORDER BY provider;
SET ROLE regress_cb_bob;
SELECT provider, received, applied, stale, overdue_expectations FROM payments.callback_stats ORDER BY provider;
SELECT provider, payment_ref, status FROM payments.callback_expectations ORDER BY provider;
SET ROLE regress_cb_operator;
SELECT provider, received, applied, stale, overdue_expectations FROM payments.callback_stats ORDER BY provider;
SELECT provider, payment_ref, status FROM payments.callback_expectations ORDER BY provider;
SELECT provider, payments.callback_signature_failures(provider) FROM payments.callback_providers ORDER BY provider;
RESET ROLE;

-- security_barrier: a function of bob's in the WHERE clause, cheap enough
-- that the planner would run it before the view's own filter, sees none
-- of alice's rows.
SET ROLE regress_cb_bob;
CREATE FUNCTION cb_shared.peek(VARIADIC v text[]) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
    RAISE NOTICE 'peek: %', v;
    RETURN true;
END
$$;
SELECT provider FROM payments.callback_stats WHERE cb_shared.peek(provider);
SELECT payment_ref FROM payments.callback_expectations WHERE cb_shared.peek(provider, payment_ref);
RESET ROLE;

DROP SCHEMA cb_shared, cb_private CASCADE;
--
-- A machine guards its definer's tables and moves them on callbacks: bob
-- cannot redefine alice's (42501), and it stays as it was.
--
SET ROLE regress_cb_alice;
SELECT payments.define_state_machine('regress_cb_alice_machine', '{"open": ["paid"]}');
RESET ROLE;
SET SESSION AUTHORIZATION regress_cb_bob;
SELECT payments.define_state_machine('regress_cb_alice_machine', '{"open": ["refunded"]}');
\echo :LAST_ERROR_SQLSTATE
-- Judged by the role in effect, not the session's: a superuser session
-- that has switched to bob, as a pool or a handler run by the worker does,
-- is bob.
SET ROLE regress_cb_bob;
SELECT payments.define_state_machine('regress_cb_alice_machine', '{"open": ["refunded"]}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET SESSION AUTHORIZATION regress_cb_alice;
SELECT payments.define_state_machine('regress_cb_alice_machine', '{"open": ["paid", "cancelled"]}');
RESET SESSION AUTHORIZATION;
SELECT transitions, defined_by FROM payments.state_machine_definitions
 WHERE name = 'regress_cb_alice_machine';

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP ROLE regress_cb_alice, regress_cb_bob, regress_cb_nobody, regress_cb_operator;
