-- What the update from 0.2.0 changes in objects 0.2.0 created (the new
-- objects come from their fragments).  Every name is qualified with
-- @extschema@.

-- define_state_machine judges its caller (current_user), so it runs as the
-- caller and takes the extension owner's rights only for its own statement.
ALTER FUNCTION @extschema@.define_state_machine(text, jsonb, text[]) SECURITY INVOKER;

-- Every unit a SKU received, less those written off (on hand plus sold),
-- which payments.check() balances against the slots, the holds and the
-- sales.  Until now it was never recorded: it starts as what the tables
-- hold.  See src/sql/20_reservation.sql.
-- (The default comes after the backfill, so that the column gets no
-- "missing value" a fresh install does not have.)
ALTER TABLE @extschema@.stock ADD COLUMN received bigint;
UPDATE @extschema@.stock s
   SET received = coalesce((SELECT sum(sl.available) FROM @extschema@.stock_slots sl
                             WHERE sl.sku = s.sku), 0)
                + coalesce((SELECT sum(r.qty) FROM @extschema@.reservations r
                             WHERE r.sku = s.sku AND r.state IN ('held', 'confirmed')), 0);
ALTER TABLE @extschema@.stock ALTER COLUMN received SET DEFAULT 0,
    ALTER COLUMN received SET NOT NULL;
-- The units of confirmed holds that retention purged: still sold.
ALTER TABLE @extschema@.stock ADD COLUMN sold_purged bigint;
UPDATE @extschema@.stock SET sold_purged = 0;
ALTER TABLE @extschema@.stock ALTER COLUMN sold_purged SET DEFAULT 0,
    ALTER COLUMN sold_purged SET NOT NULL;
COMMENT ON TABLE @extschema@.stock IS
    'One row per SKU: how many slot rows its unreserved stock is split across, and how many units it received in all';

-- Chains of compensations (a saga's undo runs in reverse order): an item
-- may wait for another to settle.  See src/sql/50_compensation.sql.
ALTER TABLE @extschema@.compensations ADD COLUMN after bigint;
CREATE INDEX compensations_after_idx
    ON @extschema@.compensations (after) WHERE after IS NOT NULL;

-- The flow of an item keeps its chain on one shard once distributed: no
-- item of 0.2.0 comes after another, so it is its dedup key or its id.
ALTER TABLE @extschema@.compensations ADD COLUMN flow text COLLATE "C";
UPDATE @extschema@.compensations SET flow = coalesce(dedup_key, id::text);
ALTER TABLE @extschema@.compensations ALTER COLUMN flow SET NOT NULL;
ALTER TABLE @extschema@.compensation_attempts ADD COLUMN flow text COLLATE "C";
UPDATE @extschema@.compensation_attempts a
   SET flow = coalesce((SELECT c.flow FROM @extschema@.compensations c
                         WHERE c.id = a.compensation_id), a.compensation_id::text);
ALTER TABLE @extschema@.compensation_attempts ALTER COLUMN flow SET NOT NULL;

CREATE FUNCTION @extschema@.compensation_status(id bigint)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_compensation_status'
    LANGUAGE C STABLE STRICT
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.compensation_status(bigint) IS
    'The status of a compensation, NULL if there is none or the caller may not see it';

CREATE OR REPLACE VIEW @extschema@.compensation_stats AS
    SELECT handler,
           count(*) FILTER (WHERE status = 'pending')   AS pending,
           count(*) FILTER (WHERE status = 'running')   AS running,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'dead')      AS dead,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           pg_catalog.now() - min(created_at) FILTER (WHERE status = 'pending')
                                                        AS oldest_pending_age,
           count(*) FILTER (WHERE status = 'waiting')   AS waiting
      FROM @extschema@.compensations
     GROUP BY handler;

-- enqueue_compensation gains after; the old signature goes, or a call
-- that names only the first arguments would match both.
DROP FUNCTION @extschema@.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz);
CREATE FUNCTION @extschema@.enqueue_compensation(
        handler regprocedure, payload jsonb, dedup_key text DEFAULT NULL,
        max_attempts integer DEFAULT NULL, run_at timestamptz DEFAULT now(),
        after bigint DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_enqueue_compensation'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz, bigint) IS
    'Queue handler(payload) to run as the calling role, retried until it succeeds, and only once the item after names has succeeded or been cancelled; returns its id';

-- worker_status() gains the pool's columns (next_run, waiting_since,
-- last_wait, max_wait, unserved_reason): src/sql/40_worker.sql, which the
-- update runs after this file, makes it and its view again.
DROP VIEW @extschema@.worker_activity;
DROP FUNCTION @extschema@.worker_status();
