-- Inventory reservations with TTL: see src/reservation.c for the slot
-- design, the lock order and why it never oversells.

-- One row per SKU.  Written only by stock_set and stock_adjust, and locked
-- (FOR UPDATE) by every caller that has to wait for a SKU's slots, so that
-- at most one transaction at a time waits on them.  Reservations carry no
-- foreign key to it: the key-share locks of a foreign key check would turn
-- this row into the hot spot that the slots exist to avoid.
CREATE TABLE payments.stock (
    sku         text COLLATE "C" PRIMARY KEY,
    slots       integer     NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_sku_check CHECK (octet_length(sku) BETWEEN 1 AND 255),
    CONSTRAINT stock_slots_check CHECK (slots BETWEEN 1 AND 1024),
    -- every unit received, less those written off: on hand plus sold
    received    bigint      NOT NULL DEFAULT 0,
    -- units sold by confirmed holds that retention has since purged
    sold_purged bigint      NOT NULL DEFAULT 0
);

COMMENT ON TABLE payments.stock IS
    'One row per SKU: how many slot rows its unreserved stock is split across, and how many units it received in all';

-- A SKU's unreserved units, split across slots 0 .. slots - 1.  A reserve
-- takes units from one slot it can lock without waiting, so concurrent
-- buyers of one SKU update different rows.  The sum over a SKU's slots is
-- the stock that is neither held nor sold; nothing else is stored, so the
-- hot rows carry one counter each.
CREATE TABLE payments.stock_slots (
    sku         text COLLATE "C" NOT NULL,
    slot        integer NOT NULL,
    available   bigint  NOT NULL,
    PRIMARY KEY (sku, slot),
    CONSTRAINT stock_slots_available_check CHECK (available >= 0)
) WITH (fillfactor = 20);   -- few rows, updated all the time: room for HOT

COMMENT ON TABLE payments.stock_slots IS
    'Unreserved units of each SKU, split across slot rows so that concurrent reserves do not queue on one row';

CREATE TABLE payments.reservations (
    id          bigserial PRIMARY KEY,
    order_ref   text COLLATE "C" NOT NULL,
    sku         text COLLATE "C" NOT NULL,
    qty         bigint      NOT NULL,
    state       text        NOT NULL DEFAULT 'held',
    expires_at  timestamptz NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    resolved_at timestamptz
);
-- No CHECK constraints on the hot tables beyond the one that is the last
-- line of defence against overselling (stock_slots.available >= 0): the
-- executor re-reads every constraint's expression from its text form on
-- each INSERT and UPDATE, and every value written here is validated by the
-- C functions first (see src/reservation.c).

COMMENT ON TABLE payments.reservations IS
    'One row per hold: held until confirmed (sold), released or expired (stock given back)';

CREATE INDEX reservations_order_ref_idx ON payments.reservations (order_ref);
-- Live holds only: what a SKU holds, and which holds have run out.
CREATE INDEX reservations_held_sku_idx
    ON payments.reservations (sku, expires_at) INCLUDE (qty)
    WHERE state = 'held';
CREATE INDEX reservations_held_expires_at_idx
    ON payments.reservations (expires_at)
    WHERE state = 'held';

SELECT pg_catalog.pg_extension_config_dump('payments.stock', '');
SELECT pg_catalog.pg_extension_config_dump('payments.stock_slots', '');
SELECT pg_catalog.pg_extension_config_dump('payments.reservations', '');
SELECT pg_catalog.pg_extension_config_dump('payments.reservations_id_seq', '');

-- on_hand counts every unit not sold: unreserved units plus all holds.  A
-- hold past its TTL no longer holds stock, even before anything has expired
-- it, so it counts as available, not as held.
CREATE VIEW payments.stock_levels AS
SELECT s.sku,
       (a.units + coalesce(h.all_held, 0))::bigint AS on_hand,
       coalesce(h.live_held, 0)::bigint AS held,
       (a.units + coalesce(h.all_held, 0) - coalesce(h.live_held, 0))::bigint AS available
  FROM payments.stock s
 CROSS JOIN LATERAL (
       SELECT coalesce(sum(sl.available), 0) AS units
         FROM payments.stock_slots sl
        WHERE sl.sku = s.sku) a
 CROSS JOIN LATERAL (
       SELECT sum(r.qty) AS all_held,
              sum(r.qty) FILTER (WHERE r.expires_at > pg_catalog.clock_timestamp()) AS live_held
         FROM payments.reservations r
        WHERE r.sku = s.sku AND r.state = 'held') h;

COMMENT ON VIEW payments.stock_levels IS
    'Per SKU: on_hand (not sold), held (by live holds) and available (on_hand - held)';

CREATE FUNCTION payments.stock_set(sku text, on_hand bigint, slots integer DEFAULT NULL)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_stock_set'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.stock_set(text, bigint, integer) IS
    'Create a SKU or set its on-hand stock (held units included); slots splits it for concurrent reserves';

CREATE FUNCTION payments.stock_adjust(sku text, delta bigint)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_stock_adjust'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.stock_adjust(text, bigint) IS
    'Receive (delta > 0) or write off (delta < 0) stock; returns the new on-hand quantity';

-- reserve (both forms) and confirm_reservation run for every sale, so they
-- are not SECURITY DEFINER: PostgreSQL 15 scans every setting on leaving a
-- function with a SET clause, which a hot SKU feels (doc/benchmarks.md).
-- Their hot path
-- runs no SQL: it writes the rows in C, with no privilege check (EXECUTE
-- on the function is the check, as for every other function here), as the
-- caller, so a trigger a DBA adds to these tables runs with the caller's
-- rights, as it would for the caller's own INSERT.  The slow path of a
-- reserve runs SQL, and runs it as the function's owner with search_path
-- pinned, exactly as SECURITY DEFINER SET search_path = pg_catalog, pg_temp
-- would (src/reservation.c); such a trigger then runs as the owner, as it
-- does for the writes of every other function here.  Why not SECURITY
-- DEFINER without the SET clause: the hot path would then fire those
-- triggers as the owner under the caller's search_path.
CREATE FUNCTION payments.reserve(order_ref text, sku text, qty bigint,
        ttl interval DEFAULT '15 minutes')
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_reserve'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.reserve(text, text, bigint, interval) IS
    'Hold qty units of a SKU for an order until confirmed, released or the TTL runs out; returns the reservation id';

CREATE FUNCTION payments.reserve(order_ref text, items jsonb,
        ttl interval DEFAULT '15 minutes')
    RETURNS bigint[]
    AS 'MODULE_PATHNAME', 'payments_reserve_items'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.reserve(text, jsonb, interval) IS
    'Hold every item of [{"sku": ..., "qty": ...}, ...] or none; returns the reservation ids in item order';

CREATE FUNCTION payments.confirm_reservation(id bigint)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_confirm_reservation'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.confirm_reservation(bigint) IS
    'Turn a hold into a sale; false if it was already confirmed';

CREATE FUNCTION payments.confirm_order(order_ref text)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_confirm_order'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.confirm_order(text) IS
    'Turn every hold of an order into a sale; returns how many were confirmed now';

CREATE FUNCTION payments.release_reservation(id bigint)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_release_reservation'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.release_reservation(bigint) IS
    'Give a hold''s stock back; false if it was already released or expired';

CREATE FUNCTION payments.release_order(order_ref text)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_release_order'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.release_order(text) IS
    'Give back the stock of every hold of an order; returns how many were released now';

CREATE FUNCTION payments.expire_reservations(max_rows integer DEFAULT 10000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_expire_reservations'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.expire_reservations(integer) IS
    'Give back the stock of up to max_rows holds whose TTL has run out; returns how many';
