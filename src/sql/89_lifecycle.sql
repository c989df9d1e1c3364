-- Lifecycle: how long rows are kept once their capability is done with
-- them, and what an operator graphs.  See src/retention.c and the README,
-- "Retention" and "Monitoring".

-- The indexes each purge reads in order.  Each holds only rows a purge may
-- consider, so the live rows of the hot paths never enter it; and none
-- mentions a column a hot path's update leaves alone (compensations'
-- status, in particular, so that claiming an item stays a HOT update).
CREATE INDEX reservations_resolved_idx
    ON @extschema@.reservations (resolved_at) WHERE state <> 'held';
CREATE INDEX compensations_finished_idx
    ON @extschema@.compensations (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX saga_state_finished_idx
    ON @extschema@.saga_state (finished_at) WHERE status <> 'running';
CREATE INDEX check_results_cleared_idx
    ON @extschema@.check_results (cleared_at) WHERE cleared_at IS NOT NULL;
CREATE INDEX outbox_settled_idx
    ON @extschema@.outbox (settled_at) WHERE settled_at IS NOT NULL;
CREATE INDEX inbox_expires_idx
    ON @extschema@.inbox (expires_at);

CREATE FUNCTION @extschema@.purge_retention(max_rows integer DEFAULT 1000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_purge_retention'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.purge_retention(integer) IS
    'The worker''s task: delete up to max_rows rows past their retention from each table; returns the largest batch';

CREATE FUNCTION @extschema@.purge(max_rows integer DEFAULT 10000,
        OUT table_name text, OUT purged bigint, OUT retention interval)
    RETURNS SETOF record
    AS 'MODULE_PATHNAME', 'payments_purge'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.purge(integer) IS
    'Delete every row past its retention now, in batches of max_rows, in the caller''s transaction; one row per table with how many went';

-- The retention of a table as an interval (0 when kept for ever), read
-- from its setting, for the view below.
CREATE FUNCTION @extschema@.retention_of(setting text)
    RETURNS interval
    LANGUAGE sql STABLE
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT pg_catalog.make_interval(secs =>
              (SELECT s.setting::double precision FROM pg_catalog.pg_settings s
                WHERE s.name = $1)) $$;

COMMENT ON FUNCTION @extschema@.retention_of(text) IS
    'The value of a payments.*_retention setting as an interval';

-- One row per capability: what an operator graphs.  rows counts every row
-- the capability keeps; active those in progress; failed those that need
-- someone (a lapsed lease or hold, a dead compensation, an open violation);
-- oldest_active_seconds the age of the oldest active one; purge_backlog the
-- rows past their retention that the worker has not purged yet.  The
-- counts read the tables, whose size retention bounds: sample the view
-- every minute, not every second.
CREATE VIEW @extschema@.stats AS
    SELECT 'idempotency'::text AS capability,
           count(*) AS rows,
           count(*) FILTER (WHERE k.state = 'started') AS active,
           count(*) FILTER (WHERE k.state = 'started'
                              AND k.lease_expires_at < pg_catalog.now()) AS failed,
           extract(epoch FROM pg_catalog.now()
                   - min(k.created_at) FILTER (WHERE k.state = 'started'))::double precision
               AS oldest_active_seconds,
           count(*) FILTER (WHERE k.expires_at < pg_catalog.now()) AS purge_backlog,
           NULL::double precision AS lag_seconds
      FROM @extschema@.idempotency_keys k
    UNION ALL
    SELECT 'reservations', count(*),
           count(*) FILTER (WHERE r.state = 'held'),
           count(*) FILTER (WHERE r.state = 'held' AND r.expires_at < pg_catalog.now()),
           extract(epoch FROM pg_catalog.now()
                   - min(r.created_at) FILTER (WHERE r.state = 'held'))::double precision,
           count(*) FILTER (WHERE r.state <> 'held'
                              AND (SELECT @extschema@.retention_of('payments.reservation_retention')) > '0'
                              AND r.resolved_at < pg_catalog.now()
                                  - (SELECT @extschema@.retention_of('payments.reservation_retention'))),
           extract(epoch FROM pg_catalog.now()
                   - min(r.expires_at) FILTER (WHERE r.state = 'held'
                                                 AND r.expires_at < pg_catalog.now()))::double precision
      FROM @extschema@.reservations r
    UNION ALL
    SELECT 'state_guard', count(*), NULL, NULL, NULL,
           count(*) FILTER (WHERE (SELECT @extschema@.retention_of('payments.history_retention')) > '0'
                              AND h.changed_at < pg_catalog.now()
                                  - (SELECT @extschema@.retention_of('payments.history_retention'))),
           NULL
      FROM @extschema@.state_history h
    UNION ALL
    SELECT 'compensations', count(*),
           count(*) FILTER (WHERE c.finished_at IS NULL),
           count(*) FILTER (WHERE c.status = 'dead'),
           extract(epoch FROM pg_catalog.now()
                   - min(c.created_at) FILTER (WHERE c.finished_at IS NULL))::double precision,
           count(*) FILTER (WHERE c.status IN ('succeeded', 'cancelled')
                              AND (SELECT @extschema@.retention_of('payments.compensation_retention')) > '0'
                              AND c.finished_at < pg_catalog.now()
                                  - (SELECT @extschema@.retention_of('payments.compensation_retention'))),
           extract(epoch FROM pg_catalog.now()
                   - min(c.next_attempt_at) FILTER (WHERE c.status = 'pending'
                                                      AND c.next_attempt_at < pg_catalog.now()))::double precision
      FROM @extschema@.compensations c
    UNION ALL
    SELECT 'callbacks', count(*),
           count(*) FILTER (WHERE x.met_at IS NULL),
           count(*) FILTER (WHERE x.met_at IS NULL AND x.deadline < pg_catalog.now()),
           extract(epoch FROM pg_catalog.now()
                   - min(x.deadline) FILTER (WHERE x.met_at IS NULL))::double precision,
           NULL, NULL
      FROM @extschema@.expected_callbacks x
    UNION ALL
    SELECT 'tcc', count(*),
           count(*) FILTER (WHERE f.state = 'tried'),
           NULL,
           extract(epoch FROM pg_catalog.now()
                   - min(f.created_at) FILTER (WHERE f.state = 'tried'))::double precision,
           NULL, NULL
      FROM @extschema@.tcc_fence f
    UNION ALL
    SELECT 'sagas', count(*),
           count(*) FILTER (WHERE g.status = 'running'),
           count(*) FILTER (WHERE g.status = 'running' AND g.timeout_at < pg_catalog.now()),
           extract(epoch FROM pg_catalog.now()
                   - min(g.created_at) FILTER (WHERE g.status = 'running'))::double precision,
           count(*) FILTER (WHERE g.status <> 'running'
                              AND (SELECT @extschema@.retention_of('payments.saga_retention')) > '0'
                              AND g.finished_at < pg_catalog.now()
                                  - (SELECT @extschema@.retention_of('payments.saga_retention'))),
           NULL
      FROM @extschema@.saga_state g
    UNION ALL
    SELECT 'checks', count(*),
           count(*) FILTER (WHERE v.cleared_at IS NULL),
           count(*) FILTER (WHERE v.cleared_at IS NULL AND v.severity = 'error'),
           extract(epoch FROM pg_catalog.now()
                   - min(v.first_seen) FILTER (WHERE v.cleared_at IS NULL))::double precision,
           count(*) FILTER (WHERE v.cleared_at IS NOT NULL
                              AND (SELECT @extschema@.retention_of('payments.check_retention')) > '0'
                              AND v.cleared_at < pg_catalog.now()
                                  - (SELECT @extschema@.retention_of('payments.check_retention'))),
           NULL
      FROM @extschema@.check_results v
    UNION ALL
    SELECT 'outbox', count(*),
           count(*) FILTER (WHERE o.settled_at IS NULL AND o.status <> 'dead'),
           count(*) FILTER (WHERE o.status = 'dead'),
           extract(epoch FROM pg_catalog.now()
                   - min(o.sent_at) FILTER (WHERE o.settled_at IS NULL))::double precision,
           count(*) FILTER (WHERE o.settled_at IS NOT NULL
                              AND (SELECT @extschema@.retention_of('payments.outbox_retention')) > '0'
                              AND o.settled_at < pg_catalog.now()
                                  - (SELECT @extschema@.retention_of('payments.outbox_retention'))),
           extract(epoch FROM pg_catalog.now()
                   - min(o.next_attempt_at) FILTER (WHERE o.status = 'pending'
                                                      AND o.next_attempt_at < pg_catalog.now()))::double precision
      FROM @extschema@.outbox o
    UNION ALL
    SELECT 'inbox', count(*), NULL, NULL, NULL,
           count(*) FILTER (WHERE i.expires_at < pg_catalog.now()),
           NULL
      FROM @extschema@.inbox i
    UNION ALL
    SELECT 'worker', w.items_done,
           CASE WHEN w.pid IS NULL THEN 0 ELSE 1 END,
           w.items_failed,
           extract(epoch FROM pg_catalog.now() - w.waiting_since)::double precision,
           NULL,
           extract(epoch FROM coalesce(pg_catalog.now() - w.waiting_since,
                                       w.last_wait))::double precision
      FROM @extschema@.worker_status() w;

COMMENT ON VIEW @extschema@.stats IS
    'One row per capability: rows kept, active, failed (needing someone), age of the oldest active, purge backlog, lag';

-- Autovacuum on the tables that take a row per call: the default scale
-- factor (20%) lets ten million rows gather two million dead ones before a
-- vacuum, and an insert-only history table never gets its visibility map
-- set.  An operator's own ALTER TABLE ... SET overrides these.
ALTER TABLE @extschema@.idempotency_keys SET (autovacuum_vacuum_scale_factor = 0.01,
                                               autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE @extschema@.reservations SET (autovacuum_vacuum_scale_factor = 0.01,
                                           autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE @extschema@.compensations SET (autovacuum_vacuum_scale_factor = 0.01,
                                            autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE @extschema@.state_history SET (autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE @extschema@.outbox SET (autovacuum_vacuum_scale_factor = 0.01,
                                     autovacuum_vacuum_insert_scale_factor = 0.01);
ALTER TABLE @extschema@.inbox SET (autovacuum_vacuum_scale_factor = 0.01,
                                    autovacuum_vacuum_insert_scale_factor = 0.01);
