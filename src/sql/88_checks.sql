-- Consistency checks: the extension's own invariants, read-only, in one
-- call an operator or a monitoring job runs (see doc/drills.md).  Each row
-- is one violation: its check, a severity ("error": data is wrong and
-- must be repaired; "warning": something is stuck and needs a person),
-- the object it is about, and a detail that says what to do.
--
-- It reads the application's guarded tables as the extension's owner
-- (SECURITY DEFINER), so it is granted to payments_operator only.  Its
-- reads take no lock a writer waits for; a long one is bounded by the
-- calling statement's statement_timeout.

CREATE FUNCTION payments.check()
    RETURNS TABLE (check_name text, severity text, object text, detail text)
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
AS $check$
DECLARE
    g record;
    worker_running boolean;
BEGIN
    -- What a SKU received equals what its slots keep, what is held and
    -- what was sold; and its slot rows are 0 .. slots - 1.
    RETURN QUERY
    SELECT 'stock_ledger', 'error', 'stock ' || s.sku,
           format('The SKU received %s units, but %s available, %s held and %s sold make %s. Find the write that bypassed the extension, then correct the stock with payments.stock_adjust.',
                  s.received, coalesce(a.units, 0), coalesce(h.held, 0),
                  coalesce(h.sold, 0) + s.sold_purged,
                  coalesce(a.units, 0) + coalesce(h.held, 0) + coalesce(h.sold, 0) + s.sold_purged)
      FROM payments.stock s
      LEFT JOIN (SELECT sl.sku, sum(sl.available) AS units
                   FROM payments.stock_slots sl GROUP BY sl.sku) a ON a.sku = s.sku
      LEFT JOIN (SELECT r.sku, sum(r.qty) FILTER (WHERE r.state = 'held') AS held,
                        sum(r.qty) FILTER (WHERE r.state = 'confirmed') AS sold
                   FROM payments.reservations r
                  WHERE r.state IN ('held', 'confirmed') GROUP BY r.sku) h ON h.sku = s.sku
     WHERE s.received <> coalesce(a.units, 0) + coalesce(h.held, 0) + coalesce(h.sold, 0)
                         + s.sold_purged;

    RETURN QUERY
    SELECT 'stock_slots', 'error', 'stock ' || s.sku,
           format('The SKU has %s slots, but its slot rows are %s (numbered %s to %s). Set its stock again with payments.stock_set.',
                  s.slots, coalesce(a.n, 0), coalesce(a.lo, 0), coalesce(a.hi, -1))
      FROM payments.stock s
      LEFT JOIN (SELECT sl.sku, count(*) AS n, min(sl.slot) AS lo, max(sl.slot) AS hi
                   FROM payments.stock_slots sl GROUP BY sl.sku) a ON a.sku = s.sku
     WHERE coalesce(a.n, 0) <> s.slots OR coalesce(a.lo, 0) <> 0
        OR coalesce(a.hi, -1) <> s.slots - 1;

    -- A hold past its TTL still counted as held, for longer than the
    -- worker needs to expire it, while a worker serves this database.
    SELECT EXISTS (SELECT FROM pg_stat_activity
                    WHERE backend_type = 'payments worker' AND datname = current_database())
      INTO worker_running;
    IF worker_running THEN
        RETURN QUERY
        SELECT 'lapsed_hold', 'warning', 'reservation ' || r.id,
               format('The hold of %s units of SKU %s for order %s lapsed at %s and is still held although a worker runs. Look at payments.worker_status() and the server log.',
                      r.qty, r.sku, r.order_ref, r.expires_at)
          FROM payments.reservations r
         WHERE r.state = 'held' AND r.expires_at < now() - interval '5 minutes';
    END IF;

    -- A compensation claimed by an external executor whose lease ran out.
    RETURN QUERY
    SELECT 'compensation_lease', 'warning', 'compensation ' || c.id,
           format('Handler %s was claimed by an executor whose lease ran out at %s. The executor may have died: it is claimed again when the lease is reclaimed, or fail it with payments.fail_compensation.',
                  c.handler, c.lease_expires_at)
      FROM payments.compensations c
     WHERE c.status = 'running' AND c.lease_expires_at < now();

    -- A flow that holds an idempotency key past its lease.
    RETURN QUERY
    SELECT 'idempotency_lease', 'warning', 'idempotency key ' || k.scope || '/' || k.key,
           format('The flow that started this key at %s has not renewed its lease, which ran out at %s. Its next retry resumes it as "recovering"; if no retry comes, abandon it with payments.idempotency_abandon.',
                  k.created_at, k.lease_expires_at)
      FROM payments.idempotency_keys k
     WHERE k.state = 'started' AND k.lease_expires_at < now();

    -- For every guarded column: a row whose state is not the last move the
    -- guard recorded for it (a write with the guard disabled, or by hand).
    FOR g IN
        SELECT t.tgrelid::regclass AS tbl, a.attname AS col,
               a.atttypid = 'pg_catalog.bpchar'::regtype AS padded,
               c.relrowsecurity AS row_security,
               (SELECT string_agg(format('t.%I', pa.attname), ', ' ORDER BY k.n)
                  FROM pg_index i
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
                  JOIN pg_attribute pa ON pa.attrelid = i.indrelid AND pa.attnum = k.attnum
                 WHERE i.indrelid = t.tgrelid AND i.indisprimary) AS pk,
               (SELECT i.indnatts FROM pg_index i
                 WHERE i.indrelid = t.tgrelid AND i.indisprimary) AS npk
          FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_attribute a ON a.attrelid = t.tgrelid AND a.attnum = t.tgattr[0]
         WHERE t.tgfoid = 'payments.state_guard()'::regprocedure AND cardinality(t.tgattr::int2[]) = 1
    LOOP
        CONTINUE WHEN g.pk IS NULL;
        -- This function runs as the extension's owner: a table's row
        -- security policies would run their expressions with its rights,
        -- so such a table is not read, and values are turned into text by
        -- their types' output functions (format), never by a cast, which
        -- a role may define with a function of its own.
        IF g.row_security THEN
            RETURN QUERY SELECT 'state_history', 'warning', g.tbl::text,
                format('The table has row security, so its %s column is not checked against its history. Compare them as a role the policies allow.', g.col);
            CONTINUE;
        END IF;
        RETURN QUERY EXECUTE format(
            'SELECT %L::text, %L::text, %L || '' '' || k.key,'
            '       format(''Its %s is %%L, but the last move the guard recorded is to %%L (%%s). Find the write that bypassed the guard; set the row back, or record why.'','
            '              k.state, h.to_state, h.changed_at)'
            '  FROM (SELECT %s AS key, %s AS state FROM %s t) k'
            '  JOIN (SELECT DISTINCT ON (h.row_key) h.row_key, h.to_state, h.changed_at'
            '          FROM payments.state_history h WHERE h.tbl = %L::regclass AND h.col = %L'
            '         ORDER BY h.row_key, h.id DESC) h ON h.row_key = k.key'
            ' WHERE k.state IS DISTINCT FROM h.to_state',
            'state_history', 'error', g.tbl::text, g.col,
            CASE WHEN g.npk = 1 THEN 'pg_catalog.format(''%s'', ' || g.pk || ')'
                 ELSE 'ROW(' || g.pk || ')::text' END,
            CASE WHEN g.padded THEN format('pg_catalog.rtrim(pg_catalog.format(''%%s'', t.%I))', g.col)
                 ELSE format('pg_catalog.format(''%%s'', t.%I)', g.col) END,
            g.tbl, g.tbl::oid, g.col);
    END LOOP;

    -- An expected callback past its deadline and not met, with no query
    -- chasing it: its query could not be queued or failed for good, or the
    -- worker has not queued it a minute after the deadline.
    RETURN QUERY
    SELECT 'callback_overdue', 'warning', 'expected callback ' || e.id,
           format('Provider %s never called back about payment %s by %s, and no query chases it (%s). Ask the provider, then record the answer with payments.receive_callback or payments.record_query_result.',
                  e.provider, e.payment_ref, e.deadline,
                  CASE WHEN e.query_error IS NOT NULL THEN 'its query failed: ' || e.query_error
                       WHEN e.compensation_id IS NULL THEN 'its query was never queued'
                       ELSE 'its query item is ' || c.status || ' and met nothing' END)
      FROM payments.expected_callbacks e
      LEFT JOIN payments.compensations c ON c.id = e.compensation_id
     WHERE e.met_at IS NULL AND e.deadline < now()
       AND (e.query_error IS NOT NULL
            OR (e.compensation_id IS NULL AND e.deadline < now() - interval '1 minute')
            OR c.status IN ('dead', 'cancelled', 'succeeded'));

    -- A TCC branch tried but neither confirmed nor cancelled for too long.
    RETURN QUERY
    SELECT 'tcc_stuck', 'warning', 'tcc branch ' || f.gid || '/' || f.branch_id,
           format('Role %s tried this branch at %s and its coordinator has neither confirmed nor cancelled it since. Ask the coordinator to finish the transaction.',
                  f.owner, f.updated_at)
      FROM payments.tcc_fence f
     WHERE f.state = 'tried'
       AND f.updated_at < now() - coalesce(current_setting('payments.tcc_stuck_after', true), '10min')::interval;

    -- A saga past its timeout that the worker has not aborted, or whose
    -- undo halted at a dead compensation.
    RETURN QUERY
    SELECT 'saga_stuck', 'warning', 'saga ' || s.saga_id,
           CASE WHEN s.status = 'running'
                THEN format('The saga of role %s passed its timeout at %s and is not aborted yet%s. Look at payments.worker_status(), or abort it with payments.saga_abort.',
                            s.owner, s.timeout_at,
                            coalesce(': ' || s.abort_error, ''))
                ELSE format('The undo of the saga of role %s halted at a dead compensation. Fix its handler and resume the chain with payments.retry_compensation.',
                            s.owner)
           END
      FROM payments.saga_state s
     WHERE (s.status = 'running' AND s.timeout_at < now())
        OR (s.status = 'aborted' AND EXISTS (
              SELECT FROM payments.saga_steps st
               WHERE st.owner = s.owner AND st.saga_id = s.saga_id
                 AND payments.compensation_status(st.compensation_id) = 'dead'));
END
$check$;

COMMENT ON FUNCTION payments.check() IS
    'The extension''s invariants: one row per violation, with its severity and what to do';

-- User checks: a query of a role's that returns the objects violating a
-- business invariant, run by the worker every so often as that role (see
-- src/check_run.c), with an optional heal queued once per violating
-- object.  A check belongs to the role that defined it (owner is part of
-- the key): roles never see or steer each other's checks.
CREATE TABLE payments.checks (
    owner           regrole     NOT NULL,
    name            text COLLATE "C" NOT NULL,
    query           text        NOT NULL,
    heal            text COLLATE "C",       -- a compensation handler, by signature
    heal_owner      regrole,
    every           interval    NOT NULL,
    next_run_at     timestamptz NOT NULL,
    last_run_at     timestamptz,
    last_error      text,                   -- NULL: the last run succeeded
    last_violations integer,
    defined_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, name)
);

COMMENT ON TABLE payments.checks IS
    'User checks: a query returning (object, detail) rows that violate an invariant, run by the worker every interval as its owner';

CREATE INDEX checks_next_run_at_idx ON payments.checks (next_run_at);

SELECT pg_catalog.pg_extension_config_dump('payments.checks', '');

-- One row per violation seen: open (cleared_at NULL) while the check's
-- runs keep finding its object, with the heal queued for it; severity
-- rises from warning to error when the violation outlives its heal.
CREATE TABLE payments.check_results (
    id              bigserial   PRIMARY KEY,
    owner           regrole     NOT NULL,
    check_name      text COLLATE "C" NOT NULL,
    object          text COLLATE "C" NOT NULL,
    detail          text,
    severity        text        NOT NULL DEFAULT 'warning'
        CHECK (severity IN ('warning', 'error')),
    first_seen      timestamptz NOT NULL,
    last_seen       timestamptz NOT NULL,
    cleared_at      timestamptz,
    heal_id         bigint,                 -- the compensation queued to heal it
    escalated_at    timestamptz
);

COMMENT ON TABLE payments.check_results IS
    'Violations found by user checks: first and last seen, cleared, the heal queued, escalated when a violation outlives its heal';

CREATE UNIQUE INDEX check_results_open_idx
    ON payments.check_results (owner, check_name, object) WHERE cleared_at IS NULL;

SELECT pg_catalog.pg_extension_config_dump('payments.check_results', '');
SELECT pg_catalog.pg_extension_config_dump('payments.check_results_id_seq', '');

CREATE VIEW payments.check_status WITH (security_barrier) AS
    SELECT c.owner, c.name, c.every, c.heal, c.last_run_at, c.next_run_at,
           c.last_error,
           coalesce(r.open, 0) AS open_violations,
           coalesce(r.escalated, 0) AS escalated_violations
      FROM payments.checks c
      LEFT JOIN LATERAL (
           SELECT count(*) AS open,
                  count(*) FILTER (WHERE x.severity = 'error') AS escalated
             FROM payments.check_results x
            WHERE x.owner = c.owner AND x.check_name = c.name AND x.cleared_at IS NULL) r ON true
     WHERE pg_catalog.pg_has_role(c.owner, 'USAGE')
        OR pg_catalog.pg_has_role('payments_operator', 'USAGE');

COMMENT ON VIEW payments.check_status IS
    'Every user check of the roles whose privileges the caller has: last run, its error, open and escalated violations';

CREATE FUNCTION payments.define_check(name text, query text, heal regprocedure DEFAULT NULL,
                                      every interval DEFAULT '5 minutes')
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_define_check'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.define_check(text, text, regprocedure, interval) IS
    'Define or replace a check of the calling role: query returns (object, detail) rows that violate an invariant; heal, if given, is queued once per object';

CREATE FUNCTION payments.drop_check(name text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_drop_check'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.drop_check(text) IS
    'Drop a check of the calling role and its results; false if there was none';

-- The compensation handler that runs one check: queued by the worker as
-- the check's owner, so that the queue's rights, timeouts and crash
-- accounting apply to a check as to any handler.
CREATE FUNCTION payments.run_check(p jsonb)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_run_check'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.run_check(jsonb) IS
    'Run the check {"check": name} of the calling role now and record what it finds';

CREATE FUNCTION payments.queue_due_checks(max_checks integer DEFAULT 100)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_queue_due_checks'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.queue_due_checks(integer) IS
    'The worker''s task: queue a run of up to max_checks due checks; returns how many';
