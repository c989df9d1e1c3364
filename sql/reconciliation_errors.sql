--
-- Reconciliation: bad input gets a clear error with its SQLSTATE, and
-- nothing changes (the tables are compared before and after each group).
-- Duplicate lines are classified, not refused (see reconciliation.sql).
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
-- Statement periods are days in UTC.
SET timezone = 'UTC';

CREATE TABLE orders (ref text PRIMARY KEY, amount bigint, status text, at timestamptz,
                     currency text, famount float8, ramount real, tamount text, day date,
                     label text);
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE "Odd ""Table""" ("Ref Col" text, "Amount;--" numeric, "st" text, "t" timestamp);
CREATE SEQUENCE a_sequence;
CREATE FUNCTION heal(p jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION not_a_handler(p text) RETURNS void LANGUAGE sql AS '';

-- Every row of the extension's reconciliation tables and the queue.
CREATE FUNCTION rc_state() RETURNS text LANGUAGE sql AS $$
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

-- What the refusals below are tried against: a reconciliation, an open
-- and a closed statement.
SELECT payments.define_reconciliation('psp', 'orders', 'ref', 'amount', 'status', 'at') > 0 AS defined;
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)') AS open_stmt \gset
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', NULL, 0, 0) AS closed_stmt \gset
SELECT payments.statement_close(:closed_stmt);
SELECT rc_state() AS before \gset

--
-- NULLs: 22004 for every argument that has no meaning when null
--
\set VERBOSITY sqlstate
SELECT payments.define_reconciliation(NULL, 'orders', 'ref', 'amount', 'status', 'at');
SELECT payments.define_reconciliation('x', NULL, 'ref', 'amount', 'status', 'at');
SELECT payments.define_reconciliation('x', 'orders', NULL, 'amount', 'status', 'at');
SELECT payments.define_reconciliation('x', 'orders', 'ref', NULL, 'status', 'at');
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', NULL, 'at');
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', NULL);
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', grace => NULL);
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', amount_tolerance => NULL);
SELECT payments.reconciliation_policy(NULL, 'amount_mismatch', 'heal(jsonb)');
SELECT payments.reconciliation_policy('psp', NULL, 'heal(jsonb)');
SELECT payments.statement_begin(NULL, '[2026-11-01, 2026-11-02)');
SELECT payments.statement_begin('psp', NULL);
SELECT payments.statement_add(NULL, '[]');
SELECT payments.statement_add(:open_stmt, NULL);
SELECT payments.statement_close(NULL);
SELECT payments.reconcile(NULL, :closed_stmt);
SELECT payments.reconcile('psp', NULL);
SELECT payments.accept_difference(NULL, 'note');
SELECT payments.accept_difference(1, NULL);
\set VERBOSITY default
SELECT rc_state() = :'before' AS unchanged;

--
-- Names, columns and types of the source
--
SELECT payments.define_reconciliation('', 'orders', 'ref', 'amount', 'status', 'at');
SELECT payments.define_reconciliation(repeat('n', 201), 'orders', 'ref', 'amount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'nope', 'amount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', 'no_currency');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ctid', 'amount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
-- a floating-point amount, and any other type that is no amount
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'famount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'ramount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'tamount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
-- a time that is no time
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'label');
\echo :LAST_ERROR_SQLSTATE
-- not a table or view; a relation that is gone
SELECT payments.define_reconciliation('x', 'a_sequence', 'last_value', 'last_value', 'last_value', 'last_value');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 999999999, 'ref', 'amount', 'status', 'at');
\echo :LAST_ERROR_SQLSTATE
-- status maps
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', status_map => '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', status_map => '"paid"');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', status_map => '{"ours": {}}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', status_map => '{"internal": ["paid"]}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', status_map => '{"internal": {"paid": "done"}}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', status_map => '{"external": {"OK": 1}}');
\echo :LAST_ERROR_SQLSTATE
-- graces and tolerances
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', grace => '-1 second');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', grace => '1 month -1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', grace => '13 months');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', grace => '367 days');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', grace => '11 months 30 days');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', amount_tolerance => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', amount_tolerance => 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_reconciliation('x', 'orders', 'ref', 'amount', 'status', 'at', amount_tolerance => 'Infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT rc_state() = :'before' AS unchanged;
-- Hostile identifiers are only ever quoted: this one is accepted, and
-- runs (below).
SELECT payments.define_reconciliation('odd', '"Odd ""Table"""', 'Ref Col', 'Amount;--', 'st', 't',
                                      grace => '0') > 0 AS defined;
-- A date is a time too.
SELECT payments.define_reconciliation('by day', 'orders', 'ref', 'amount', 'status', 'day') > 0 AS defined;
SELECT rc_state() AS before \gset

--
-- Policies
--
SELECT payments.reconciliation_policy('nope', 'amount_mismatch', 'heal(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconciliation_policy('psp', 'matched', 'heal(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconciliation_policy('psp', 'Amount_Mismatch', 'heal(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconciliation_policy('psp', 'amount_mismatch', 'not_a_handler(text)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconciliation_policy('psp', 'amount_mismatch', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT rc_state() = :'before' AS unchanged;

--
-- Statements
--
SELECT payments.statement_begin('', '[2026-11-01, 2026-11-02)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin(repeat('p', 201), '[2026-11-01, 2026-11-02)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', 'empty');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[2026-11-01,)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '(,2026-11-01]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[-infinity, 2026-11-01)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[2026-11-01, infinity)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', NULL, -1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', NULL, NULL, -0.01);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', NULL, NULL, 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(0, '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(-1, '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(999999, '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_close(999999);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '"a line"');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[1, 2]');
\echo :LAST_ERROR_SQLSTATE
SELECT rc_state() = :'before' AS unchanged;

--
-- Lines: every refusal rolls the whole batch back
--
-- one good line and one with a NULL amount
SELECT payments.statement_add(:open_stmt, '[
  {"external_id": "ok", "payment_ref": "o1", "amount": 1, "currency": "EUR", "status": "SUCCESS",
   "occurred_at": "2026-11-01 10:00+00"},
  {"external_id": "null", "payment_ref": "o2", "currency": "EUR", "status": "SUCCESS",
   "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
-- negative, fractional and huge amounts
SELECT payments.statement_add(:open_stmt, '[{"external_id": "neg", "payment_ref": "o1", "amount": -1,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "frac", "payment_ref": "o1", "amount": 1.5,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "huge", "payment_ref": "o1", "amount": 9223372036854775808,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
-- currencies that are no ISO 4217 code
SELECT payments.statement_add(:open_stmt, '[{"external_id": "cur", "payment_ref": "o1", "amount": 1,
  "currency": "eur", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "cur", "payment_ref": "o1", "amount": 1,
  "currency": "EURO", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "cur", "payment_ref": "o1", "amount": 1,
  "currency": "E1", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
-- empty and huge identifiers and statuses
SELECT payments.statement_add(:open_stmt, '[{"external_id": "", "payment_ref": "o1", "amount": 1,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, jsonb_build_array(jsonb_build_object('external_id', repeat('x', 201),
  'payment_ref', 'o1', 'amount', 1, 'currency', 'EUR', 'status', 'SUCCESS', 'occurred_at', '2026-11-01 10:00+00')));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "e", "payment_ref": "", "amount": 1,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "e", "payment_ref": "o1", "amount": 1,
  "currency": "EUR", "status": "", "occurred_at": "2026-11-01 10:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
-- no time, a time outside the period (the upper bound is excluded)
SELECT payments.statement_add(:open_stmt, '[{"external_id": "e", "payment_ref": "o1", "amount": 1,
  "currency": "EUR", "status": "SUCCESS"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "late", "payment_ref": "o1", "amount": 1,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-02 00:00+00"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.statement_add(:open_stmt, '[{"external_id": "late", "payment_ref": "o1", "amount": 1,
  "currency": "EUR", "status": "SUCCESS", "occurred_at": "2026-11-02 00:00+00"}]');
-- a closed statement receives no line, by statement_add or by INSERT
SELECT payments.statement_add(:closed_stmt, '[]');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at)
VALUES (:closed_stmt, 'e', 'o1', 1, 'EUR', 'SUCCESS', '2026-11-01 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- nor a statement that does not exist
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at)
VALUES (999999, 'e', 'o1', 1, 'EUR', 'SUCCESS', '2026-11-01 10:00+00');
\echo :LAST_ERROR_SQLSTATE
-- COPY with no statement chosen, a setting that is no statement id, a
-- closed statement (psql shows no SQLSTATE for COPY: the message shows)
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin;
e	o1	1	EUR	SUCCESS	2026-11-01 10:00+00
\.
SET payments.statement_id = 'twelve';
\echo :LAST_ERROR_SQLSTATE
SET payments.statement_id = -3;
\echo :LAST_ERROR_SQLSTATE
SET payments.statement_id = :closed_stmt;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin;
e	o1	1	EUR	SUCCESS	2026-11-01 10:00+00
\.
RESET payments.statement_id;
SELECT rc_state() = :'before' AS unchanged;

--
-- Runs
--
SELECT payments.reconcile('nope', :closed_stmt);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconcile('psp', 999999);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconcile('psp', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconcile('psp', :open_stmt);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.accept_difference(999999, 'fine');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.accept_difference(1, '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.accept_difference(1, repeat('n', 2001));
\echo :LAST_ERROR_SQLSTATE
-- A column of the source dropped or changed to floating point since the
-- definition: the run refuses, and writes nothing.
ALTER TABLE orders ALTER COLUMN amount TYPE float8;
SELECT payments.reconcile('psp', :closed_stmt);
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE orders ALTER COLUMN amount TYPE bigint;
ALTER TABLE orders DROP COLUMN status;
SELECT payments.reconcile('psp', :closed_stmt);
\echo :LAST_ERROR_SQLSTATE
SELECT rc_state() = :'before' AS unchanged;
-- Our side must name each row once, with a reference a line could have:
-- a second row of a reference, or one longer than 200 bytes, stops the
-- run before it writes anything.
CREATE TABLE twice (ref text, amount bigint, status text, at timestamptz);
INSERT INTO twice VALUES ('r1', 1, 'paid', '2026-11-01 10:00+00'), ('r1', 2, 'paid', '2026-11-01 11:00+00');
SELECT payments.define_reconciliation('twice', 'twice', 'ref', 'amount', 'status', 'at') > 0 AS defined;
SELECT rc_state() AS before \gset
SELECT payments.reconcile('twice', :closed_stmt);
\echo :LAST_ERROR_SQLSTATE
UPDATE twice SET ref = repeat('r', 201) WHERE amount = 2;
SELECT payments.reconcile('twice', :closed_stmt);
\echo :LAST_ERROR_SQLSTATE
SELECT rc_state() = :'before' AS unchanged;
-- The hostile names run.
INSERT INTO "Odd ""Table""" VALUES ('r1', 10, 'paid', '2026-11-01 10:00');
SELECT payments.reconcile('odd', :closed_stmt) > 0 AS ran;
SELECT class, reference FROM payments.reconciliation_items ORDER BY id;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP TABLE orders, "Odd ""Table""", twice;
DROP TYPE mood;
DROP SEQUENCE a_sequence;
DROP FUNCTION heal(jsonb), not_a_handler(text), rc_state();
