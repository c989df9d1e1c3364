-- Sagas: each forward step records, in its own transaction, how to undo
-- it; an abort queues those undos as one chain of compensations, run in
-- reverse order, each only after the one of the later step succeeded.  See
-- src/saga.c for the rules and doc/tcc.md.
--
-- A saga belongs to the role that began it (owner is part of the key), as
-- a TCC branch does.

CREATE TABLE payments.saga_state (
    owner        regrole     NOT NULL,
    saga_id      text COLLATE "C" NOT NULL,
    status       text        NOT NULL
        CHECK (status IN ('running', 'completed', 'aborted')),
    steps        integer     NOT NULL DEFAULT 0,   -- steps recorded so far
    timeout_at   timestamptz,                      -- NULL: no timeout
    abort_reason text,
    abort_error  text,         -- why the worker could not abort it, if so
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,  -- completed, or aborted (its undo queued)
    PRIMARY KEY (owner, saga_id)
);

COMMENT ON TABLE payments.saga_state IS
    'One row per saga of a role: running, completed, or aborted (its undo queued as a chain of compensations)';

-- The worker's search for sagas past their timeout.  A step's update of
-- steps leaves status and timeout_at alone, so it stays HOT.
CREATE INDEX saga_state_timeout_idx
    ON payments.saga_state (timeout_at) WHERE status = 'running';

SELECT pg_catalog.pg_extension_config_dump('payments.saga_state', '');

CREATE TABLE payments.saga_steps (
    owner              regrole     NOT NULL,
    saga_id            text COLLATE "C" NOT NULL,
    step_no            integer     NOT NULL,   -- 1, 2, ... in commit order
    step               text COLLATE "C" NOT NULL,
    compensation       text COLLATE "C" NOT NULL,  -- as the queue stores a handler
    compensation_owner regrole     NOT NULL,
    payload            jsonb       NOT NULL,
    compensation_id    bigint,     -- its item in payments.compensations, once aborted
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, saga_id, step_no),
    UNIQUE (owner, saga_id, step),
    FOREIGN KEY (owner, saga_id) REFERENCES payments.saga_state
);

COMMENT ON TABLE payments.saga_steps IS
    'One row per committed forward step of a saga: the compensation that undoes it, and its queued item once aborted';

SELECT pg_catalog.pg_extension_config_dump('payments.saga_steps', '');

CREATE VIEW payments.sagas WITH (security_barrier) AS
    SELECT s.saga_id, s.owner,
           CASE
             WHEN s.status = 'running' AND s.timeout_at < pg_catalog.now() THEN 'stuck'
             WHEN s.status <> 'aborted' THEN s.status
             WHEN u.dead > 0 THEN 'stuck'
             WHEN u.unsettled > 0 THEN 'aborting'
             ELSE 'aborted'
           END AS status,
           s.steps,
           COALESCE(u.undone, 0) AS steps_undone,
           s.timeout_at, s.abort_reason, s.abort_error,
           s.created_at, s.updated_at, s.finished_at
      FROM payments.saga_state s
      LEFT JOIN LATERAL (
           SELECT count(*) FILTER (WHERE c.status = 'succeeded') AS undone,
                  count(*) FILTER (WHERE c.status = 'dead') AS dead,
                  count(*) FILTER (WHERE c.status NOT IN ('succeeded', 'cancelled'))
                      AS unsettled
             FROM payments.saga_steps st
            CROSS JOIN LATERAL
                  (SELECT payments.compensation_status(st.compensation_id) AS status) c
            WHERE st.owner = s.owner AND st.saga_id = s.saga_id
             AND s.status = 'aborted') u ON true
     WHERE pg_catalog.pg_has_role(s.owner, 'USAGE')
        OR pg_catalog.pg_has_role('payments_operator', 'USAGE');

COMMENT ON VIEW payments.sagas IS
    'Sagas: running, completed, aborting (undo under way), aborted (undone), or stuck (past its timeout, or its undo halted by a dead compensation)';

CREATE FUNCTION payments.saga_begin(saga_id text, timeout interval DEFAULT NULL)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_saga_begin'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.saga_begin(text, interval) IS
    'Begin a saga, aborted by the worker if neither completed nor aborted within timeout; false if it was begun before';

CREATE FUNCTION payments.saga_step(saga_id text, step text,
        compensation regprocedure, payload jsonb)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_saga_step'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.saga_step(text, text, regprocedure, jsonb) IS
    'In a forward step''s transaction: record how to undo the step, compensation(payload), queued only if the saga aborts; returns the step''s number';

CREATE FUNCTION payments.saga_complete(saga_id text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_saga_complete'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.saga_complete(text) IS
    'Every step of the saga is done: nothing will be undone';

CREATE FUNCTION payments.saga_abort(saga_id text, reason text)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_saga_abort'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.saga_abort(text, text) IS
    'Queue the recorded compensations in reverse order as a chain; returns how many (0 if aborted before)';

CREATE FUNCTION payments.abort_timed_out_sagas(max_sagas integer DEFAULT 100)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_abort_timed_out_sagas'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.abort_timed_out_sagas(integer) IS
    'The worker''s task: abort up to max_sagas sagas past their timeout; returns how many';
