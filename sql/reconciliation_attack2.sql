--
-- Reconciliation under attack, second round (hostile review of the owner
-- rights model).  Every block ends in a query whose answer shows what
-- stops the attack.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
\set VERBOSITY sqlstate
SET timezone = 'UTC';

CREATE ROLE regress_rc2_alice LOGIN;
CREATE ROLE regress_rc2_mallory LOGIN;
CREATE ROLE regress_rc2_team NOLOGIN;
GRANT payments_app TO regress_rc2_alice, regress_rc2_mallory, regress_rc2_team;
GRANT regress_rc2_team TO regress_rc2_alice, regress_rc2_mallory;
CREATE SCHEMA rc2_alice AUTHORIZATION regress_rc2_alice;
CREATE SCHEMA rc2_mallory AUTHORIZATION regress_rc2_mallory;
CREATE SCHEMA rc2_team AUTHORIZATION regress_rc2_team;
GRANT USAGE ON SCHEMA rc2_mallory TO PUBLIC;

SET ROLE regress_rc2_alice;
CREATE TABLE rc2_alice.secret (s text);
INSERT INTO rc2_alice.secret VALUES ('only alice may read this');
SET ROLE regress_rc2_mallory;
CREATE TABLE rc2_mallory.loot (how text, who text, what text);
GRANT INSERT ON rc2_mallory.loot TO PUBLIC;
RESET ROLE;

--
-- 1. A setting made by our side's code does not outlive the restricted
-- read.  A function of the owner's view may call set_config('search_path',
-- ..., false); were it kept, the run's next statements would find an
-- aggregate or operator of the owner's schema and run it with the caller's
-- rights: a superuser's, or another member's.
--
-- 1a. Mallory's own reconciliation, run by a superuser: Mallory's
-- count(*) runs as the superuser and makes her one.
SET ROLE regress_rc2_mallory;
CREATE TABLE rc2_mallory.orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc2_mallory.orders VALUES ('o1', 5, 'paid', '2026-01-01 01:00+00');
CREATE FUNCTION rc2_mallory.set_path() RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_catalog.set_config('search_path', 'rc2_mallory, pg_catalog', false);
          RETURN true; END $$;
CREATE VIEW rc2_mallory.v AS SELECT * FROM rc2_mallory.orders WHERE rc2_mallory.set_path();
CREATE FUNCTION rc2_mallory.count_step(s bigint) RETURNS bigint LANGUAGE plpgsql
    AS $$ BEGIN
        INSERT INTO rc2_mallory.loot VALUES ('count', current_user, NULL);
        IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            EXECUTE 'ALTER ROLE regress_rc2_mallory SUPERUSER';
        END IF;
        RETURN s + 1;
    END $$;
CREATE AGGREGATE rc2_mallory.count(*) (sfunc = rc2_mallory.count_step, stype = bigint,
    initcond = '0');
SELECT payments.define_reconciliation('rc2_m', 'rc2_mallory.v', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS m_stmt \gset
SELECT payments.statement_close(:m_stmt);
RESET ROLE;
SELECT payments.reconcile('rc2_m', :m_stmt) > 0 AS reconciled;
-- no code of Mallory's ran as the superuser, she is no superuser
SELECT count(*) AS ran_as_another_role FROM rc2_mallory.loot
 WHERE who <> 'regress_rc2_mallory';
SELECT rolsuper AS mallory_is_superuser FROM pg_roles WHERE rolname = 'regress_rc2_mallory';
ALTER ROLE regress_rc2_mallory NOSUPERUSER;
TRUNCATE rc2_mallory.loot;

-- 1b. The team's reconciliation, run by Alice: Mallory (a member) writes
-- a view and an operator ">" as the team, and Alice's run reads Alice's
-- secret for her.
SET ROLE regress_rc2_team;
CREATE TABLE rc2_team.orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc2_team.orders VALUES ('t1', 5, 'paid', '2026-01-01 01:00+00');
SELECT payments.define_reconciliation('rc2_team', 'rc2_team.orders', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS t_stmt \gset
SELECT payments.statement_close(:t_stmt);
SET ROLE regress_rc2_mallory;
SET ROLE regress_rc2_team;
CREATE FUNCTION rc2_team.set_path() RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_catalog.set_config('search_path', 'rc2_team, pg_catalog', false);
          RETURN true; END $$;
CREATE FUNCTION rc2_team.gt(bigint, integer) RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN
        BEGIN
            INSERT INTO rc2_mallory.loot SELECT 'operator', current_user, s FROM rc2_alice.secret;
        EXCEPTION WHEN insufficient_privilege THEN NULL;
        END;
        RETURN $1 OPERATOR(pg_catalog.>) $2;
    END $$;
CREATE OPERATOR rc2_team.> (function = rc2_team.gt, leftarg = bigint, rightarg = integer);
CREATE VIEW rc2_team.v AS SELECT * FROM rc2_team.orders WHERE rc2_team.set_path();
SELECT payments.define_reconciliation('rc2_team', 'rc2_team.v', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS redefined;
SET ROLE regress_rc2_alice;
SELECT payments.reconcile('rc2_team', :t_stmt) > 0 AS reconciled;
RESET ROLE;
-- nothing of Alice's reached Mallory's table
SELECT count(*) AS stolen FROM rc2_mallory.loot WHERE what IS NOT NULL;
-- and no setting of the owner's code is left in the caller's session
SET ROLE regress_rc2_team;
CREATE FUNCTION rc2_team.set_timeout() RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN PERFORM pg_catalog.set_config('statement_timeout', '1234', false);
          RETURN true; END $$;
CREATE OR REPLACE VIEW rc2_team.v AS SELECT * FROM rc2_team.orders WHERE rc2_team.set_timeout();
SET ROLE regress_rc2_alice;
SELECT payments.reconcile('rc2_team', :t_stmt) > 0 AS reconciled;
SHOW statement_timeout;
RESET statement_timeout;
RESET ROLE;

--
-- 2. a difference accepted after its heal died is healed
-- anyway once someone retries the compensation (or concurrently: accept
-- locks the heal row only, so it reads the compensation "dead" while a
-- retry moves it back to pending).  The item leaves reconciliation_open
-- as accepted while its refund runs.
--
SET ROLE regress_rc2_alice;
CREATE TABLE rc2_alice.orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc2_alice.orders VALUES ('a1', 5, 'pending', '2026-01-01 01:00+00');
CREATE FUNCTION rc2_alice.refund(p jsonb) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN RAISE EXCEPTION 'provider down'; END $$;
SELECT payments.define_reconciliation('rc2_a', 'rc2_alice.orders', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
SELECT payments.reconciliation_policy('rc2_a', 'status_mismatch', 'rc2_alice.refund(jsonb)');
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS a_stmt \gset
SELECT payments.statement_add(:a_stmt, '[{"external_id": "e1", "payment_ref": "a1",
    "amount": 5, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 01:00+00"}]');
SELECT payments.statement_close(:a_stmt);
SET payments.max_attempts = 1;
SELECT payments.reconcile('rc2_a', :a_stmt) > 0 AS reconciled;
RESET payments.max_attempts;
RESET ROLE;
SELECT payments.run_compensations(10) AS attempts;
SET ROLE regress_rc2_alice;
SELECT item_id AS a_item, compensation_id AS a_comp, state
  FROM payments.reconciliation_open WHERE reconciliation = 'rc2_a' \gset
SELECT :'state' AS state;
SELECT payments.accept_difference(:a_item, 'refunded by hand');
-- refused (PM-class), the decision stands
SELECT payments.retry_compensation(:a_comp);
RESET ROLE;
SELECT h.accepted_at IS NOT NULL AND c.status IN ('pending', 'running') AS accepted_and_healing
  FROM payments.reconciliation_heals h JOIN payments.compensations c ON c.id = h.compensation_id
 WHERE c.id = :a_comp;

--
-- 3. DROP ROLE of a reconciliation's owner succeeds; the
-- reconciliation stays, owned by a role that does not exist.  Only a
-- superuser can still use it, and a superuser's run reads our side as the
-- dropped role's OID (with PUBLIC's rights) and queues heals as it, which
-- can never run.
--
CREATE ROLE regress_rc2_gone LOGIN;
GRANT payments_app TO regress_rc2_gone;
CREATE TABLE rc2_team.public_orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc2_team.public_orders VALUES ('g1', 5, 'pending', '2026-01-01 01:00+00');
GRANT USAGE ON SCHEMA rc2_team TO PUBLIC;
GRANT SELECT ON rc2_team.public_orders TO PUBLIC;
CREATE FUNCTION rc2_team.heal(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SET ROLE regress_rc2_gone;
SELECT payments.define_reconciliation('rc2_gone', 'rc2_team.public_orders', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
SELECT payments.reconciliation_policy('rc2_gone', 'status_mismatch', 'rc2_team.heal(jsonb)');
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS g_stmt \gset
SELECT payments.statement_add(:g_stmt, '[{"external_id": "e1", "payment_ref": "g1",
    "amount": 5, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 01:00+00"}]');
SELECT payments.statement_close(:g_stmt);
RESET ROLE;
-- the role may be dropped; its reconciliation then runs for no one and
-- queues nothing (a superuser can give it to another role)
DROP ROLE regress_rc2_gone;
SELECT set_config('rc2.stmt', :'g_stmt', false) IS NOT NULL AS set;
\set VERBOSITY terse
DO $$ BEGIN
    PERFORM payments.reconcile('rc2_gone', current_setting('rc2.stmt')::bigint);
    RAISE NOTICE 'reconciled';
EXCEPTION WHEN others THEN
    RAISE NOTICE 'refused: %', SQLSTATE;
END $$;
\set VERBOSITY sqlstate
SELECT count(*) AS heals_queued_as_no_role
  FROM payments.compensations c
 WHERE NOT EXISTS (SELECT FROM pg_roles r WHERE r.oid = c.enqueued_by::oid);

--
-- 4. A reference of ours that converts to NULL (a cast of the owner's type
-- to text) is no reference: the row is not read, as a NULL one is not,
-- rather than reaching the extension's own NOT NULL constraint (23502 on
-- reconciliation_pool).
--
SET ROLE regress_rc2_alice;
\set VERBOSITY terse
CREATE TYPE rc2_alice.ref AS ENUM ('r1');
CREATE FUNCTION rc2_alice.ref_text(rc2_alice.ref) RETURNS text LANGUAGE sql IMMUTABLE
    AS 'SELECT NULL::text';
CREATE CAST (rc2_alice.ref AS text) WITH FUNCTION rc2_alice.ref_text(rc2_alice.ref);
CREATE TABLE rc2_alice.enum_refs (ref rc2_alice.ref, amount bigint, status text, at timestamptz);
INSERT INTO rc2_alice.enum_refs VALUES ('r1', 5, 'paid', '2026-01-01 01:00+00');
SELECT set_config('rc2.stmt', :'a_stmt', false) IS NOT NULL AS set;
SELECT payments.define_reconciliation('rc2_enum', 'rc2_alice.enum_refs', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
DO $$
DECLARE
    t text;
BEGIN
    PERFORM payments.reconcile('rc2_enum', current_setting('rc2.stmt')::bigint);
    RAISE NOTICE 'reconciled';
EXCEPTION WHEN others THEN
    GET STACKED DIAGNOSTICS t = TABLE_NAME;
    -- never refused by a constraint of the extension
    RAISE NOTICE 'refused by %', coalesce(nullif(t, ''), 'the run');
END $$;
\set VERBOSITY sqlstate
RESET ROLE;

--
-- 5. accept_difference of another role's item
-- names that role's reconciliation; item ids are a sequence, so any
-- payments_app role can list every reconciliation's name.
--
SELECT set_config('rc2.item', :'a_item', false) IS NOT NULL AS set;
SET ROLE regress_rc2_mallory;
\set VERBOSITY terse
DO $$
DECLARE
    m text;
BEGIN
    PERFORM payments.accept_difference(current_setting('rc2.item')::bigint, 'x');
EXCEPTION WHEN insufficient_privilege THEN
    GET STACKED DIAGNOSTICS m = MESSAGE_TEXT;
    -- refused without naming Alice's reconciliation
    RAISE NOTICE 'refused, naming it: %', m LIKE '%rc2_a%';
END $$;
\set VERBOSITY sqlstate
RESET ROLE;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
SET client_min_messages = warning;
DROP SCHEMA rc2_alice, rc2_mallory, rc2_team CASCADE;
DROP OWNED BY regress_rc2_alice, regress_rc2_mallory, regress_rc2_team;
DROP ROLE regress_rc2_alice, regress_rc2_mallory, regress_rc2_team;
DROP ROLE IF EXISTS regress_rc2_gone;
