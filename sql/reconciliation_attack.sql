--
-- Reconciliation under attack: what an application role can do to another
-- role's reconciliations, and bad input that reaches the run, from a
-- hostile review.  Each block shows one attack and what stops it; blocks
-- marked REFUSED are attacks refused with their SQLSTATE.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
\set VERBOSITY sqlstate
SET timezone = 'UTC';

CREATE ROLE regress_rc_alice LOGIN;
CREATE ROLE regress_rc_mallory LOGIN;
CREATE ROLE regress_rc_team NOLOGIN;
GRANT payments_app TO regress_rc_alice, regress_rc_mallory, regress_rc_team;
GRANT regress_rc_team TO regress_rc_alice, regress_rc_mallory;
CREATE SCHEMA rc_alice AUTHORIZATION regress_rc_alice;
CREATE SCHEMA rc_mallory AUTHORIZATION regress_rc_mallory;
CREATE SCHEMA rc_team AUTHORIZATION regress_rc_team;
GRANT USAGE ON SCHEMA rc_mallory TO PUBLIC;

-- Alice's own reconciliation, statement and a difference of hers.
SET ROLE regress_rc_alice;
CREATE TABLE rc_alice.orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc_alice.orders VALUES ('a-1', 1000, 'pending', '2026-11-01 09:00+00');
CREATE TABLE rc_alice.secret (s text);
INSERT INTO rc_alice.secret VALUES ('only alice may read this');
SELECT payments.define_reconciliation('alice_psp', 'rc_alice.orders', 'ref', 'amount',
    'status', 'at') > 0 AS defined;
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)') AS alice_closed \gset
SELECT payments.statement_add(:alice_closed, '[{"external_id": "x1", "payment_ref": "a-1",
    "amount": 1000, "currency": "EUR", "status": "paid", "occurred_at": "2026-11-01 09:00:01+00"}]');
SELECT payments.statement_close(:alice_closed);
SELECT payments.reconcile('alice_psp', :alice_closed) > 0 AS reconciled;
SELECT item_id AS alice_item FROM payments.reconciliation_open \gset
SELECT payments.statement_begin('psp', '[2026-11-02, 2026-11-03)') AS alice_open \gset
RESET ROLE;

--
-- REFUSED: Mallory reads, loads, closes, reconciles, redefines and accepts
-- nothing of Alice's, by any path (COPY's default statement, MERGE,
-- a writable CTE, a child table).
--
SET ROLE regress_rc_mallory;
SELECT count(*) FROM payments.reconciliation_open;
SELECT count(*) FROM payments.reconciliation_summary;
SELECT * FROM payments.statement_lines;
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount,
    currency, status, occurred_at)
    VALUES (:alice_open, 'm1', 'a-9', 1, 'EUR', 'paid', '2026-11-02 01:00+00');
SET payments.statement_id = :alice_open;
INSERT INTO payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at)
    VALUES ('m1', 'a-9', 1, 'EUR', 'paid', '2026-11-02 01:00+00');
RESET payments.statement_id;
MERGE INTO payments.statement_lines t USING (SELECT 1) s ON false
    WHEN NOT MATCHED THEN INSERT (statement_id, external_id, payment_ref, amount,
        currency, status, occurred_at)
    VALUES (:alice_open, 'm2', 'a-9', 1, 'EUR', 'paid', '2026-11-02 01:00+00');
WITH w AS (INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref,
        amount, currency, status, occurred_at)
    VALUES (:alice_open, 'm3', 'a-9', 1, 'EUR', 'paid', '2026-11-02 01:00+00'))
SELECT 1;
CREATE TEMP TABLE kid () INHERITS (payments.statement_lines);
SELECT payments.statement_add(:alice_open, '[]');
SELECT payments.statement_close(:alice_open);
SELECT payments.reconcile('alice_psp', :alice_closed);
SELECT payments.reconciliation_policy('alice_psp', 'status_mismatch', NULL);
SELECT payments.accept_difference(:alice_item, 'mine now');
SELECT payments.define_reconciliation('alice_psp', 'pg_catalog.pg_stat_activity',
    'usename', 'pid', 'state', 'backend_start');
-- a source Mallory cannot read
SELECT payments.define_reconciliation('m_authid', 'pg_catalog.pg_authid', 'rolname',
    'oid', 'rolname', 'rolvaliduntil');
RESET ROLE;

--
-- A name belongs to whoever defines it first, as a callback provider's
-- does, and any readable relation will do (pg_stat_activity): a role can
-- take a name another team has not used yet, never one in use.
--
SET ROLE regress_rc_mallory;
SELECT payments.define_reconciliation('bob_psp', 'pg_catalog.pg_stat_activity',
    'usename', 'pid', 'state', 'backend_start') > 0 AS squatted;
RESET ROLE;

--
-- Members of a shared role do not run each other's code with their own
-- rights.  Mallory, a member of regress_rc_team, sets the team
-- reconciliation's heal handler to her own function; when Alice runs
-- reconcile, the heal is queued as the team, the reconciliation's role, and
-- runs with the team's rights, which do not reach Alice's secret.
--
SET ROLE regress_rc_team;
CREATE TABLE rc_team.orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc_team.orders VALUES ('t-1', 100, 'pending', '2026-11-01 09:00+00');
SELECT payments.define_reconciliation('team_psp', 'rc_team.orders', 'ref', 'amount',
    'status', 'at') > 0 AS defined;
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)') AS team_stmt \gset
SELECT payments.statement_add(:team_stmt, '[{"external_id": "e1", "payment_ref": "t-1",
    "amount": 100, "currency": "EUR", "status": "paid", "occurred_at": "2026-11-01 09:00+00"}]');
SELECT payments.statement_close(:team_stmt);
SET ROLE regress_rc_mallory;
CREATE TABLE rc_mallory.loot (how text, who text, what text);
GRANT INSERT ON rc_mallory.loot TO PUBLIC;
CREATE FUNCTION rc_mallory.evil(p jsonb) RETURNS void LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO rc_mallory.loot SELECT 'heal', current_user, s FROM rc_alice.secret; END $$;
SELECT payments.reconciliation_policy('team_psp', 'status_mismatch', 'rc_mallory.evil(jsonb)');
SET ROLE regress_rc_alice;
SELECT payments.reconcile('team_psp', :team_stmt) > 0 AS reconciled;
RESET ROLE;
SELECT handler, enqueued_by, handler_owner FROM payments.compensations
 WHERE handler LIKE 'rc_mallory.%';
SELECT payments.run_compensations(100) > 0 AS ran;
SELECT * FROM rc_mallory.loot;

--
-- The same through the source.  Mallory redefines the team reconciliation
-- over a view of hers whose function would read Alice's secret; when Alice
-- reconciles, our side is read as the team, and the function fails.
--
SET ROLE regress_rc_mallory;
CREATE FUNCTION rc_mallory.steal() RETURNS boolean LANGUAGE plpgsql
    AS $$ BEGIN INSERT INTO rc_mallory.loot SELECT 'source', current_user, s FROM rc_alice.secret;
          RETURN true; END $$;
CREATE VIEW rc_mallory.team_orders AS SELECT * FROM rc_team.orders WHERE rc_mallory.steal();
GRANT SELECT ON rc_mallory.team_orders TO PUBLIC;
SELECT payments.define_reconciliation('team_psp', 'rc_mallory.team_orders', 'ref', 'amount',
    'status', 'at') > 0 AS redefined;
SET ROLE regress_rc_alice;
SELECT payments.reconcile('team_psp', :team_stmt) > 0 AS reconciled;
RESET ROLE;
SELECT * FROM rc_mallory.loot WHERE how = 'source';

--
-- Heals, one per difference.
--
SET ROLE regress_rc_mallory;
CREATE TABLE rc_mallory.orders (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc_mallory.orders VALUES
    ('o-3x', 5, 'paid', '2026-01-01 01:00+00'),
    ('dup', 10, 'paid', '2026-01-01 05:00+00');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', grace => '0') > 0 AS defined;
CREATE FUNCTION rc_mallory.heal(p jsonb) RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT count(payments.reconciliation_policy('m', c, 'rc_mallory.heal(jsonb)'))
  FROM unnest(ARRAY['missing_internal', 'missing_external', 'amount_mismatch',
                    'status_mismatch', 'currency_mismatch', 'duplicate_external']) c;
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS s \gset
SELECT payments.statement_add(:s, '[
 {"external_id": "e1", "payment_ref": "o-3x", "amount": 5, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 01:00+00"},
 {"external_id": "e2", "payment_ref": "o-3x", "amount": 5, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 01:01+00"},
 {"external_id": "e3", "payment_ref": "o-3x", "amount": 5, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 01:02+00"},
 {"external_id": "ghost", "payment_ref": null, "amount": 7, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 02:00+00"},
 {"external_id": "e5", "payment_ref": "ghost", "amount": 9, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 02:00+00"},
 {"external_id": "e6", "payment_ref": "dup", "amount": 10, "currency": "EUR", "status": "paid", "occurred_at": "2026-01-01 05:00+00"}]');
SELECT payments.statement_close(:s);
SELECT payments.reconcile('m', :s) AS run \gset
-- A triple charge (e1, e2, e3) gives two duplicate_external items and two
-- heals: each further charge is refunded.  A line without payment_ref whose
-- external_id is "ghost" and a line whose payment_ref is "ghost" are two
-- differences with two heals: a provider's external id cannot take
-- another difference's heal.
SELECT class, reference, payment_ref, external_id, state
  FROM payments.reconciliation_open WHERE run_id = :run
 ORDER BY class, external_id;
SELECT count(*) AS differences, count(DISTINCT compensation_id) AS heals
  FROM payments.reconciliation_open WHERE run_id = :run;
SELECT class, count, amount FROM payments.reconciliation_summary
 WHERE run_id = :run ORDER BY class;
-- A second row of ours with the reference "dup" would meet line e6 too:
-- the run refuses (21000) rather than count the line twice.
INSERT INTO rc_mallory.orders VALUES ('dup', 11, 'paid', '2026-01-01 05:30+00');
SELECT payments.reconcile('m', :s);
RESET ROLE;

--
-- Bad values of our side that stop every run of the reconciliation.
--
SET ROLE regress_rc_mallory;
-- A reference of ours longer than any line's (200 bytes) is refused with
-- 22001 before anything is written, not by an index (54000).
CREATE TABLE rc_mallory.long_refs (ref text, amount bigint, status text, at timestamptz);
INSERT INTO rc_mallory.long_refs
    SELECT string_agg(md5(i::text), ''), 1, 'paid', '2026-01-01 01:00+00'
      FROM generate_series(1, 200) i;
SELECT payments.define_reconciliation('m_long', 'rc_mallory.long_refs', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS s \gset
SELECT payments.statement_close(:s);
SELECT payments.reconcile('m_long', :s);
-- A reference type without "=" (json, point, arrays) is compared as text,
-- also when a row waits in the grace pool.
CREATE TABLE rc_mallory.json_refs (ref json, amount bigint, status text, at timestamptz);
INSERT INTO rc_mallory.json_refs VALUES ('"r"', 1, 'paid', '2026-01-01 23:00+00');
SELECT payments.define_reconciliation('m_json', 'rc_mallory.json_refs', 'ref', 'amount',
    'status', 'at', grace => '3 days') > 0 AS defined;
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS s \gset
SELECT payments.statement_close(:s);
SELECT payments.reconcile('m_json', :s) > 0 AS reconciled;
SELECT payments.statement_begin('p', '[2026-01-02, 2026-01-03)') AS s \gset
SELECT payments.statement_close(:s);
SELECT payments.reconcile('m_json', :s) > 0 AS reconciled_again;
-- A period that reaches the end of time, where a row's time plus the grace
-- would overflow, is refused at statement_begin (22023).
SELECT payments.statement_begin('p', '[2026-01-01, 294276-12-31 23:59:59+00)');
-- NaN and Infinity amounts of ours read as no amount: they are classified,
-- and kept out of the sums.
CREATE TABLE rc_mallory.nan (ref text, amount numeric, status text, at timestamptz);
INSERT INTO rc_mallory.nan VALUES ('n', 'NaN', 'paid', '2026-01-01 01:00+00'),
                               ('i', 'Infinity', 'paid', '2026-01-01 02:00+00');
SELECT payments.define_reconciliation('m_nan', 'rc_mallory.nan', 'ref', 'amount',
    'status', 'at', grace => '0') > 0 AS defined;
SELECT payments.statement_begin('p', '[2026-01-01, 2026-01-02)') AS s \gset
SELECT payments.statement_close(:s);
SELECT payments.reconcile('m_nan', :s) AS run \gset
SELECT class, count, amount FROM payments.reconciliation_summary WHERE run_id = :run;
RESET ROLE;

--
-- REFUSED: bad arguments get the documented codes.
--
SET ROLE regress_rc_mallory;
SELECT payments.statement_begin('p', 'empty');
SELECT payments.statement_begin('p', '[,2026-01-01)');
SELECT payments.statement_begin('p', '[2026-01-01,infinity]');
SELECT payments.statement_begin('p', NULL);
SELECT payments.statement_begin('', '[2026-01-01,2026-01-02)');
SELECT payments.statement_begin('p', '[2026-01-01,2026-01-02)', 'x', -1);
SELECT payments.statement_begin('p', '[2026-01-01,2026-01-02)', 'x', 1, 'NaN');
SELECT payments.statement_begin('p', '[2026-01-01,2026-01-02)', 'x', 1, -1);
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', grace => '-1 day');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', grace => '2147483647 days');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', amount_tolerance => 'NaN');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', status_map => '[]');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', status_map => '{"internal": {"a": null}}');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'amount', 'status',
    'at', status_map => '{"other": {}}');
SELECT payments.define_reconciliation('m', 'rc_mallory.orders', 'ref', 'ref', 'status', 'at');
SELECT payments.define_reconciliation('m', 'pg_catalog.pg_class', 'ctid', 'relpages',
    'relkind', 'relname');
SELECT payments.define_reconciliation('m', 0, 'a', 'b', 'c', 'd');
SELECT payments.reconciliation_policy('m', 'matched', NULL);
SELECT payments.reconciliation_policy('m', 'missing_internal', 'pg_catalog.pg_sleep(float8)');
SELECT payments.reconcile('m', 0);
SELECT payments.accept_difference(1, '');
SELECT payments.statement_add(:s, '[1, 2]');
SELECT payments.statement_add(:s, '{"external_id": "x"}');
RESET ROLE;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
SET client_min_messages = warning;
DROP SCHEMA rc_alice, rc_mallory, rc_team CASCADE;
DROP OWNED BY regress_rc_alice, regress_rc_mallory, regress_rc_team;
DROP ROLE regress_rc_alice, regress_rc_mallory, regress_rc_team;
