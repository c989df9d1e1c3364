-- Compensations: an undo queued in the same transaction as the failure it
-- answers, and retried by the background worker until it is done.  See
-- src/compensation.c for the SQL API and the rights rules, and
-- src/compensation_run.c for how the worker runs an item exactly once.
--
-- Like payments.idempotency_keys, the tables carry no CHECK constraints: the
-- functions below validate every value before it reaches them.
--
-- handler holds the function's schema-qualified signature as text (what
-- regprocedure prints), not a regprocedure: the text survives pg_dump and a
-- redeploy that drops and re-creates the function, and pg_upgrade refuses
-- clusters with regprocedure columns.  handler_owner, recorded at enqueue
-- time, stops a function of another owner created under the same name from
-- running with the enqueuer's rights.

CREATE TABLE payments.compensations (
    id               bigserial   PRIMARY KEY,
    handler          text COLLATE "C" NOT NULL,
    payload          jsonb       NOT NULL,
    dedup_key        text COLLATE "C",
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    last_error       text,
    enqueued_by      regrole     NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,           -- set exactly when the status is final
    handler_owner    regrole     NOT NULL,
    lease_expires_at timestamptz,           -- while running: when the claim lapses
    claim_token      bigint,                -- the claim that holds (or ran) it
    claimed_by       regrole,               -- the role of the last external claim
    after            bigint,                -- runs only once this item has settled
    flow             text COLLATE "C" NOT NULL  -- see below
) WITH (fillfactor = 50);   -- room for the claim's HOT update, see below

-- flow keeps a chain together: an item's flow is the flow of the item it
-- comes after, else its dedup key, else its id.  payments.distribute()
-- distributes the queue by it, so that a chain, and every item of one
-- handler and dedup key, lives on one shard (src/sql/86_citus.sql).

COMMENT ON TABLE payments.compensations IS
    'One row per queued compensation: its handler, payload, status and retry schedule';

-- The unfinished items (pending or running) in due order: the claims read
-- it, and so does the search for claims whose lease ran out (running items
-- were due when claimed).  No index mentions status, attempts,
-- lease_expires_at, claim_token or claimed_by, so that claiming an item
-- (pending -> running) is a HOT update, which leaves the indexes alone.
-- A dedup key belongs to its handler: the same key with another
-- handler is another item.
CREATE UNIQUE INDEX compensations_dedup_key_idx
    ON payments.compensations (handler, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX compensations_due_idx
    ON payments.compensations (next_attempt_at) WHERE finished_at IS NULL;

-- A chain: the items waiting for an item to settle.  A waiting item is
-- never due (its next_attempt_at is infinity) until the one it comes after
-- succeeds or is cancelled; after never changes but for a cancelled link,
-- so the index leaves the claims HOT.
CREATE INDEX compensations_after_idx
    ON payments.compensations (after) WHERE after IS NOT NULL;

SELECT pg_catalog.pg_extension_config_dump('payments.compensations', '');
SELECT pg_catalog.pg_extension_config_dump('payments.compensations_id_seq', '');

CREATE TABLE payments.compensation_attempts (
    id               bigserial   PRIMARY KEY,
    compensation_id  bigint      NOT NULL,  -- payments.compensations.id
    attempt          integer     NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    error            text        NOT NULL,
    sqlstate         text,
    flow             text COLLATE "C" NOT NULL  -- its compensation's flow
);

COMMENT ON TABLE payments.compensation_attempts IS
    'One row per failed attempt of a compensation: when, the error and its SQLSTATE';

CREATE INDEX compensation_attempts_compensation_id_idx
    ON payments.compensation_attempts (compensation_id);

SELECT pg_catalog.pg_extension_config_dump('payments.compensation_attempts', '');
SELECT pg_catalog.pg_extension_config_dump('payments.compensation_attempts_id_seq', '');

CREATE TABLE payments.external_handlers (
    handler          text COLLATE "C" PRIMARY KEY,
    registered_by    regrole     NOT NULL,
    registered_at    timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE payments.external_handlers IS
    'Handlers whose compensations are run by executors outside the database, never by the worker';

SELECT pg_catalog.pg_extension_config_dump('payments.external_handlers', '');

CREATE VIEW payments.compensation_stats AS
    SELECT handler,
           count(*) FILTER (WHERE status = 'pending')   AS pending,
           count(*) FILTER (WHERE status = 'running')   AS running,
           count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE status = 'dead')      AS dead,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           pg_catalog.now() - min(created_at) FILTER (WHERE status = 'pending')
                                                        AS oldest_pending_age,
           count(*) FILTER (WHERE status = 'waiting')   AS waiting
      FROM payments.compensations
     GROUP BY handler;

COMMENT ON VIEW payments.compensation_stats IS
    'Compensations per handler: how many in each status, and the age of the oldest pending one';

-- None of these functions is SECURITY DEFINER: they act on behalf of their
-- caller, whose rights they check (the role that would run a handler, the
-- role that queued an item), so they read the caller's role (current_user,
-- also inside another SECURITY DEFINER function) and take the rights of
-- their owner only for their own statements.  See src/compensation.c.

CREATE FUNCTION payments.enqueue_compensation(
        handler regprocedure, payload jsonb, dedup_key text DEFAULT NULL,
        max_attempts integer DEFAULT NULL, run_at timestamptz DEFAULT now(),
        after bigint DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_enqueue_compensation'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz, bigint) IS
    'Queue handler(payload) to run as the calling role, retried until it succeeds, and only once the item after names has succeeded or been cancelled; returns its id';

-- The status of an item the caller may see (queued by a role it is a member
-- of, or any for payments_operator), NULL otherwise: what the views, purges
-- and checks of the other components read about the items they queued,
-- over every shard once the queue is distributed.
CREATE FUNCTION payments.compensation_status(id bigint)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_compensation_status'
    LANGUAGE C STABLE STRICT
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.compensation_status(bigint) IS
    'The status of a compensation, NULL if there is none or the caller may not see it';

CREATE FUNCTION payments.retry_compensation(id bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_retry_compensation'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.retry_compensation(bigint) IS
    'Put a dead compensation back in the queue with a fresh attempt budget';

CREATE FUNCTION payments.cancel_compensation(id bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_cancel_compensation'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.cancel_compensation(bigint) IS
    'Take a compensation that has not succeeded out of the queue for good';

CREATE FUNCTION payments.register_external_handler(handler regprocedure)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_register_external_handler'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.register_external_handler(regprocedure) IS
    'Mark a handler as run by executors outside the database: the worker never runs its items';

CREATE FUNCTION payments.unregister_external_handler(handler regprocedure)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_unregister_external_handler'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.unregister_external_handler(regprocedure) IS
    'Give a handler''s items back to the worker; refused while executors hold claims of them';

CREATE FUNCTION payments.claim_compensations(
        handler regprocedure, max_items integer, lease interval)
    RETURNS SETOF payments.compensations
    AS 'MODULE_PATHNAME', 'payments_claim_compensations'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.claim_compensations(regprocedure, integer, interval) IS
    'Claim up to max_items due compensations of an external handler for the length of the lease';

CREATE FUNCTION payments.complete_compensation(id bigint, claim_token bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_complete_compensation_0_2'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.complete_compensation(bigint, bigint) IS
    'Record that an external executor carried out a compensation its claim holds';

CREATE FUNCTION payments.fail_compensation(id bigint, claim_token bigint, error text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_fail_compensation_0_2'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.fail_compensation(bigint, bigint, text) IS
    'Record a failed attempt of a compensation its claim holds and schedule the next one';

CREATE FUNCTION payments.run_compensations(max_items integer DEFAULT 1000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_run_compensations'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.run_compensations(integer) IS
    'The worker''s step: return expired claims to the queue, claim and run up to max_items due compensations; returns how many finished';
