--
-- Compensations and rights, from the attacker's side: a handler runs as
-- the role that queued it, in a security-restricted operation, and the
-- queue never lets a role run anything it could not run itself, nor see or
-- steer another role's items.
--
-- Roles: alice and bob, two members of payments_app; bob_deploy, a member
-- of bob; nobody, a login role with nothing; operator, a member of
-- payments_operator.  Every refusal is shown with its SQLSTATE, and the
-- queue's tables are compared before and after each group of refusals.
-- A message that names an item has the item's id masked, as in
-- compensation.sql.
--
-- Items are run by payments.run_compensations (as a superuser) inside
-- transactions; the regress configuration turns the worker off.  It is
-- called twice in a row and the sum shown, see compensation.sql.
--
CREATE EXTENSION payments;
CREATE ROLE regress_comp_alice LOGIN;
CREATE ROLE regress_comp_bob LOGIN;
CREATE ROLE regress_comp_bob_deploy LOGIN;
CREATE ROLE regress_comp_nobody LOGIN;
CREATE ROLE regress_comp_operator LOGIN;
GRANT payments_app TO regress_comp_alice, regress_comp_bob;
GRANT regress_comp_bob TO regress_comp_bob_deploy;
GRANT payments_operator TO regress_comp_operator;
CREATE SCHEMA comp_shared;
GRANT USAGE, CREATE ON SCHEMA comp_shared TO regress_comp_alice, regress_comp_bob;
CREATE TABLE comp_shared.log (item text, who text);
GRANT SELECT, INSERT ON comp_shared.log TO PUBLIC;

-- A digest of every row of the queue's tables.
CREATE FUNCTION queue_state() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(c::text, ',' ORDER BY c.id) FROM payments.compensations c),
        (SELECT string_agg(a::text, ',' ORDER BY a.id) FROM payments.compensation_attempts a),
        (SELECT string_agg(e::text, ',' ORDER BY e.handler) FROM payments.external_handlers e)))
$$;

-- A superuser's handler that the application may not execute.
CREATE FUNCTION comp_shared.admin_only(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('admin_only', current_user);
END
$$;
REVOKE EXECUTE ON FUNCTION comp_shared.admin_only(jsonb) FROM PUBLIC;
-- A superuser's handler that alice is granted.
CREATE FUNCTION comp_shared.granted(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('granted', current_user);
END
$$;
REVOKE EXECUTE ON FUNCTION comp_shared.granted(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION comp_shared.granted(jsonb) TO regress_comp_alice;

SET ROLE regress_comp_alice;
CREATE FUNCTION comp_shared.refund(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES (p->>'item', current_user);
END
$$;
-- Enqueueing needs EXECUTE on the handler: 42501, nothing queued.
SELECT payments.enqueue_compensation('comp_shared.admin_only(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.register_external_handler('comp_shared.admin_only(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_shared.refund(jsonb)', '{"item": "alice"}',
                                     run_at => now() + interval '1 day') AS alice_item \gset
SELECT payments.enqueue_compensation('comp_shared.granted(jsonb)', '{}',
                                     run_at => now() + interval '1 day') AS granted_item \gset
-- The application can neither read the queue's tables nor run the queue.
SELECT count(*) FROM payments.compensations;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.run_compensations(10);
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.compensations SET enqueued_by = 'regress_comp_alice';
\echo :LAST_ERROR_SQLSTATE
-- Nor raise the payload limit.
SET payments.max_payload_size = '1GB';
\echo :LAST_ERROR_SQLSTATE
-- It can read the statistics.
SELECT handler, pending FROM payments.compensation_stats;
RESET ROLE;

-- A role without payments_app can do nothing.
SET ROLE regress_comp_nobody;
SELECT payments.enqueue_compensation('comp_shared.refund(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.compensation_stats;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT payload->>'item' AS item, enqueued_by, handler_owner = current_user::regrole AS owned_by_me
  FROM payments.compensations ORDER BY id;

-- The SECURITY DEFINER trick: bob's SECURITY DEFINER function queues
-- bob's handler, and a superuser calls it.  The item is queued as bob
-- (current_user inside the function), not as the superuser, so the
-- handler's attempt to make bob a superuser fails.
SET ROLE regress_comp_bob;
CREATE FUNCTION comp_shared.escalate(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('escalate', current_user);
    ALTER ROLE regress_comp_bob SUPERUSER;
END
$$;
CREATE FUNCTION comp_shared.innocent_report() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT payments.enqueue_compensation('comp_shared.escalate(jsonb)', '{}', max_attempts => 1)
$$;
RESET ROLE;
BEGIN;
SELECT comp_shared.innocent_report() AS trick \gset
SELECT enqueued_by FROM payments.compensations WHERE id = :trick;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, last_error FROM payments.compensations WHERE id = :trick;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :trick;
SELECT count(*) AS escalate_effects FROM comp_shared.log WHERE item = 'escalate';
COMMIT;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_comp_bob';

-- Inside the handler: current_user is the enqueuer, SET ROLE and
-- RESET ROLE are refused, and a plain SET does not outlive the handler.
SET ROLE regress_comp_alice;
CREATE FUNCTION comp_shared.whoami(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('whoami', current_user);
    INSERT INTO comp_shared.log VALUES ('search_path', current_setting('search_path'));
    PERFORM set_config('work_mem', '77MB', false);
    PERFORM set_config('search_path', 'comp_shared', false);
END
$$;
CREATE FUNCTION comp_shared.set_role(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE p->>'sql';
END
$$;
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{"item": "whoami"}', run_at => now() + interval '1 day') AS whoami \gset
SELECT payments.enqueue_compensation('comp_shared.set_role(jsonb)', '{"sql": "SET ROLE regress_comp_alice"}',
                                     max_attempts => 1, run_at => now() + interval '1 day') AS set_role \gset
SELECT payments.enqueue_compensation('comp_shared.set_role(jsonb)', '{"sql": "RESET ROLE"}',
                                     max_attempts => 1, run_at => now() + interval '1 day') AS reset_role \gset
SELECT payments.enqueue_compensation('comp_shared.set_role(jsonb)', '{"sql": "SET SESSION AUTHORIZATION regress_comp_alice"}',
                                     max_attempts => 1, run_at => now() + interval '1 day') AS session_auth \gset
RESET ROLE;
SHOW work_mem;
BEGIN;
UPDATE payments.compensations SET next_attempt_at = now()
 WHERE id IN (:whoami, :set_role, :reset_role, :session_auth);
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SHOW work_mem;
SHOW search_path;
SELECT item, who FROM comp_shared.log WHERE item IN ('whoami', 'search_path') ORDER BY 1 DESC;
SELECT coalesce(payload->>'item', payload->>'sql') AS item, status, last_error FROM payments.compensations
 WHERE id IN (:whoami, :set_role, :reset_role, :session_auth) ORDER BY id;
ROLLBACK;
SHOW work_mem;
SHOW search_path;
SELECT current_user = session_user AS still_myself;

-- EXECUTE revoked after enqueue: the attempt fails (42501); while it was
-- granted, the handler ran as alice, not as its superuser owner.
BEGIN;
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :granted_item;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status FROM payments.compensations WHERE id = :granted_item;
SELECT item, who FROM comp_shared.log WHERE item = 'granted';
ROLLBACK;
BEGIN;
REVOKE EXECUTE ON FUNCTION comp_shared.granted(jsonb) FROM regress_comp_alice;
UPDATE payments.compensations SET next_attempt_at = now(), max_attempts = 1 WHERE id = :granted_item;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, last_error FROM payments.compensations WHERE id = :granted_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :granted_item;
SELECT count(*) AS granted_runs FROM comp_shared.log WHERE item = 'granted';
ROLLBACK;

-- The handler dropped and re-created under the same name by another role:
-- the impostor never runs with the enqueuer's rights (42501).
BEGIN;
SET LOCAL ROLE regress_comp_alice;
DROP FUNCTION comp_shared.refund(jsonb);
SET LOCAL ROLE regress_comp_bob;
CREATE FUNCTION comp_shared.refund(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('impostor', current_user);
END
$$;
RESET ROLE;
UPDATE payments.compensations SET next_attempt_at = now(), max_attempts = 1 WHERE id = :alice_item;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, last_error FROM payments.compensations WHERE id = :alice_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :alice_item;
SELECT count(*) AS impostor_runs FROM comp_shared.log WHERE item = 'impostor';
ROLLBACK;

-- The handler dropped: the attempt fails (42883) and the item stays queued
-- for its next attempt.
BEGIN;
SET LOCAL payments.backoff_base = '1h';
DROP FUNCTION comp_shared.refund(jsonb);
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :alice_item;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, attempts, last_error FROM payments.compensations WHERE id = :alice_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :alice_item;
ROLLBACK;

-- Claims need EXECUTE on the handler too: they hand out its payloads.
SELECT payments.register_external_handler('comp_shared.admin_only(jsonb)');
SET ROLE regress_comp_alice;
SELECT * FROM payments.claim_compensations('comp_shared.admin_only(jsonb)', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- Schema USAGE: a handler passed by OID, in a schema alice has no USAGE
-- on, is refused at enqueue, registration and claim (42501), although
-- EXECUTE on it is granted to PUBLIC (the default).  Its owner, a
-- superuser, made it SECURITY DEFINER: run, it would run as the superuser.
--
CREATE SCHEMA comp_private;
CREATE FUNCTION comp_private.definer(p jsonb) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('definer', current_user);
END
$$;
CREATE FUNCTION comp_private.gateway(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
SELECT payments.register_external_handler('comp_private.gateway(jsonb)');
SELECT payments.enqueue_compensation('comp_private.gateway(jsonb)', '{"secret": "card 4242"}') > 0 AS queued;
SELECT 'comp_private.definer(jsonb)'::regprocedure::oid AS definer_oid,
       'comp_private.gateway(jsonb)'::regprocedure::oid AS gateway_oid \gset
SELECT queue_state() AS before \gset
SET ROLE regress_comp_alice;
SELECT has_function_privilege(:definer_oid::oid, 'EXECUTE') AS alice_has_execute,
       has_schema_privilege('comp_private', 'USAGE') AS alice_has_usage;
SELECT payments.enqueue_compensation(:definer_oid::regprocedure, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation(:definer_oid::regprocedure, '{}', 'squat');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.register_external_handler(:definer_oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.claim_compensations(:gateway_oid::regprocedure, 10, '1 hour');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
-- And before every run: USAGE revoked after enqueue, the attempt fails
-- (42501) and the handler does not run.
GRANT USAGE ON SCHEMA comp_private TO regress_comp_alice;
SET ROLE regress_comp_alice;
SELECT payments.enqueue_compensation('comp_private.definer(jsonb)', '{}', max_attempts => 1,
                                     run_at => now() + interval '1 day') AS usage_item \gset
RESET ROLE;
REVOKE USAGE ON SCHEMA comp_private FROM regress_comp_alice;
BEGIN;
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :usage_item;
SELECT payments.run_compensations(10) + payments.run_compensations(10) AS finished;
SELECT status, last_error FROM payments.compensations WHERE id = :usage_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :usage_item;
SELECT count(*) AS definer_runs FROM comp_shared.log WHERE item = 'definer';
ROLLBACK;

--
-- Registering: only the function's owner (or a member of the owning
-- role).  bob owns comp_shared.bob_gateway; alice may execute it (PUBLIC
-- may), but may not register or unregister it.
--
SET ROLE regress_comp_bob;
CREATE FUNCTION comp_shared.bob_gateway(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
RESET ROLE;
SELECT queue_state() AS before \gset
SET ROLE regress_comp_alice;
SELECT payments.register_external_handler('comp_shared.bob_gateway(jsonb)');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
SET ROLE regress_comp_bob_deploy;
SELECT payments.register_external_handler('comp_shared.bob_gateway(jsonb)');
RESET ROLE;
SELECT queue_state() AS before \gset
SET ROLE regress_comp_alice;
SELECT payments.unregister_external_handler('comp_shared.bob_gateway(jsonb)');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
SELECT handler, registered_by FROM payments.external_handlers WHERE handler LIKE 'comp_shared.bob%';

--
-- Claiming: EXECUTE and USAGE.  bob's items of his external handler, with
-- the function executable by PUBLIC, can be claimed by alice: whoever may
-- execute a handler may run its items (documented).  Once bob revokes
-- EXECUTE from PUBLIC, alice's claim is refused and hands out nothing.
--
SET ROLE regress_comp_bob;
SELECT payments.enqueue_compensation('comp_shared.bob_gateway(jsonb)', '{"refund": "bob-1"}') AS bob1 \gset
SELECT payments.enqueue_compensation('comp_shared.bob_gateway(jsonb)', '{"refund": "bob-2"}') AS bob2 \gset
REVOKE EXECUTE ON FUNCTION comp_shared.bob_gateway(jsonb) FROM PUBLIC;
RESET ROLE;
SELECT queue_state() AS before \gset
SET ROLE regress_comp_alice;
SELECT payments.claim_compensations('comp_shared.bob_gateway(jsonb)', 10, '1 hour');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;

--
-- Cancel, retry, complete, fail: only the role that queued the item, its
-- members, members of payments_operator and (complete and fail) the role
-- that claimed it.  Others get 42501 whether or not the id exists.
--
SET ROLE regress_comp_bob;
SELECT id = :bob1 AS claimed_bob1, claim_token AS bob1_token
  FROM payments.claim_compensations('comp_shared.bob_gateway(jsonb)', 1, '1 hour') \gset
RESET ROLE;
SELECT :'claimed_bob1' AS claimed_bob1;
SELECT nextval('payments.compensations_id_seq') AS missing \gset
SELECT queue_state() AS before \gset
SET ROLE regress_comp_alice;
-- alice holds bob's claim token and still may not use it.
\set VERBOSITY sqlstate
SELECT payments.complete_compensation(:bob1, :bob1_token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob1', '<id>') AS error;
SELECT payments.fail_compensation(:bob1, :bob1_token, 'forged');
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob1', '<id>') AS error;
SELECT payments.cancel_compensation(:bob1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob1', '<id>') AS error;
SELECT payments.cancel_compensation(:bob2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob2', '<id>') AS error;
SELECT payments.retry_compensation(:bob2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob2', '<id>') AS error;
\set VERBOSITY default
-- An id that does not exist gets the same answer.
\set VERBOSITY sqlstate
SELECT payments.cancel_compensation(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SELECT payments.complete_compensation(:missing, 1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
RESET ROLE;
SET ROLE regress_comp_nobody;
-- (terse: the statement psql would quote holds an id and a token)
\set VERBOSITY terse
SELECT payments.cancel_compensation(:bob2);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.complete_compensation(:bob1, :bob1_token);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
RESET ROLE;
-- The operator's answers are about the item, not about rights: a wrong
-- token (PM302), an unknown id (PM301).
SET ROLE regress_comp_operator;
\set VERBOSITY sqlstate
SELECT payments.complete_compensation(:bob1, :bob1_token + 1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob1', '<id>') AS error;
SELECT payments.cancel_compensation(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SELECT payments.retry_compensation(:bob2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob2', '<id>') AS error;
\set VERBOSITY default
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
-- bob's member may change bob's items; the operator may change anyone's.
SET ROLE regress_comp_bob_deploy;
SELECT payments.complete_compensation(:bob1, :bob1_token);
RESET ROLE;
SET ROLE regress_comp_operator;
SELECT payments.cancel_compensation(:bob2);
SELECT payload->>'refund' AS refund, status, enqueued_by FROM payments.compensations
 WHERE id IN (:bob1, :bob2) ORDER BY id;
RESET ROLE;
-- bob's dead item: retried by bob, not by alice.
SET ROLE regress_comp_bob;
SELECT payments.enqueue_compensation('comp_shared.bob_gateway(jsonb)', '{"refund": "bob-3"}', max_attempts => 1) AS bob3 \gset
SELECT claim_token AS bob3_token FROM payments.claim_compensations('comp_shared.bob_gateway(jsonb)', 1, '1 hour') \gset
SELECT payments.fail_compensation(:bob3, :bob3_token, 'gateway down');
RESET ROLE;
SELECT queue_state() AS before \gset
SET ROLE regress_comp_alice;
\set VERBOSITY sqlstate
SELECT payments.retry_compensation(:bob3);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob3', '<id>') AS error;
\set VERBOSITY default
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
SET ROLE regress_comp_bob;
SELECT payments.retry_compensation(:bob3);
RESET ROLE;
SELECT status, attempts FROM payments.compensations WHERE id = :bob3;

-- An executor acts for the enqueuer: alice, granted EXECUTE on bob's
-- handler, claims bob's item and completes it with her token; she still
-- may not cancel it (she did not queue it).
SET ROLE regress_comp_bob;
GRANT EXECUTE ON FUNCTION comp_shared.bob_gateway(jsonb) TO regress_comp_alice;
RESET ROLE;
SET ROLE regress_comp_alice;
SELECT id = :bob3 AS claimed_bob3, claim_token AS alice_token, claimed_by
  FROM payments.claim_compensations('comp_shared.bob_gateway(jsonb)', 1, '1 hour') \gset
SELECT :'claimed_bob3' AS claimed_bob3, :'claimed_by' AS claimed_by;
\set VERBOSITY sqlstate
SELECT payments.cancel_compensation(:bob3);
SELECT replace(:'LAST_ERROR_MESSAGE', :'bob3', '<id>') AS error;
\set VERBOSITY default
SELECT payments.complete_compensation(:bob3, :alice_token);
RESET ROLE;
SELECT status, enqueued_by, claimed_by FROM payments.compensations WHERE id = :bob3;

--
-- Dedup keys belong to the handler.  bob cannot squat a key of alice's
-- private handler: he may not execute it, and is refused before any lookup
-- of the key, whoever came first.  On a handler both may execute, a key
-- alice used is refused to bob (42501) without the id of alice's item,
-- and the other way round: neither silently gets the other's item.
--
SET ROLE regress_comp_alice;
CREATE FUNCTION comp_shared.alice_private(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
REVOKE EXECUTE ON FUNCTION comp_shared.alice_private(jsonb) FROM PUBLIC;
SELECT payments.enqueue_compensation('comp_shared.alice_private(jsonb)', '{}', 'order-1/refund',
                                     run_at => now() + interval '1 day') AS alice_private_item \gset
RESET ROLE;
SELECT queue_state() AS before \gset
SET ROLE regress_comp_bob;
SELECT payments.enqueue_compensation('comp_shared.alice_private(jsonb)', '{}', 'order-1/refund');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_shared.alice_private(jsonb)', '{}', 'order-2/refund');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
SET ROLE regress_comp_alice;
SELECT payments.enqueue_compensation('comp_shared.alice_private(jsonb)', '{}', 'order-2/refund',
                                     run_at => now() + interval '1 day') <> :alice_private_item AS alice_own_key;
RESET ROLE;
-- comp_shared.whoami is alice's, executable by PUBLIC.
SET ROLE regress_comp_alice;
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{"by": "alice"}', 'order-3/refund',
                                     run_at => now() + interval '1 day') AS alice_key_item \gset
RESET ROLE;
SET ROLE regress_comp_bob;
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{"by": "bob"}', 'order-4/refund',
                                     run_at => now() + interval '1 day') AS bob_key_item \gset
RESET ROLE;
SELECT queue_state() AS before \gset
SET ROLE regress_comp_bob;
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{"by": "bob"}', 'order-3/refund',
                                                      run_at => now() + interval '1 day');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET ROLE regress_comp_alice;
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{"by": "alice"}', 'order-4/refund',
                                                      run_at => now() + interval '1 day');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT queue_state() = :'before' AS unchanged;
-- The same key again by its own role (or a member) is the first item.
SET ROLE regress_comp_bob_deploy;
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{"by": "bob"}', 'order-4/refund',
                                     run_at => now() + interval '1 day') = :bob_key_item AS same_item;
RESET ROLE;
SELECT dedup_key, payload->>'by' AS by, enqueued_by FROM payments.compensations
 WHERE dedup_key IN ('order-3/refund', 'order-4/refund') ORDER BY dedup_key;

-- compensation_status shows an item's status to the role that queued it,
-- its members and operators, and NULL to anyone else, as for an unknown id.
SET ROLE regress_comp_alice;
SELECT payments.compensation_status(:alice_item) IS NOT NULL AS alice_sees_hers;
SET ROLE regress_comp_bob;
SELECT payments.compensation_status(:alice_item) AS bob_sees_alices;
SELECT payments.compensation_status(-1) AS unknown;
SET ROLE regress_comp_operator;
SELECT payments.compensation_status(:alice_item) IS NOT NULL AS operator_sees_it;
SET ROLE regress_comp_nobody;
SELECT payments.compensation_status(-1);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

DROP SCHEMA comp_shared CASCADE;
DROP SCHEMA comp_private CASCADE;
DROP FUNCTION queue_state();
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
DROP ROLE regress_comp_alice;
DROP ROLE regress_comp_bob;
DROP ROLE regress_comp_bob_deploy;
DROP ROLE regress_comp_nobody;
DROP ROLE regress_comp_operator;
