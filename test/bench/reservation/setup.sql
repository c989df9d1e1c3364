-- Reservations against the plain-SQL equivalent an application would write
-- itself: one stock row per SKU, decremented with a single-row UPDATE, and
-- a holds table with the same columns and indexes as payments.reservations.
CREATE EXTENSION payments;

-- One hot SKU split across 64 slots (as many as the most clients of a
-- case), and 1,000 ordinary SKUs of one slot each.  Enough stock that no
-- run sells out.
SELECT payments.stock_set('hot', 1000000000000, slots => 64);
SELECT payments.stock_set('sku-' || i, 1000000000) FROM generate_series(1, 1000) AS i;

CREATE TABLE baseline_stock (
    sku text COLLATE "C" PRIMARY KEY,
    available bigint NOT NULL CHECK (available >= 0)
);
INSERT INTO baseline_stock VALUES ('hot', 1000000000000);
INSERT INTO baseline_stock SELECT 'sku-' || i, 1000000000 FROM generate_series(1, 1000) AS i;

CREATE TABLE baseline_holds (
    id bigserial PRIMARY KEY,
    order_ref text COLLATE "C" NOT NULL,
    sku text COLLATE "C" NOT NULL,
    qty bigint NOT NULL,
    state text NOT NULL DEFAULT 'held',
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
CREATE INDEX ON baseline_holds (order_ref);
CREATE INDEX ON baseline_holds (sku, expires_at) INCLUDE (qty) WHERE state = 'held';
CREATE INDEX ON baseline_holds (expires_at) WHERE state = 'held';
VACUUM ANALYZE;
