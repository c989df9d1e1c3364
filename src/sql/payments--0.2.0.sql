-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION payments" to load this file. \quit

-- src/sql/00_schema.sql
-- The schema itself is created by CREATE EXTENSION (payments.control names
-- it).  A schema of that name that already existed is reused by CREATE
-- EXTENSION, so it is accepted only if no role but a superuser can own or
-- create objects in it: such a role could otherwise rename it, or put
-- objects of its own beside the extension's, where the worker (a
-- superuser) works.
DO $$
DECLARE
    culprit name;
BEGIN
    SELECT r.rolname INTO culprit
      FROM pg_catalog.pg_namespace n
      JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
     WHERE n.oid = '@extschema@'::pg_catalog.regnamespace AND NOT r.rolsuper;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('schema %I is owned by role %I, which is not a superuser',
                                        '@extschema@', culprit),
            DETAIL = 'The payments worker runs as a superuser in the extension''s schema, so only a superuser may own it.',
            HINT = 'Drop or rename the existing schema, or make a superuser its owner, then create the extension again.';
    END IF;

    SELECT r.rolname INTO culprit
      FROM pg_catalog.pg_namespace n,
           pg_catalog.aclexplode(n.nspacl) a
      JOIN pg_catalog.pg_roles r ON r.oid = a.grantee
     WHERE n.oid = '@extschema@'::pg_catalog.regnamespace
       AND a.privilege_type = 'CREATE' AND NOT r.rolsuper
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING
            ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('role %I may create objects in schema %I and is not a superuser',
                                        culprit, '@extschema@'),
            DETAIL = 'The payments worker runs as a superuser in the extension''s schema, so only superusers may create objects in it.',
            HINT = 'Revoke CREATE on the schema from that role, then create the extension again.';
    END IF;
END
$$;

-- Nothing in it is usable by PUBLIC (which includes CREATE): applications
-- get access through the payments_app role, see 90_privileges.sql.
REVOKE ALL ON SCHEMA @extschema@ FROM PUBLIC;

-- src/sql/10_idempotency.sql
-- Idempotency keys: see src/idempotency.c for the locking and lease rules.
--
-- The table is written only by the functions below, which validate every
-- value (lengths, states, codes) before it reaches the table.  It has no
-- CHECK constraints on purpose: the executor re-reads each constraint's
-- expression tree from its text form on every INSERT and UPDATE, a cost
-- the hot path does not need to pay twice (doc/benchmarks.md).

CREATE TABLE payments.idempotency_keys (
    scope            text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    request_hash     bytea       NOT NULL,
    state            text        NOT NULL DEFAULT 'started',
    recovery_point   text,
    response         jsonb,
    response_code    integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    lease_expires_at timestamptz,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
) WITH (fillfactor = 80);   -- room for HOT updates of begin -> complete

COMMENT ON TABLE payments.idempotency_keys IS
    'One row per idempotency key: its request fingerprint, progress and stored response';

CREATE INDEX idempotency_keys_expires_at_idx
    ON payments.idempotency_keys (expires_at);

SELECT pg_catalog.pg_extension_config_dump('payments.idempotency_keys', '');

-- A named row type rather than OUT parameters: the executor finds a named
-- type's descriptor in the type cache, where it would rebuild an anonymous
-- record's from pg_proc on every call.
CREATE TYPE payments.idempotency_result AS (
    outcome        text,
    response       jsonb,
    response_code  integer,
    recovery_point text
);

-- Scopes restricted to some roles (payments.restrict_scope); a scope with
-- no row here is shared by every role.  Roles are stored as regrole so that
-- pg_dump writes their names, not OIDs that differ in another cluster.
CREATE TABLE payments.idempotency_scopes (
    scope         text COLLATE "C" PRIMARY KEY,
    roles         regrole[]   NOT NULL,
    restricted_at timestamptz NOT NULL DEFAULT now(),
    restricted_by name        NOT NULL DEFAULT session_user
);

COMMENT ON TABLE payments.idempotency_scopes IS
    'Idempotency scopes that only members of the listed roles may use';

SELECT pg_catalog.pg_extension_config_dump('payments.idempotency_scopes', '');

-- Every backend caches the restrictions; any change to the table, however
-- it is made, tells them to read it again.
CREATE FUNCTION payments.idempotency_scopes_changed()
    RETURNS trigger
    AS 'MODULE_PATHNAME', 'payments_idempotency_scopes_changed'
    LANGUAGE C;

CREATE TRIGGER idempotency_scopes_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON payments.idempotency_scopes
    FOR EACH STATEMENT EXECUTE FUNCTION payments.idempotency_scopes_changed();

-- The four key functions are not SECURITY DEFINER: a scope restriction is
-- checked for the caller's role (current_user), which a SECURITY DEFINER
-- function cannot see.  They read keys as the caller with a direct index
-- scan and run their SQL as their owner with search_path pinned, as
-- SECURITY DEFINER SET search_path = pg_catalog, pg_temp would
-- (src/idempotency.c); without a SET clause a replay also no longer pays
-- for PostgreSQL 15's scan of every setting on leaving the function.
CREATE FUNCTION payments.idempotency_begin(
        scope text, key text, request jsonb,
        ttl interval DEFAULT '24 hours')
    RETURNS payments.idempotency_result
    AS 'MODULE_PATHNAME', 'payments_idempotency_begin'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_begin(text, text, jsonb, interval) IS
    'Start, replay or resume the request with this key: outcome is started, replayed or recovering';

CREATE FUNCTION payments.idempotency_checkpoint(
        scope text, key text, recovery_point text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_checkpoint'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_checkpoint(text, text, text) IS
    'Record the phase a multi-transaction flow has reached and renew its lease';

CREATE FUNCTION payments.idempotency_complete(
        scope text, key text, response jsonb,
        response_code integer DEFAULT 200)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_complete'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_complete(text, text, jsonb, integer) IS
    'Store the final response of the request with this key';

CREATE FUNCTION payments.idempotency_abandon(scope text, key text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_idempotency_abandon'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.idempotency_abandon(text, text) IS
    'Forget a started key whose work failed in a way the client may retry';

CREATE FUNCTION payments.purge_idempotency_keys(max_rows integer DEFAULT 10000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_purge_idempotency_keys'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.purge_idempotency_keys(integer) IS
    'Delete up to max_rows expired idempotency keys; returns how many';

CREATE FUNCTION payments.restrict_scope(scope text, roles regrole[])
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_restrict_scope'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.restrict_scope(text, regrole[]) IS
    'Let only members of these roles use the keys of an idempotency scope; replaces an earlier list';

CREATE FUNCTION payments.unrestrict_scope(scope text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_unrestrict_scope'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.unrestrict_scope(text) IS
    'Share an idempotency scope with every role again; false if it was not restricted';

-- src/sql/20_reservation.sql
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
    CONSTRAINT stock_slots_check CHECK (slots BETWEEN 1 AND 1024)
);

COMMENT ON TABLE payments.stock IS
    'One row per SKU: how many slot rows its unreserved stock is split across';

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

-- src/sql/30_state_guard.sql
-- State guard: status columns that only move along a declared state machine.
-- See src/state_guard.c for the trigger, and src/state_machine.c for the
-- per-backend cache and how a redefinition reaches every session.

-- One row per machine.  define_state_machine stores the transitions in a
-- normal form: every state is a key (terminal states map to []), each
-- list without duplicates, and initial always spelled out.
CREATE TABLE payments.state_machine_definitions (
    name        text COLLATE "C" PRIMARY KEY,
    transitions jsonb       NOT NULL,
    initial     text[]      NOT NULL,
    defined_at  timestamptz NOT NULL DEFAULT now(),
    defined_by  name        NOT NULL,
    CONSTRAINT state_machine_definitions_name_check
        CHECK (octet_length(name) BETWEEN 1 AND 63),
    CONSTRAINT state_machine_definitions_transitions_check
        CHECK (jsonb_typeof(transitions) = 'object')
);

COMMENT ON TABLE payments.state_machine_definitions IS
    'State machines for payments.guard_state, written by payments.define_state_machine';

SELECT pg_catalog.pg_extension_config_dump('payments.state_machine_definitions', '');

-- One row for every accepted change of a guarded column, written by the
-- AFTER trigger, so a row that was not in the end inserted or updated (ON
-- CONFLICT, a later trigger that skipped it, an error) leaves none.
CREATE TABLE payments.state_history (
    id          bigserial   PRIMARY KEY,
    tbl         regclass    NOT NULL,
    col         text        NOT NULL,
    row_key     text        NOT NULL,
    from_state  text,               -- NULL: the row was inserted
    to_state    text        NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    txid        xid8        NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    changed_by  text        NOT NULL
);

COMMENT ON TABLE payments.state_history IS
    'Every accepted move of a guarded status column: from_state is NULL for an insert';

SELECT pg_catalog.pg_extension_config_dump('payments.state_history', '');
SELECT pg_catalog.pg_extension_config_dump('payments.state_history_id_seq', '');

-- One row per state of every machine, with its outgoing edges.
CREATE VIEW payments.state_machines AS
SELECT d.name AS machine,
       e.key AS state,
       e.key = ANY (d.initial) AS initial,
       pg_catalog.jsonb_array_length(e.value) = 0 AS terminal,
       ARRAY(SELECT pg_catalog.jsonb_array_elements_text(e.value)) AS next_states
  FROM payments.state_machine_definitions d,
       LATERAL pg_catalog.jsonb_each(d.transitions) AS e;

COMMENT ON VIEW payments.state_machines IS
    'The states of every state machine: whether a new row may start in it, whether it is terminal, and the states it may move to';

CREATE FUNCTION payments.define_state_machine(
        name text, transitions jsonb, initial text[] DEFAULT NULL)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_define_state_machine'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.define_state_machine(text, jsonb, text[]) IS
    'Create or replace a state machine; every session uses the new definition from its next statement';

-- The trigger function.  It runs as the user who writes the row and reads
-- the machine and writes the history as the extension's owner.
CREATE FUNCTION payments.state_guard()
    RETURNS trigger
    AS 'MODULE_PATHNAME', 'payments_state_guard'
    LANGUAGE C;

COMMENT ON FUNCTION payments.state_guard() IS
    'Trigger of payments.guard_state: checks and records every move of a guarded column';

-- guard_state and unguard_state are not SECURITY DEFINER on purpose: they
-- create and drop triggers on the caller's table, so PostgreSQL's own
-- checks (the TRIGGER privilege, ownership for DROP TRIGGER) apply to the
-- caller, not to the extension's owner.
CREATE FUNCTION payments.guard_state(tbl regclass, col name, machine text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_guard_state'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.guard_state(regclass, name, text) IS
    'Attach the state guard: column col of tbl may only move along the edges of the machine';

CREATE FUNCTION payments.unguard_state(tbl regclass, col name)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_unguard_state'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.unguard_state(regclass, name) IS
    'Detach the state guard from column col of tbl';

-- src/sql/40_worker.sql
-- The background worker: status and wake-up.  See src/worker.h for the
-- lifecycle; the worker itself needs shared_preload_libraries = 'payments'.

CREATE FUNCTION payments.worker_status(
        OUT pid integer, OUT state text, OUT started_at timestamptz,
        OUT last_run timestamptz, OUT items_done bigint,
        OUT items_failed bigint, OUT last_error text)
    RETURNS record
    AS 'MODULE_PATHNAME', 'payments_worker_status'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.worker_status() IS
    'This database''s payments worker: pid, state, last run, items done and failed, last error';

CREATE VIEW payments.worker_activity AS
    SELECT * FROM payments.worker_status();

COMMENT ON VIEW payments.worker_activity IS
    'This database''s payments worker, as payments.worker_status() reports it';

CREATE FUNCTION payments.notify_worker()
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_notify_worker'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.notify_worker() IS
    'Wake this database''s payments worker when the current transaction commits';

-- src/sql/50_compensation.sql
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
    claimed_by       regrole                -- the role of the last external claim
) WITH (fillfactor = 50);   -- room for the claim's HOT update, see below

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

SELECT pg_catalog.pg_extension_config_dump('payments.compensations', '');
SELECT pg_catalog.pg_extension_config_dump('payments.compensations_id_seq', '');

CREATE TABLE payments.compensation_attempts (
    id               bigserial   PRIMARY KEY,
    compensation_id  bigint      NOT NULL,  -- payments.compensations.id
    attempt          integer     NOT NULL,
    failed_at        timestamptz NOT NULL DEFAULT now(),
    error            text        NOT NULL,
    sqlstate         text
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
                                                        AS oldest_pending_age
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
        max_attempts integer DEFAULT NULL, run_at timestamptz DEFAULT now())
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_enqueue_compensation'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz) IS
    'Queue handler(payload) to run as the calling role, retried until it succeeds; returns its id';

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

-- src/sql/90_privileges.sql
-- Privileges, applied last so they cover every object above.
--
-- The tables are reachable only through the extension's functions.
-- Applications get EXECUTE through one role, payments_app, so a DBA grants
-- access with a single statement:  GRANT payments_app TO my_app;
-- Members of payments_operator may read the compensation queue and cancel,
-- retry, complete or fail any role's items (an application role only its
-- own): GRANT payments_operator TO on_call;
-- The roles are cluster-wide: each is created by the first database that
-- installs the extension and shared by every other one.  Neither can log
-- in; neither is granted to anyone.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'payments_app') THEN
        CREATE ROLE payments_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'payments_operator') THEN
        CREATE ROLE payments_operator NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;

-- Default privileges (ALTER DEFAULT PRIVILEGES) may have granted rights on
-- the objects above to other roles: only the owner, payments_app and
-- payments_operator keep any.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::pg_catalog.regrole AS grantee
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.relnamespace = '@extschema@'::pg_catalog.regnamespace
           AND a.grantee <> 0 AND a.grantee <> c.relowner
        UNION
        SELECT a.grantee::pg_catalog.regrole
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.pronamespace = '@extschema@'::pg_catalog.regnamespace
           AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        CONTINUE WHEN r.grantee::text IN ('payments_app', 'payments_operator');
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', r.grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', r.grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM %s', r.grantee);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA payments TO payments_app;
GRANT EXECUTE ON FUNCTION
    payments.idempotency_begin(text, text, jsonb, interval),
    payments.idempotency_checkpoint(text, text, text),
    payments.idempotency_complete(text, text, jsonb, integer),
    payments.idempotency_abandon(text, text),
    payments.stock_set(text, bigint, integer),
    payments.stock_adjust(text, bigint),
    payments.reserve(text, text, bigint, interval),
    payments.reserve(text, jsonb, interval),
    payments.confirm_reservation(bigint),
    payments.confirm_order(text),
    payments.release_reservation(bigint),
    payments.release_order(text),
    payments.notify_worker(),
    payments.define_state_machine(text, jsonb, text[]),
    payments.guard_state(regclass, name, text),
    payments.unguard_state(regclass, name),
    payments.state_guard(),
    payments.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz),
    payments.retry_compensation(bigint),
    payments.cancel_compensation(bigint),
    payments.register_external_handler(regprocedure),
    payments.unregister_external_handler(regprocedure),
    payments.claim_compensations(regprocedure, integer, interval),
    payments.complete_compensation(bigint, bigint),
    payments.fail_compensation(bigint, bigint, text)
    TO payments_app;
-- Applications may read stock levels, not the tables behind them.
GRANT SELECT ON payments.stock_levels TO payments_app;
GRANT SELECT ON payments.state_machines TO payments_app;
GRANT SELECT ON payments.compensation_stats TO payments_app;

-- The operator: the compensation queue, read and steered (the functions
-- check who may change which item, see src/compensation.c).
GRANT USAGE ON SCHEMA payments TO payments_operator;
GRANT EXECUTE ON FUNCTION
    payments.retry_compensation(bigint),
    payments.cancel_compensation(bigint),
    payments.complete_compensation(bigint, bigint),
    payments.fail_compensation(bigint, bigint, text)
    TO payments_operator;
GRANT SELECT ON payments.compensations, payments.compensation_attempts,
    payments.external_handlers, payments.compensation_stats TO payments_operator;
-- The operator also decides which roles share an idempotency scope: an
-- application that could would lock another out of its own scope.
GRANT EXECUTE ON FUNCTION
    payments.restrict_scope(text, regrole[]),
    payments.unrestrict_scope(text)
    TO payments_operator;
GRANT SELECT ON payments.idempotency_scopes TO payments_operator;
