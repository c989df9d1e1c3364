--
-- Reconciliation and rights, from the attacker's side.  An application
-- role defines, loads (COPY included), closes and reconciles on its own;
-- our side is read with the rights of the role that runs reconcile (its
-- table privileges, its column privileges, its row-level security, and
-- any function in a view runs as that role), so a reconciliation cannot
-- read what its role could not; a reconciliation, a statement and their
-- differences belong to their role, and no other role runs, loads,
-- closes, accepts or even sees them; the views show an operator all.
--
-- Roles: alice and bob, two members of payments_app; nobody, a login role
-- with nothing; operator, a member of payments_operator.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
-- Statement periods are days in UTC.
SET timezone = 'UTC';
CREATE ROLE regress_rc_alice LOGIN;
CREATE ROLE regress_rc_bob LOGIN;
CREATE ROLE regress_rc_nobody LOGIN;
CREATE ROLE regress_rc_operator LOGIN;
GRANT payments_app TO regress_rc_alice, regress_rc_bob;
GRANT payments_operator TO regress_rc_operator;
CREATE SCHEMA rc_alice AUTHORIZATION regress_rc_alice;
CREATE SCHEMA rc_bob AUTHORIZATION regress_rc_bob;

-- A superuser's table: alice may read some of its columns only, and,
-- through row-level security, only her own rows.
CREATE TABLE public.ledger (ref text PRIMARY KEY, amount bigint, status text,
                            at timestamptz, tenant name, secret_note text);
INSERT INTO public.ledger VALUES
    ('L-alice', 100, 'paid', '2026-11-01 10:00+00', 'regress_rc_alice', 'x'),
    ('L-bob',   200, 'paid', '2026-11-01 11:00+00', 'regress_rc_bob', 'y');
GRANT SELECT (ref, amount, status, at) ON public.ledger TO regress_rc_alice;
ALTER TABLE public.ledger ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_rows ON public.ledger USING (tenant = current_user);
-- A table alice may not read at all.
CREATE TABLE public.payroll (ref text, amount bigint, status text, at timestamptz);
INSERT INTO public.payroll VALUES ('P-1', 999999, 'paid', '2026-11-01 12:00+00');

-- Every row of the extension's reconciliation tables and the queue.
CREATE FUNCTION rc_state() RETURNS text LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(r::text, ',' ORDER BY r.id) FROM payments.reconciliations r),
        (SELECT string_agg(p::text, ',' ORDER BY p.reconciliation_id, p.class) FROM payments.reconciliation_policies p),
        (SELECT string_agg(s::text, ',' ORDER BY s.id) FROM payments.statements s),
        (SELECT string_agg(l::text, ',' ORDER BY l.statement_id, l.external_id) FROM payments.statement_lines l),
        (SELECT string_agg(u::text, ',' ORDER BY u.id) FROM payments.reconciliation_runs u),
        (SELECT string_agg(i::text, ',' ORDER BY i.id) FROM payments.reconciliation_items i),
        (SELECT string_agg(o::text, ',' ORDER BY o.reconciliation_id, o.reference) FROM payments.reconciliation_pool o),
        (SELECT string_agg(h::text, ',' ORDER BY h.reconciliation_id, h.class, h.reference) FROM payments.reconciliation_heals h),
        (SELECT string_agg(q::text, ',' ORDER BY q.id) FROM payments.compensations q)))
$$;
GRANT EXECUTE ON FUNCTION rc_state() TO PUBLIC;

--
-- alice, an application role, does it all on her own.
--
SET ROLE regress_rc_alice;
CREATE TABLE rc_alice.orders (ref text PRIMARY KEY, amount bigint, status text, at timestamptz);
INSERT INTO rc_alice.orders VALUES ('A-1', 1000, 'paid', '2026-11-01 09:00+00'),
                                   ('A-2', 2000, 'paid', '2026-11-01 10:00+00');
-- Who reads the view: its function records the role it runs as.
CREATE TABLE rc_alice.readers (who name);
CREATE FUNCTION rc_alice.note_reader() RETURNS text LANGUAGE sql
    AS $$ INSERT INTO rc_alice.readers VALUES (current_user) RETURNING 'paid' $$;
CREATE VIEW rc_alice.orders_seen AS
    SELECT ref, amount, rc_alice.note_reader() AS status, at FROM rc_alice.orders;
CREATE FUNCTION rc_alice.heal(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.define_reconciliation('alice_psp', 'rc_alice.orders_seen', 'ref', 'amount', 'status', 'at',
                                      grace => '0') > 0 AS defined;
SELECT payments.reconciliation_policy('alice_psp', 'amount_mismatch', 'rc_alice.heal(jsonb)');
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'alice.csv', 2, 3500) AS alice_stmt \gset
SET payments.statement_id = :alice_stmt;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin;
t-1	A-1	1000	EUR	paid	2026-11-01 09:00:05+00
t-2	A-2	2500	EUR	paid	2026-11-01 10:00:05+00
\.
RESET payments.statement_id;
SELECT payments.statement_close(:alice_stmt);
SELECT payments.reconcile('alice_psp', :alice_stmt) AS alice_run \gset
-- The view's function ran as alice, never as the extension's owner.
SELECT DISTINCT who FROM rc_alice.readers;
SELECT class, reference, state FROM payments.reconciliation_open;
SELECT item_id AS alice_item FROM payments.reconciliation_open \gset
-- She reads none of the tables behind the views, and cannot write them.
SELECT count(*) FROM payments.statement_lines;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.reconciliation_items;
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.statement_lines SET amount = 0;
\echo :LAST_ERROR_SQLSTATE
DELETE FROM payments.statement_lines;
\echo :LAST_ERROR_SQLSTATE
INSERT INTO payments.reconciliation_heals VALUES (1, 'amount_mismatch', 'A-2', 1);
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.statements SET status = 'open';
\echo :LAST_ERROR_SQLSTATE
-- The ledger, through her column privileges and the row-level security:
-- bob's row is not hers, so it is not missing from her statement.
SELECT payments.define_reconciliation('alice_ledger', 'public.ledger', 'ref', 'amount', 'status', 'at',
                                      grace => '0') > 0 AS defined;
SELECT payments.reconcile('alice_ledger', :alice_stmt) AS ledger_run \gset
SELECT class, reference FROM payments.reconciliation_open WHERE reconciliation = 'alice_ledger'
 ORDER BY class, reference;
-- A column she may not read, and a table she may not read at all.
SELECT payments.define_reconciliation('alice_ledger2', 'public.ledger', 'ref', 'amount', 'secret_note', 'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('alice_payroll', 'public.payroll', 'ref', 'amount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
-- A view of her own over it does not help: the view reads as her.
CREATE VIEW rc_alice.payroll AS SELECT * FROM public.payroll;
SELECT payments.define_reconciliation('alice_payroll', 'rc_alice.payroll', 'ref', 'amount', 'status', 'at') > 0 AS defined;
SELECT payments.reconcile('alice_payroll', :alice_stmt);
\echo :LAST_ERROR_SQLSTATE
-- A policy with a handler she may not execute.
RESET ROLE;
CREATE FUNCTION public.admin_heal(p jsonb) RETURNS void LANGUAGE sql AS '';
REVOKE EXECUTE ON FUNCTION public.admin_heal(jsonb) FROM PUBLIC;
SET ROLE regress_rc_alice;
SELECT payments.reconciliation_policy('alice_psp', 'missing_internal', 'public.admin_heal(jsonb)');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- A superuser who runs alice's reconciliation, or even redefines it,
-- lends it nothing: her side is read as her, her heal is queued as her,
-- and no code of hers runs with a superuser's rights.
SELECT payments.define_reconciliation('alice_psp', 'rc_alice.orders_seen', 'ref', 'amount', 'status', 'at',
                                      grace => '0') > 0 AS redefined;
UPDATE rc_alice.orders SET amount = 2100 WHERE ref = 'A-2';
SELECT payments.reconcile('alice_psp', :alice_stmt) > 0 AS ran;
SELECT DISTINCT who FROM rc_alice.readers;
SELECT DISTINCT enqueued_by FROM payments.compensations;
UPDATE rc_alice.orders SET amount = 2000 WHERE ref = 'A-2';
SELECT rc_state() AS before \gset

--
-- bob tries alice's: 42501 everywhere, and nothing changes.
--
SET ROLE regress_rc_bob;
SELECT payments.reconcile('alice_psp', :alice_stmt);
\echo :LAST_ERROR_SQLSTATE
CREATE TABLE rc_bob.orders (ref text, amount bigint, status text, at timestamptz);
SELECT payments.define_reconciliation('alice_psp', 'rc_bob.orders', 'ref', 'amount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconciliation_policy('alice_psp', 'amount_mismatch', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:alice_stmt, '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_close(:alice_stmt);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.accept_difference(:alice_item, 'mine now');
\echo :LAST_ERROR_SQLSTATE
-- His own reconciliation, on her statement.
SELECT payments.define_reconciliation('bob_psp', 'rc_bob.orders', 'ref', 'amount', 'status', 'at') > 0 AS defined;
SELECT payments.reconcile('bob_psp', :alice_stmt);
\echo :LAST_ERROR_SQLSTATE
-- Lines planted in her open statement, by INSERT and by COPY.
SELECT payments.statement_begin('psp', '[2026-11-02, 2026-11-03)') AS bob_stmt \gset
RESET ROLE;
SET ROLE regress_rc_alice;
SELECT payments.statement_begin('psp', '[2026-11-02, 2026-11-03)') AS alice_open \gset
RESET ROLE;
SELECT rc_state() AS before \gset
SET ROLE regress_rc_bob;
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at)
VALUES (:alice_open, 'evil', 'A-9', 1, 'EUR', 'paid', '2026-11-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- one line of his own and one of hers in the same batch: all refused
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at)
VALUES (:bob_stmt, 'ok', 'B-1', 1, 'EUR', 'paid', '2026-11-02 10:00+00'),
       (:alice_open, 'evil', 'A-9', 1, 'EUR', 'paid', '2026-11-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
SET payments.statement_id = :alice_open;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin;
evil	A-9	1	EUR	paid	2026-11-02 10:00+00
\.
RESET payments.statement_id;
-- He sees nothing of hers in the views.
SELECT count(*) FROM payments.reconciliation_open;
SELECT count(*) FROM payments.reconciliation_summary;
RESET ROLE;
SELECT rc_state() = :'before' AS unchanged;

--
-- A role shared by alice and bob: bob redefines its reconciliation over a
-- view of his own, whose function reads what alice may read and the team
-- may not.  When alice runs it, the view runs as the team, and fails.
RESET ROLE;
CREATE ROLE regress_rc_team;
GRANT payments_app TO regress_rc_team;
GRANT regress_rc_team TO regress_rc_alice, regress_rc_bob;
GRANT USAGE ON SCHEMA rc_alice TO regress_rc_team;
SET ROLE regress_rc_alice;
CREATE TABLE rc_alice.team_orders (ref text, amount bigint, status text, at timestamptz);
GRANT SELECT ON rc_alice.team_orders TO regress_rc_team;
SET ROLE regress_rc_team;
SELECT payments.define_reconciliation('team_psp', 'rc_alice.team_orders', 'ref', 'amount', 'status', 'at') > 0 AS defined;
SET ROLE regress_rc_bob;
CREATE FUNCTION rc_bob.peek() RETURNS text LANGUAGE sql
    AS $$ SELECT count(*)::text FROM rc_alice.orders $$;
CREATE VIEW rc_bob.team_view AS SELECT ref, amount, rc_bob.peek() AS status, at FROM rc_alice.team_orders;
GRANT USAGE ON SCHEMA rc_bob TO regress_rc_team;
GRANT SELECT ON rc_bob.team_view TO regress_rc_team;
SELECT payments.define_reconciliation('team_psp', 'rc_bob.team_view', 'ref', 'amount', 'status', 'at') > 0 AS defined;
SET ROLE regress_rc_alice;
INSERT INTO rc_alice.team_orders VALUES ('T-1', 1, 'paid', '2026-11-01 08:00+00');
SELECT payments.reconcile('team_psp', :alice_stmt);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT rc_state() AS before \gset

--
-- nobody runs nothing; the operator sees every role's.
--
SET ROLE regress_rc_nobody;
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconcile('alice_psp', :alice_stmt);
\echo :LAST_ERROR_SQLSTATE
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at)
VALUES (:alice_open, 'evil', 'A-9', 1, 'EUR', 'paid', '2026-11-02 10:00+00');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.reconciliation_open;
\echo :LAST_ERROR_SQLSTATE
SET ROLE regress_rc_operator;
SELECT reconciliation, class, reference FROM payments.reconciliation_open ORDER BY reconciliation, class, reference;
SELECT count(*) > 0 AS reads_lines FROM payments.statement_lines;
SELECT payments.reconcile('alice_psp', :alice_stmt);
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT rc_state() = :'before' AS unchanged;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP SCHEMA rc_alice CASCADE;
DROP SCHEMA rc_bob CASCADE;
DROP TABLE public.ledger, public.payroll;
DROP FUNCTION rc_state(), public.admin_heal(jsonb);
DROP ROLE regress_rc_alice, regress_rc_bob, regress_rc_nobody, regress_rc_operator, regress_rc_team;
