-- Run once by run.sh in the workload's fresh database.
--
-- Our side: an application's orders table, one row per payment, amounts in
-- minor units.  The baseline's table of differences has the columns, types
-- and indexes of payments.reconciliation_items, so both sides write the
-- same rows into the same shape of table.
CREATE EXTENSION payments;
CREATE SCHEMA bench;

CREATE TABLE bench.orders (
    ref      text PRIMARY KEY,
    amount   bigint NOT NULL,
    status   text NOT NULL,
    at       timestamptz NOT NULL,
    currency char(3) NOT NULL
);
CREATE INDEX orders_at_idx ON bench.orders (at);

CREATE TABLE bench.differences (
    id                bigserial PRIMARY KEY,
    run_id            bigint NOT NULL,
    reconciliation_id bigint NOT NULL,
    statement_id      bigint NOT NULL,
    class             text COLLATE "C" NOT NULL,
    reference         text COLLATE "C" NOT NULL,
    payment_ref       text,
    external_id       text,
    amount            numeric,
    currency          text,
    internal_amount   numeric,
    external_amount   bigint,
    internal_currency text,
    external_currency char(3),
    internal_status   text,
    external_status   text,
    internal_at       timestamptz,
    occurred_at       timestamptz,
    waiting           boolean NOT NULL DEFAULT false,
    waited            boolean NOT NULL DEFAULT false
);
CREATE INDEX differences_run_id_idx ON bench.differences (run_id);

-- grace '0': a row of ours that the statement lacks is declared
-- missing_external at once, as the baseline does; with the default grace
-- the same items would be written, marked waiting.  No policy: healing is
-- not part of the comparison.
SELECT payments.define_reconciliation('bench', 'bench.orders', 'ref', 'amount', 'status', 'at',
    currency_col => 'currency',
    status_map => '{"internal": {"paid": "succeeded", "pending": "pending", "refunded": "refunded"},
                    "external": {"SUCCESS": "succeeded", "NOTPAY": "pending", "REFUND": "refunded"}}',
    grace => '0') \g /dev/null

-- No autovacuum in the middle of the other side's run: load.sql analyzes
-- what it loads, and every run starts from emptied tables.
ALTER TABLE bench.orders SET (autovacuum_enabled = off);
ALTER TABLE bench.differences SET (autovacuum_enabled = off);
ALTER TABLE payments.statement_lines SET (autovacuum_enabled = off);
ALTER TABLE payments.reconciliation_runs SET (autovacuum_enabled = off);
ALTER TABLE payments.reconciliation_items SET (autovacuum_enabled = off);
ALTER TABLE payments.reconciliation_pool SET (autovacuum_enabled = off);

-- The i-th of n payments of the day 2026-03-01 (UTC), spread evenly over
-- it: both our rows and the statement's lines are made from it.
CREATE FUNCTION bench.payment(i bigint, n bigint, OUT ref text, OUT amount bigint,
                              OUT at timestamptz)
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'o' || i, 100 + (i * 7919) % 100000,
                 timestamptz '2026-03-01 00:00:00+00' + (i - 1) * (86400.0 / n) * interval '1 second' $$;
