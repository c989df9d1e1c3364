--
-- Reconciliation: one small statement with a difference of every class,
-- the grace pool carried over to the next statement, the tolerance, the
-- status map, a header that the file does not match, heals queued once
-- across re-runs and corrected statements, and accept_difference.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
-- Statement periods are days in UTC.
SET timezone = 'UTC';

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

-- A heal for every class.  The worker is off in this suite: heals are
-- queued, never run (test/t/601_reconciliation_worker.pl runs them).
CREATE FUNCTION heal(p jsonb) RETURNS void LANGUAGE sql AS '';
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
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'day1.csv', 11, 29002) AS day1 \gset
-- The file itself, by COPY, as a provider's file of millions of lines is
-- loaded: the lines take their statement from payments.statement_id.
SET payments.statement_id = :day1;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at, fee, raw) FROM stdin;
t-1	o-match	1000	EUR	SUCCESS	2026-11-01 09:00:05+00	3	{"line": 1}
t-2	o-amount	2500	EUR	SUCCESS	2026-11-01 10:00:05+00	3	\N
t-3	o-within	2501	EUR	SUCCESS	2026-11-01 10:30:05+00	3	\N
t-4	o-status	3000	EUR	SUCCESS	2026-11-01 11:00:05+00	3	\N
t-5	o-refunded	3500	EUR	REFUND	2026-11-01 11:30:05+00	\N	\N
\.
RESET payments.statement_id;
-- The rest as JSON: a double charge (two provider transactions for one
-- payment), a payment we do not know, one with no reference at all, an
-- amount of ours that is NULL.
SELECT payments.statement_add(:day1, '[
  {"external_id": "t-6", "payment_ref": "o-currency", "amount": 4000, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 12:00:05+00"},
  {"external_id": "t-7", "payment_ref": "o-twice", "amount": 5000, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 13:00:05+00"},
  {"external_id": "t-7b", "payment_ref": "o-twice", "amount": 5000, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 13:00:09+00"},
  {"external_id": "t-8", "payment_ref": "o-unknown", "amount": 1500, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 14:00:05+00"},
  {"external_id": "t-9", "amount": 1, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 14:30:05+00"}]');
-- The header said 11 lines: one is still missing, so the statement does
-- not close.
\set VERBOSITY sqlstate
SELECT payments.statement_close(:day1);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.statement_add(:day1, '[
  {"external_id": "t-10", "payment_ref": "o-nullamt", "amount": 1000, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-01 16:00:05+00"}]');
SELECT payments.statement_close(:day1);
SELECT payments.statement_close(:day1);   -- again: already closed, nothing to do
SELECT status, lines, total, totals FROM payments.statements WHERE id = :day1;

SELECT payments.reconcile('psp', :day1) AS run1 \gset
-- Every line and every row of the period, classified.  o-within differs
-- by 1, within the tolerance; o-refunded is refunded on both sides; the
-- second charge of o-twice is the duplicate; o-late and o-never wait.
SELECT class, reference, external_id, amount, currency, internal_amount, external_amount,
       internal_status, external_status, waiting
  FROM payments.reconciliation_items WHERE run_id = :run1 ORDER BY class, reference;
-- Totals per class are the sums of their items; matched lines are counted.
SELECT class, currency, count, amount FROM payments.reconciliation_summary
 WHERE run_id = :run1 ORDER BY class;
SELECT s.class, s.count = count(i.*) AND s.amount = sum(i.amount) AS sums_agree
  FROM payments.reconciliation_summary s
  LEFT JOIN payments.reconciliation_items i ON i.run_id = s.run_id AND i.class = s.class
 WHERE s.run_id = :run1 AND s.class <> 'matched'
 GROUP BY s.class, s.count, s.amount ORDER BY s.class;
SELECT lines, internal_rows, matched, differences, waiting, heals_queued
  FROM payments.reconciliation_runs WHERE id = :run1;
SELECT class, reference, state FROM payments.reconciliation_open ORDER BY class, reference;
-- One heal per difference, none for the rows still waiting, queued as a
-- compensation whose payload is the difference.
SELECT c.handler, c.payload ->> 'class' AS class, c.payload ->> 'reference' AS reference,
       c.payload ->> 'reconciliation' AS reconciliation, c.payload ->> 'provider' AS provider,
       c.dedup_key
  FROM payments.compensations c ORDER BY c.payload ->> 'class', c.payload ->> 'reference';

--
-- The same statement again: the same classification, nothing new queued.
--
SELECT payments.reconcile('psp', :day1) AS run1b \gset
SELECT (SELECT array_agg(row(class, reference, amount, waiting) ORDER BY class, reference)
          FROM payments.reconciliation_items WHERE run_id = :run1b) IS NOT DISTINCT FROM
       (SELECT array_agg(row(class, reference, amount, waiting) ORDER BY class, reference)
          FROM payments.reconciliation_items WHERE run_id = :run1) AS same_classification;
SELECT heals_queued FROM payments.reconciliation_runs WHERE id = :run1b;
SELECT count(*) AS compensations FROM payments.compensations;
-- The first run is superseded: the views show the latest.
SELECT superseded_by = :run1b AS superseded FROM payments.reconciliation_runs WHERE id = :run1;
SELECT DISTINCT run_id = :run1b AS latest_only FROM payments.reconciliation_open;

--
-- A corrected file of the same day (the provider re-sent it without the
-- unknown payment and with o-amount's amount corrected): its own
-- statement, whose differences are the same differences when class and
-- reference agree, so nothing is healed twice.
--
SELECT payments.statement_begin('psp', '[2026-11-01, 2026-11-02)', 'day1.csv') AS day1c \gset
INSERT INTO payments.statement_lines (statement_id, external_id, payment_ref, amount, currency, status, occurred_at)
SELECT :day1c, external_id, payment_ref,
       CASE WHEN payment_ref = 'o-amount' THEN 2000 ELSE amount END, currency, status, occurred_at
  FROM payments.statement_lines WHERE statement_id = :day1 AND external_id <> 't-8';
SELECT payments.statement_close(:day1c);
SELECT payments.reconcile('psp', :day1c) AS run1c \gset
SELECT class, reference FROM payments.reconciliation_items WHERE run_id = :run1c ORDER BY class, reference;
SELECT heals_queued FROM payments.reconciliation_runs WHERE id = :run1c;

--
-- Day two: o-late's line comes after midnight and matches it from the
-- grace pool; o-never's grace ends with this statement's period, so it is
-- declared missing_external and healed, once.
--
SELECT payments.statement_begin('psp', '[2026-11-02, 2026-11-03)', 'day2.csv', 1, 6000) AS day2 \gset
SELECT payments.statement_add(:day2, '[
  {"external_id": "t-11", "payment_ref": "o-late", "amount": 6000, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-02 00:00:30+00"}]');
SELECT payments.statement_close(:day2);
SELECT payments.reconcile('psp', :day2) AS run2 \gset
SELECT class, reference, waiting, waited FROM payments.reconciliation_items
 WHERE run_id = :run2 ORDER BY class, reference;
SELECT reference, state FROM payments.reconciliation_pool ORDER BY reference;
SELECT c.payload ->> 'class' AS class, c.payload ->> 'reference' AS reference
  FROM payments.compensations c WHERE c.payload ->> 'reference' IN ('o-late', 'o-never');
-- Neither waits in the first day's run any more.
SELECT class, reference, state FROM payments.reconciliation_open
 WHERE reference IN ('o-late', 'o-never') ORDER BY class, reference;
-- Day two again: the pool is settled, the run the same, nothing queued.
SELECT payments.reconcile('psp', :day2) AS run2b \gset
SELECT class, reference, waited FROM payments.reconciliation_items
 WHERE run_id = :run2b ORDER BY class, reference;
SELECT heals_queued FROM payments.reconciliation_runs WHERE id = :run2b;
-- Day one again, after day two: o-late was matched later, so it is no
-- difference of day one; o-never stays declared.
SELECT payments.reconcile('psp', :day1) AS run1d \gset
SELECT class, reference, waiting FROM payments.reconciliation_items
 WHERE run_id = :run1d AND class = 'missing_external' ORDER BY reference;

--
-- Heals that are not healed yet: the worker is off here, so every heal
-- is pending.  accept_difference is refused while one is queued, and
-- accepted once it is cancelled; a difference without a policy is
-- accepted at once, and a later run does not heal it.
--
SELECT i.id AS dup_item FROM payments.reconciliation_items i
 WHERE i.run_id = :run1b AND i.class = 'duplicate_external' \gset
\set VERBOSITY sqlstate
SELECT payments.accept_difference(:dup_item, 'refunded by hand');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.cancel_compensation(h.compensation_id)
  FROM payments.reconciliation_heals h
 WHERE h.class = 'duplicate_external' AND h.reference = 'o-twice';
SELECT payments.accept_difference(:dup_item, 'refunded by hand');
SELECT payments.accept_difference(:dup_item, 'a second decision');   -- the first stands
SELECT class, reference, note, accepted_by FROM payments.reconciliation_heals
 WHERE accepted_at IS NOT NULL;
SELECT count(*) AS still_open FROM payments.reconciliation_open
 WHERE class = 'duplicate_external';
SELECT payments.reconciliation_policy('psp', 'amount_mismatch', NULL);
SELECT payments.statement_begin('psp', '[2026-11-03, 2026-11-04)', 'day3.csv') AS day3 \gset
SELECT payments.statement_add(:day3, '[
  {"external_id": "t-12", "payment_ref": "o-day3", "amount": 100, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-03 08:00:00+00"}]');
SELECT payments.statement_close(:day3);
INSERT INTO orders VALUES ('o-day3', 90, 'paid', '2026-11-03 07:59:59+00', 'EUR');
SELECT payments.reconcile('psp', :day3) AS run3 \gset
SELECT i.id AS amount_item FROM payments.reconciliation_items i WHERE i.run_id = :run3 \gset
SELECT heals_queued FROM payments.reconciliation_runs WHERE id = :run3;
SELECT payments.accept_difference(:amount_item, 'the provider charged a fee of 10');
SELECT payments.reconciliation_policy('psp', 'amount_mismatch', 'heal(jsonb)');
SELECT payments.reconcile('psp', :day3) AS run3b \gset
SELECT heals_queued FROM payments.reconciliation_runs WHERE id = :run3b;
SELECT count(*) AS open FROM payments.reconciliation_open WHERE run_id = :run3b;
-- A matched pair is no difference to accept.
\set VERBOSITY sqlstate
SELECT payments.accept_difference(i.id, 'fine') FROM payments.reconciliation_items i
 WHERE i.run_id = :run2 AND i.class = 'matched';
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

--
-- Redefining changes what the next run compares: without a currency
-- column, o-currency matches; without a status map, SUCCESS is no paid.
--
SELECT payments.define_reconciliation('psp', 'orders', 'ref', 'amount', 'status', 'paid_at',
    grace => '1 day', amount_tolerance => 1) > 0 AS redefined;
SELECT payments.reconcile('psp', :day1) AS run1e \gset
SELECT class, count(*) FROM payments.reconciliation_items WHERE run_id = :run1e
 GROUP BY class ORDER BY class;

--
-- A payment charged three times has two charges to refund: one heal per
-- further charge.  An amount of ours that is not a number differs from
-- every line, and keeps the totals numbers.
--
INSERT INTO orders VALUES ('o-thrice', 900, 'paid', '2026-11-04 10:00+00', 'EUR'),
                          ('o-nan', 'NaN', 'paid', '2026-11-04 11:00+00', 'EUR');
SELECT payments.reconciliation_policy('psp', 'duplicate_external', 'heal(jsonb)');
-- (the definition has no status map since its redefinition above, so the
-- first charge's SUCCESS differs from our paid)
SELECT payments.statement_begin('psp', '[2026-11-04, 2026-11-05)', 'day4.csv', 4, 3600) AS day4 \gset
SELECT payments.statement_add(:day4, '[
  {"external_id": "t-20", "payment_ref": "o-thrice", "amount": 900, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-04 10:00:01+00"},
  {"external_id": "t-21", "payment_ref": "o-thrice", "amount": 900, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-04 10:00:02+00"},
  {"external_id": "t-22", "payment_ref": "o-thrice", "amount": 900, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-04 10:00:03+00"},
  {"external_id": "t-23", "payment_ref": "o-nan", "amount": 900, "currency": "EUR",
   "status": "SUCCESS", "occurred_at": "2026-11-04 11:00:01+00"}]');
SELECT payments.statement_close(:day4);
SELECT payments.reconcile('psp', :day4) AS run4 \gset
SELECT class, reference, external_id, internal_amount FROM payments.reconciliation_items
 WHERE run_id = :run4 ORDER BY class, external_id;
SELECT c.payload ->> 'external_id' AS refunded_charge FROM payments.compensations c
 WHERE c.payload ->> 'class' = 'duplicate_external' AND c.payload ->> 'reference' = 'o-thrice'
 ORDER BY 1;
SELECT class, count, amount FROM payments.reconciliation_summary WHERE run_id = :run4 ORDER BY class;

--
-- The same statement with a work_mem so small that every sort, hash and
-- tuplestore of the run spills to disk: the same answer.
--
SET work_mem = '64kB';
SELECT payments.reconcile('psp', :day4) AS run4b \gset
RESET work_mem;
SELECT (SELECT array_agg(row(class, reference, external_id, amount) ORDER BY class, external_id)
          FROM payments.reconciliation_items WHERE run_id = :run4b) IS NOT DISTINCT FROM
       (SELECT array_agg(row(class, reference, external_id, amount) ORDER BY class, external_id)
          FROM payments.reconciliation_items WHERE run_id = :run4) AS same_when_spilled;

--
-- Our currency is compared upper-cased and trimmed.  A reference used
-- again on a later day (o-again waits from day five, and a new row of
-- day six has it too) names the day's row.  A redefinition over a source
-- whose reference column has another type keeps the rows waiting in the
-- pool readable.
--
CREATE TABLE orders2 (ref bigint PRIMARY KEY, amount bigint, status text, paid_at timestamptz,
                      currency text);
SELECT payments.define_reconciliation('again', 'orders', 'ref', 'amount', 'status', 'paid_at',
    currency_col => 'currency', grace => '3 days') > 0 AS defined;
INSERT INTO orders VALUES ('o-again', 100, 'paid', '2026-11-05 10:00+00', 'eur '),
                          ('o-space', 100, 'paid', '2026-11-05 11:00+00', 'eur ');
SELECT payments.statement_begin('psp', '[2026-11-05, 2026-11-06)', 'day5.csv') AS day5 \gset
SELECT payments.statement_add(:day5, '[
  {"external_id": "t-30", "payment_ref": "o-space", "amount": 100, "currency": "EUR",
   "status": "paid", "occurred_at": "2026-11-05 11:00:01+00"}]');
SELECT payments.statement_close(:day5);
SELECT payments.reconcile('again', :day5) AS run5 \gset
SELECT class, reference, waiting FROM payments.reconciliation_items WHERE run_id = :run5;
SELECT class, currency, count FROM payments.reconciliation_summary WHERE run_id = :run5 ORDER BY class;
DELETE FROM orders WHERE ref = 'o-again';
INSERT INTO orders VALUES ('o-again', 200, 'paid', '2026-11-06 10:00+00', 'EUR');
SELECT payments.statement_begin('psp', '[2026-11-06, 2026-11-07)', 'day6.csv') AS day6 \gset
SELECT payments.statement_add(:day6, '[
  {"external_id": "t-31", "payment_ref": "o-again", "amount": 200, "currency": "EUR",
   "status": "paid", "occurred_at": "2026-11-06 10:00:01+00"}]');
SELECT payments.statement_close(:day6);
SELECT payments.reconcile('again', :day6) AS run6 \gset
SELECT class, reference FROM payments.reconciliation_items WHERE run_id = :run6;
SELECT matched FROM payments.reconciliation_runs WHERE id = :run6;
-- o-again (day five) still waits; redefined over integer references
SELECT payments.define_reconciliation('again', 'orders2', 'ref', 'amount', 'status', 'paid_at',
    grace => '3 days') > 0 AS redefined;
INSERT INTO orders2 VALUES (7, 300, 'paid', '2026-11-07 10:00+00', 'EUR');
SELECT payments.statement_begin('psp', '[2026-11-07, 2026-11-08)', 'day7.csv') AS day7 \gset
SELECT payments.statement_add(:day7, '[
  {"external_id": "t-32", "payment_ref": "7", "amount": 300, "currency": "EUR",
   "status": "paid", "occurred_at": "2026-11-07 10:00:01+00"}]');
SELECT payments.statement_close(:day7);
SELECT payments.reconcile('again', :day7) > 0 AS reconciled;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP TABLE orders, orders2;
DROP FUNCTION heal(jsonb);
