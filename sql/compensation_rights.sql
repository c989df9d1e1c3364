--
-- Compensations and rights: a handler runs as the role that queued it, in
-- a security-restricted operation, and the queue never lets a role run
-- anything it could not run itself.
--
-- Items are run by payments.run_compensations (as a superuser) inside
-- transactions the worker cannot see; see compensation.sql.
--
CREATE EXTENSION payments;
CREATE ROLE regress_comp_app LOGIN;
CREATE ROLE regress_comp_mallory LOGIN;
CREATE ROLE regress_comp_stranger LOGIN;
GRANT payments_app TO regress_comp_app, regress_comp_mallory;
CREATE SCHEMA comp_shared;
GRANT USAGE, CREATE ON SCHEMA comp_shared TO regress_comp_app, regress_comp_mallory;
CREATE TABLE comp_shared.log (item text, who text);
GRANT SELECT, INSERT ON comp_shared.log TO PUBLIC;

-- A superuser's handler that the application may not execute.
CREATE FUNCTION comp_shared.admin_only(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('admin_only', current_user);
END
$$;
REVOKE EXECUTE ON FUNCTION comp_shared.admin_only(jsonb) FROM PUBLIC;
-- A superuser's handler that the application is granted.
CREATE FUNCTION comp_shared.granted(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('granted', current_user);
END
$$;
REVOKE EXECUTE ON FUNCTION comp_shared.granted(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION comp_shared.granted(jsonb) TO regress_comp_app;

SET ROLE regress_comp_app;
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
SELECT payments.enqueue_compensation('comp_shared.refund(jsonb)', '{"item": "app"}',
                                     run_at => now() + interval '1 day') AS app_item \gset
SELECT payments.enqueue_compensation('comp_shared.granted(jsonb)', '{}',
                                     run_at => now() + interval '1 day') AS granted_item \gset
-- The application can neither read the queue's tables nor run the queue.
SELECT count(*) FROM payments.compensations;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.run_compensations(10);
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.compensations SET enqueued_by = 'regress_comp_app';
\echo :LAST_ERROR_SQLSTATE
-- It can read the statistics.
SELECT handler, pending FROM payments.compensation_stats;
RESET ROLE;

-- A role without payments_app can do nothing.
SET ROLE regress_comp_stranger;
SELECT payments.enqueue_compensation('comp_shared.refund(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.compensation_stats;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SELECT id - :app_item AS item, enqueued_by, handler_owner = current_user::regrole AS owned_by_me
  FROM payments.compensations ORDER BY id;

-- The SECURITY DEFINER trick: mallory's SECURITY DEFINER function queues
-- mallory's handler, and a superuser calls it.  The item is queued as
-- mallory (current_user inside the function), not as the superuser, so the
-- handler's attempt to make mallory a superuser fails.
SET ROLE regress_comp_mallory;
CREATE FUNCTION comp_shared.escalate(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('escalate', current_user);
    ALTER ROLE regress_comp_mallory SUPERUSER;
END
$$;
CREATE FUNCTION comp_shared.innocent_report() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT payments.enqueue_compensation('comp_shared.escalate(jsonb)', '{}')
$$;
RESET ROLE;
BEGIN;
SELECT comp_shared.innocent_report() AS trick \gset
SELECT enqueued_by FROM payments.compensations WHERE id = :trick;
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT status, last_error FROM payments.compensations WHERE id = :trick;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :trick;
SELECT count(*) AS escalate_effects FROM comp_shared.log WHERE item = 'escalate';
COMMIT;
SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_comp_mallory';

-- Inside the handler: current_user is the enqueuer, SET ROLE and
-- RESET ROLE are refused, and a plain SET does not outlive the handler.
SET ROLE regress_comp_app;
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
SELECT payments.enqueue_compensation('comp_shared.whoami(jsonb)', '{}', run_at => now() + interval '1 day') AS whoami \gset
SELECT payments.enqueue_compensation('comp_shared.set_role(jsonb)', '{"sql": "SET ROLE regress_comp_app"}',
                                     max_attempts => 1, run_at => now() + interval '1 day') AS set_role \gset
SELECT payments.enqueue_compensation('comp_shared.set_role(jsonb)', '{"sql": "RESET ROLE"}',
                                     max_attempts => 1, run_at => now() + interval '1 day') AS reset_role \gset
SELECT payments.enqueue_compensation('comp_shared.set_role(jsonb)', '{"sql": "SET SESSION AUTHORIZATION regress_comp_app"}',
                                     max_attempts => 1, run_at => now() + interval '1 day') AS session_auth \gset
RESET ROLE;
SHOW work_mem;
BEGIN;
UPDATE payments.compensations SET next_attempt_at = now()
 WHERE id IN (:whoami, :set_role, :reset_role, :session_auth);
SELECT payments.run_compensations(10), payments.run_compensations(10);
SHOW work_mem;
SHOW search_path;
SELECT item, who FROM comp_shared.log WHERE item IN ('whoami', 'search_path') ORDER BY 1 DESC;
SELECT id - :whoami AS item, status, last_error FROM payments.compensations
 WHERE id IN (:whoami, :set_role, :reset_role, :session_auth) ORDER BY id;
ROLLBACK;
SHOW work_mem;
SHOW search_path;
SELECT current_user = session_user AS still_myself;

-- EXECUTE revoked after enqueue: the attempt fails (42501); while it was
-- granted, the handler ran as the application, not as its superuser owner.
BEGIN;
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :granted_item;
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT status FROM payments.compensations WHERE id = :granted_item;
SELECT item, who FROM comp_shared.log WHERE item = 'granted';
ROLLBACK;
BEGIN;
REVOKE EXECUTE ON FUNCTION comp_shared.granted(jsonb) FROM regress_comp_app;
UPDATE payments.compensations SET next_attempt_at = now(), max_attempts = 1 WHERE id = :granted_item;
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT status, last_error FROM payments.compensations WHERE id = :granted_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :granted_item;
SELECT count(*) AS granted_runs FROM comp_shared.log WHERE item = 'granted';
ROLLBACK;

-- The handler dropped and re-created under the same name by another role:
-- the impostor never runs with the enqueuer's rights (42501).
BEGIN;
SET LOCAL ROLE regress_comp_app;
DROP FUNCTION comp_shared.refund(jsonb);
SET LOCAL ROLE regress_comp_mallory;
CREATE FUNCTION comp_shared.refund(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO comp_shared.log VALUES ('impostor', current_user);
END
$$;
RESET ROLE;
UPDATE payments.compensations SET next_attempt_at = now(), max_attempts = 1 WHERE id = :app_item;
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT status, last_error FROM payments.compensations WHERE id = :app_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :app_item;
SELECT count(*) AS impostor_runs FROM comp_shared.log WHERE item = 'impostor';
ROLLBACK;

-- The handler dropped: the attempt fails (42883) and the item stays queued
-- for its next attempt.
BEGIN;
DROP FUNCTION comp_shared.refund(jsonb);
UPDATE payments.compensations SET next_attempt_at = now() WHERE id = :app_item;
SELECT payments.run_compensations(10), payments.run_compensations(10);
SELECT status, attempts, last_error FROM payments.compensations WHERE id = :app_item;
SELECT sqlstate FROM payments.compensation_attempts WHERE compensation_id = :app_item;
ROLLBACK;

-- Claims need EXECUTE on the handler too: they hand out its payloads.
SELECT payments.register_external_handler('comp_shared.admin_only(jsonb)');
SET ROLE regress_comp_app;
SELECT * FROM payments.claim_compensations('comp_shared.admin_only(jsonb)', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

DROP SCHEMA comp_shared CASCADE;
DROP EXTENSION payments CASCADE;
DROP ROLE regress_comp_app;
DROP ROLE regress_comp_mallory;
DROP ROLE regress_comp_stranger;
