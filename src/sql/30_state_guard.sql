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
    LANGUAGE C VOLATILE
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
