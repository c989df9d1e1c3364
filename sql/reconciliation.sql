--
-- Reconciliation: one small statement with a difference of every class,
-- the grace pool carried over to the next statement, the tolerance, the
-- status map, a header that the file does not match, heals queued once
-- across re-runs and corrected statements, and accept_difference.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never

CREATE TABLE orders (
    ref      text PRIMARY KEY,
    amount   numeric(12, 0),
    status   text NOT NULL,
    paid_at  timestamptz NOT NULL,
    currency char(3) NOT NULL
);
INSERT INTO orders VALUES
    ('o-match',    1000, 'paid',    '2026-11-01 09:00+00', 'EUR'),
    ('o-amount',   2000, 'paid',    '2026-11-01 10:00+00', 'EUR'),
    ('o-within',   2500, 'paid',    '2026-11-01 10:30+00', 'EUR'),
    ('o-status',   3000, 'pending', '2026-11-01 11:00+00', 'EUR'),
    ('o-refunded', 3500, 'refunded','2026-11-01 11:30+00', 'EUR'),
    ('o-currency', 4000, 'paid',    '2026-11-01 12:00+00', 'usd'),
    ('o-twice',    5000, 'paid',    '2026-11-01 13:00+00', 'EUR'),
    ('o-late',     6000, 'paid',    '2026-11-01 23:59+00', 'EUR'),
    ('o-never',    7000, 'paid',    '2026-11-01 15:00+00', 'EUR'),
    ('o-nullamt',  NULL, 'paid',    '2026-11-01 16:00+00', 'EUR'),
    -- outside the first statement's period: read by neither statement
    ('o-before',   8000, 'paid',    '2026-10-31 23:00+00', 'EUR');

-- Our statuses and the provider's, mapped onto the four canonical ones.
SELECT payments.define_reconciliation('psp', 'orders', 'ref', 'amount', 'status', 'paid_at',
    currency_col => 'currency',
    status_map => '{"internal": {"paid": "succeeded", "pending": "pending", "refunded": "refunded"},
                    "external": {"SUCCESS": "succeeded", "REFUND": "refunded"}}',
    grace => '1 day', amount_tolerance => 1) > 0 AS defined;

-- A handler per class that records what it was given.
CREATE TABLE healed (class text, reference text, payload jsonb);
CREATE FUNCTION heal(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO healed VALUES (p ->> 'class', p ->> 'reference', p) $$;
SELECT payments.reconciliation_policy('psp', c, 'heal(jsonb)')
  FROM unnest(ARRAY['missing_internal', 'missing_external', 'amount_mismatch',
                    'status_mismatch', 'currency_mismatch', 'duplicate_external']) c;

--
-- A header the file does not match is refused at close, and an open
-- statement is never reconciled.
--
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'day1.csv', 3, 300) AS half \gset
SELECT payments.statement_add(:half, '[
  {"external_id": "t-1", "payment_ref": "o-match", "amount": 100, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 09:00:05+00"}]');
\set VERBOSITY sqlstate
SELECT payments.statement_close(:half);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reconcile('psp', :half);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.statement_close(:half);
SELECT status, lines FROM payments.statements WHERE id = :half;

--
-- Day one: the whole file.
--
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'day1.csv', 10, 29501) AS day1 \gset
-- The file itself, by COPY, as a provider's file of millions of lines is
-- loaded; statement_add takes the same lines as JSON.
COPY payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at, fee, raw) FROM stdin;
:day1	t-1	o-match	1000	EUR	SUCCESS	2026-11-01 09:00:05+00	3	{"line": 1}
:day1	t-2	o-amount	2500	EUR	SUCCESS	2026-11-01 10:00:05+00	3	\N
:day1	t-3	o-within	2501	EUR	SUCCESS	2026-11-01 10:30:05+00	3	\N
:day1	t-4	o-status	3000	EUR	SUCCESS	2026-11-01 11:00:05+00	3	\N
:day1	t-5	o-refunded	3500	EUR	REFUND	2026-11-01 11:30:05+00	\N	\N
\.
