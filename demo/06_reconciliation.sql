-- Demo step 6: reconciliation.
\set QUIET on
\pset footer off
\echo
\echo '== 6. Reconciliation: the provider''s daily statement against our orders, every difference healed once =='
\echo
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS payments;
RESET client_min_messages;

-- Our side: orders whose status the state guard keeps on its edges, in
-- minor units, with the time each was placed.
SELECT payments.define_state_machine('recon_order', '{
    "awaiting_payment": ["paid", "cancelled"],
    "paid": ["refunded"]}') \g /dev/null
CREATE TABLE recon_orders (order_ref text PRIMARY KEY, amount bigint NOT NULL, currency char(3) NOT NULL,
                           status text NOT NULL DEFAULT 'awaiting_payment', placed_at timestamptz NOT NULL);
SELECT payments.guard_state('recon_orders', 'status', 'recon_order') \g /dev/null
INSERT INTO recon_orders (order_ref, amount, currency, placed_at) VALUES
    ('R-1001', 1999, 'EUR', '2026-11-30 09:12+00'),
    ('R-1002', 4500, 'EUR', '2026-11-30 10:40+00'),
    ('R-1003',  850, 'EUR', '2026-11-30 14:05+00'),
    ('R-1004', 3200, 'EUR', '2026-11-30 23:58+00');
UPDATE recon_orders SET status = 'paid' WHERE order_ref IN ('R-1001', 'R-1003', 'R-1004');

-- The heals.  A status mismatch (the provider captured, our order still
-- awaits payment: its callback was lost) moves the order to paid through
-- the state guard; a double charge queues a refund of the second charge.
CREATE TABLE recon_refunds (external_id text PRIMARY KEY, order_ref text, amount bigint);
CREATE FUNCTION recon_refund(d jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.recon_refunds VALUES (d->>'external_id', d->>'order_ref', (d->>'amount')::bigint) $$;
CREATE FUNCTION recon_mark_paid(d jsonb) RETURNS void LANGUAGE sql
    AS $$ UPDATE public.recon_orders SET status = 'paid' WHERE order_ref = d->>'reference' $$;
CREATE FUNCTION recon_refund_duplicate(d jsonb) RETURNS void LANGUAGE sql
    AS $$ SELECT payments.enqueue_compensation('public.recon_refund(jsonb)',
              jsonb_build_object('external_id', d->>'external_id', 'order_ref', d->>'reference',
                                 'amount', d->'external_amount'),
              dedup_key => 'refund/' || (d->>'external_id')) $$;
-- Wait (at most 30 s) until the worker has run every heal of a run.
CREATE FUNCTION recon_wait(run bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..300 LOOP
        EXIT WHEN NOT EXISTS (SELECT FROM payments.compensations
                               WHERE finished_at IS NULL
                                 AND handler LIKE 'public.recon_%');
        PERFORM pg_sleep(0.1);
    END LOOP;
END
$$;

\echo 'Once: our side of the statements (any table or view), how its statuses map onto the provider''s,'
\echo 'a grace of one day for payments that the provider books after midnight, and what heals which class.'
SELECT payments.define_reconciliation('psp_daily', 'recon_orders', 'order_ref', 'amount', 'status', 'placed_at',
    currency_col => 'currency',
    status_map => '{"internal": {"paid": "succeeded", "awaiting_payment": "pending"},
                    "external": {"succeeded": "succeeded", "refunded": "refunded"}}',
    grace => '1 day') \g /dev/null
SELECT payments.reconciliation_policy('psp_daily', 'status_mismatch', 'recon_mark_paid(jsonb)') \g /dev/null
SELECT payments.reconciliation_policy('psp_daily', 'duplicate_external', 'recon_refund_duplicate(jsonb)') \g /dev/null

\echo
\echo 'Every morning: the provider''s file for yesterday, its header announcing 4 lines and 11199 EUR cents,'
\echo 'loaded as it is with COPY. A half-downloaded file would not close.'
SELECT payments.statement_begin('psp', '[2026-11-30, 2026-12-01)', 'settlement_2026-11-30.csv', 4, 11199) AS day1 \gset
SET payments.statement_id = :day1;
COPY payments.statement_lines (external_id, payment_ref, amount, currency, status, occurred_at) FROM stdin (FORMAT csv);
ch_01,R-1001,1999,EUR,succeeded,2026-11-30 09:12:31+00
ch_02,R-1002,4500,EUR,succeeded,2026-11-30 10:40:02+00
ch_03,R-1002,4500,EUR,succeeded,2026-11-30 10:40:09+00
ch_04,R-1003,200,EUR,succeeded,2026-11-30 14:05:44+00
\.
RESET payments.statement_id;
SELECT payments.statement_close(:day1) \g /dev/null
SELECT payments.reconcile('psp_daily', :day1) AS run1 \gset
\echo 'What the run found (R-1004, placed at 23:58, waits for the next file):'
SELECT class, currency, count, amount FROM payments.reconciliation_summary WHERE run_id = :run1 ORDER BY class;
SELECT recon_wait(:run1) \g /dev/null
\echo
\echo 'The worker ran the heals: R-1002 is paid (through the state guard), the second charge is refunded.'
SELECT order_ref, status FROM recon_orders ORDER BY order_ref;
SELECT external_id, order_ref, amount FROM recon_refunds;
\echo 'What is left for a person: the amount the provider captured short for R-1003.'
SELECT item_id, class, reference, internal_amount, external_amount, state FROM payments.reconciliation_open ORDER BY class;

\echo
\echo 'The same file again (a retried job): R-1002 matches now, the double charge is still there and'
\echo 'is not refunded twice: nothing new is queued.'
SELECT payments.reconcile('psp_daily', :day1) AS run1b \gset
SELECT heals_queued, differences FROM payments.reconciliation_runs WHERE id = :run1b;

\echo
\echo 'The next file holds R-1004, booked after midnight: it matches from the grace pool.'
SELECT payments.statement_begin('psp', '[2026-12-01, 2026-12-02)', 'settlement_2026-12-01.csv', 1, 3200) AS day2 \gset
SELECT payments.statement_add(:day2, '[{"external_id": "ch_05", "payment_ref": "R-1004", "amount": 3200,
    "currency": "EUR", "status": "succeeded", "occurred_at": "2026-12-01 00:00:41+00"}]') \g /dev/null
SELECT payments.statement_close(:day2) \g /dev/null
SELECT payments.reconcile('psp_daily', :day2) AS run2 \gset
SELECT class, reference, waited AS "waited in the pool" FROM payments.reconciliation_items WHERE run_id = :run2;

\echo
\echo 'Finance accepts R-1003''s short capture (the provider''s fee): it leaves the open list for good.'
SELECT item_id AS short_item FROM payments.reconciliation_open WHERE class = 'amount_mismatch' \gset
SELECT payments.accept_difference(:short_item, 'fee withheld by the provider') \g /dev/null
SELECT count(*) AS open_differences FROM payments.reconciliation_open;
