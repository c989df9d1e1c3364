-- Reconciliation: a provider's statement against the application's own
-- records, every difference classified, and each difference healed once
-- through the compensation queue.  See doc/reconciliation.md.
--
-- A reconciliation belongs to the role that first defined it (owner), a
-- statement to the role that began it: only those roles and their members
-- may use them.  Whoever defines, changes or runs a reconciliation, it
-- acts with its owner's rights: the application's side is read as the
-- owner and heals are queued as the owner, so no role's code runs with
-- another role's rights, and never with the extension owner's.
-- defined_by records who wrote the current definition.

CREATE TABLE payments.reconciliations (
    id               bigserial   PRIMARY KEY,
    name             text COLLATE "C" NOT NULL UNIQUE,
    source           regclass    NOT NULL,
    ref_col          name        NOT NULL,
    amount_col       name        NOT NULL,
    status_col       name        NOT NULL,
    at_col           name        NOT NULL,
    currency_col     name,
    status_map       jsonb,
    grace            interval    NOT NULL,
    amount_tolerance numeric     NOT NULL,
    owner            regrole     NOT NULL,
    defined_by       regrole     NOT NULL,
    defined_at       timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE payments.reconciliations IS
    'Reconciliations: which table or view of the application holds our side, and how its columns compare with a statement''s';

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliations', '');
SELECT pg_catalog.pg_extension_config_dump('payments.reconciliations_id_seq', '');

-- handler is the function's signature as text with its owner, as in
-- payments.compensations (see src/sql/50_compensation.sql).
CREATE TABLE payments.reconciliation_policies (
    reconciliation_id bigint     NOT NULL,
    class            text COLLATE "C" NOT NULL,
    handler          text COLLATE "C" NOT NULL,
    handler_owner    regrole     NOT NULL,
    defined_by       regrole     NOT NULL,
    defined_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (reconciliation_id, class)
);

COMMENT ON TABLE payments.reconciliation_policies IS
    'The compensation handler that heals each new difference of a class';

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_policies', '');

-- A statement is open while its lines are loaded and closed once its line
-- count and total agree with the provider's header; only a closed
-- statement is reconciled.  totals holds, per currency, the number of
-- lines and their sum, counted when it closed.
CREATE TABLE payments.statements (
    id               bigserial   PRIMARY KEY,
    provider         text COLLATE "C" NOT NULL,
    period           tstzrange   NOT NULL,
    source           text,
    expected_lines   bigint,
    expected_total   numeric,
    status           text        NOT NULL DEFAULT 'open',
    lines            bigint,
    total            numeric,
    totals           jsonb,
    opened_by        regrole     NOT NULL,
    opened_at        timestamptz NOT NULL DEFAULT now(),
    closed_at        timestamptz
);

COMMENT ON TABLE payments.statements IS
    'Provider statements: the period they cover, what their header announced and, once closed, what they hold';

SELECT pg_catalog.pg_extension_config_dump('payments.statements', '');
SELECT pg_catalog.pg_extension_config_dump('payments.statements_id_seq', '');

-- A provider's file does not name our statement: COPY without the
-- statement_id column takes it from the setting payments.statement_id.
CREATE FUNCTION payments.statement_for_copy()
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_statement_for_copy'
    LANGUAGE C STABLE;

COMMENT ON FUNCTION payments.statement_for_copy() IS
    'The statement that payments.statement_id names: the default of a line''s statement_id';

-- Lines arrive by COPY as well as through statement_add, so this table,
-- unlike the others, checks its values itself.  Money is in minor units;
-- a refund is a status, not a negative amount.  The trigger below checks
-- what a row cannot: the statement is open, belongs to the inserting role
-- and covers the line's time.
CREATE TABLE payments.statement_lines (
    statement_id     bigint      NOT NULL DEFAULT payments.statement_for_copy(),
    external_id      text COLLATE "C" NOT NULL,
    payment_ref      text COLLATE "C",
    amount           bigint      NOT NULL,
    currency         char(3)     NOT NULL,
    status           text        NOT NULL,
    occurred_at      timestamptz NOT NULL,
    fee              bigint,
    raw              jsonb,
    CONSTRAINT statement_lines_external_id_check
        CHECK (octet_length(external_id) BETWEEN 1 AND 200),
    CONSTRAINT statement_lines_payment_ref_check
        CHECK (octet_length(payment_ref) BETWEEN 1 AND 200),
    CONSTRAINT statement_lines_amount_check CHECK (amount >= 0),
    CONSTRAINT statement_lines_currency_check
        CHECK (currency OPERATOR(pg_catalog.~) '^[A-Z]{3}$'),
    CONSTRAINT statement_lines_status_check
        CHECK (octet_length(status) BETWEEN 1 AND 64)
);

COMMENT ON TABLE payments.statement_lines IS
    'The lines of provider statements, in minor units; loaded by COPY or payments.statement_add';

CREATE INDEX statement_lines_statement_id_idx
    ON payments.statement_lines (statement_id);

SELECT pg_catalog.pg_extension_config_dump('payments.statement_lines', '');

CREATE FUNCTION payments.statement_lines_check()
    RETURNS trigger
    AS 'MODULE_PATHNAME', 'payments_statement_lines_check'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.statement_lines_check() IS
    'Trigger of payments.statement_lines: refuses lines of a statement that is closed, another role''s, or that does not cover them';

CREATE TRIGGER statement_lines_check
    AFTER INSERT ON payments.statement_lines
    REFERENCING NEW TABLE AS new_lines
    FOR EACH STATEMENT EXECUTE FUNCTION payments.statement_lines_check();

-- One row per run of reconcile.  A run supersedes the earlier runs of the
-- reconciliation on the same statement, or on another statement of the
-- same provider, period and source (the same file sent again, corrected);
-- their rows stay as a record, and the views show the latest.
-- matched holds, per currency, the matched lines and their sum.
CREATE TABLE payments.reconciliation_runs (
    id               bigserial   PRIMARY KEY,
    reconciliation_id bigint     NOT NULL,
    statement_id     bigint      NOT NULL,
    run_by           regrole     NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    lines            bigint,
    internal_rows    bigint,
    matched          jsonb,
    differences      bigint,
    waiting          bigint,
    heals_queued     bigint,
    superseded_by    bigint
);

COMMENT ON TABLE payments.reconciliation_runs IS
    'Runs of reconcile: what each compared, found and queued';

CREATE INDEX reconciliation_runs_statement_idx
    ON payments.reconciliation_runs (reconciliation_id, statement_id);

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_runs', '');
SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_runs_id_seq', '');

-- One row per difference a run found, and per row of ours that a line of
-- a later statement matched after it had waited.  reference is the
-- payment's: the line's payment_ref or our row's reference (NULL for a
-- line without one).  amount and currency are the line's where there is a
-- line, ours otherwise; waiting marks a row of ours missing from the
-- statement whose grace has not ended yet.
CREATE TABLE payments.reconciliation_items (
    id               bigserial   PRIMARY KEY,
    run_id           bigint      NOT NULL,
    reconciliation_id bigint     NOT NULL,
    statement_id     bigint      NOT NULL,
    class            text COLLATE "C" NOT NULL,
    reference        text COLLATE "C",
    payment_ref      text COLLATE "C",
    external_id      text COLLATE "C",
    amount           numeric,
    currency         text,
    internal_amount  numeric,
    external_amount  bigint,
    internal_currency text,
    external_currency char(3),
    internal_status  text,
    external_status  text,
    internal_at      timestamptz,
    occurred_at      timestamptz,
    waiting          boolean     NOT NULL DEFAULT false,
    waited           boolean     NOT NULL DEFAULT false,
    -- the key of its heal in payments.reconciliation_heals
    heal_reference   text COLLATE "C" NOT NULL
        GENERATED ALWAYS AS (coalesce(reference, '')) STORED,
    heal_external_id text COLLATE "C" NOT NULL
        GENERATED ALWAYS AS (CASE WHEN class = 'duplicate_external' OR reference IS NULL
                                  THEN external_id ELSE '' END) STORED
);

COMMENT ON TABLE payments.reconciliation_items IS
    'What each reconciliation run found: every difference, with both sides of it';

CREATE INDEX reconciliation_items_run_id_idx
    ON payments.reconciliation_items (run_id);

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_items', '');
SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_items_id_seq', '');

-- The grace pool: rows of ours that a statement did not hold, by
-- reference.  A row waits until a statement whose period reaches
-- waiting_until has been reconciled; it is then missing_external for good
-- (declared), unless a line of a later statement matched it first
-- (matched).  settled_statement_id is the statement whose run settled it,
-- which reads it again when it runs again.
CREATE TABLE payments.reconciliation_pool (
    reconciliation_id bigint     NOT NULL,
    reference        text COLLATE "C" NOT NULL,
    statement_id     bigint      NOT NULL,
    waiting_until    timestamptz NOT NULL,
    state            text        NOT NULL DEFAULT 'waiting',
    settled_statement_id bigint,
    PRIMARY KEY (reconciliation_id, reference)
);

COMMENT ON TABLE payments.reconciliation_pool IS
    'Rows of ours missing from a statement, waiting for their grace to end or for a later statement to hold them';

CREATE INDEX reconciliation_pool_waiting_idx
    ON payments.reconciliation_pool (reconciliation_id) WHERE state = 'waiting';
CREATE INDEX reconciliation_pool_statement_idx
    ON payments.reconciliation_pool (statement_id);
CREATE INDEX reconciliation_pool_settled_idx
    ON payments.reconciliation_pool (settled_statement_id);

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_pool', '');

-- One row per difference that was healed or accepted, keyed by what makes
-- it the same difference in every run: the reconciliation, the class, the
-- reference and, for a difference of one line rather than of a payment (a
-- further charge of a duplicate_external, a line without a reference), the
-- line's external_id ('' otherwise).  This is the dedup key of the heal: a
-- re-run, a corrected statement or a concurrent run finds it here and
-- queues nothing.  It is kept in this table, which only the extension
-- writes, rather than as the compensation's dedup_key, which any role able
-- to call the handler could take first.
CREATE TABLE payments.reconciliation_heals (
    reconciliation_id bigint     NOT NULL,
    class            text COLLATE "C" NOT NULL,
    reference        text COLLATE "C" NOT NULL,
    external_id      text COLLATE "C" NOT NULL,
    item_id          bigint      NOT NULL,
    compensation_id  bigint,
    accepted_by      regrole,
    accepted_at      timestamptz,
    note             text,
    PRIMARY KEY (reconciliation_id, class, reference, external_id)
);

COMMENT ON TABLE payments.reconciliation_heals IS
    'Differences healed (the compensation queued for each) or accepted by a person, once per reconciliation, class and reference';

SELECT pg_catalog.pg_extension_config_dump('payments.reconciliation_heals', '');

-- The views show a role the reconciliations of the roles it has the
-- privileges of; payments_operator sees every one.
CREATE VIEW payments.reconciliation_summary WITH (security_barrier) AS
    SELECT r.id AS run_id, d.name AS reconciliation, r.statement_id,
           r.superseded_by IS NULL AS latest, s.class, s.currency,
           s.items AS count, s.amount
      FROM payments.reconciliation_runs r
      JOIN payments.reconciliations d ON d.id = r.reconciliation_id
     CROSS JOIN LATERAL (
            SELECT i.class, i.currency, count(*) AS items, sum(i.amount) AS amount
              FROM payments.reconciliation_items i
             WHERE i.run_id = r.id AND i.class <> 'matched'
             GROUP BY i.class, i.currency
            UNION ALL
            SELECT 'matched', m.key, (m.value ->> 0)::bigint, (m.value ->> 1)::numeric
              FROM pg_catalog.jsonb_each(r.matched) m) s
     WHERE r.finished_at IS NOT NULL
       AND (pg_catalog.pg_has_role(d.owner, 'USAGE')
            OR pg_catalog.pg_has_role('payments_operator', 'USAGE'));

COMMENT ON VIEW payments.reconciliation_summary IS
    'Per run, class and currency: how many lines or rows and their amount';

CREATE VIEW payments.reconciliation_open WITH (security_barrier) AS
    SELECT i.id AS item_id, d.name AS reconciliation, i.run_id, i.statement_id,
           i.class, i.reference, i.payment_ref, i.external_id,
           i.amount, i.currency, i.internal_amount, i.external_amount,
           i.internal_currency, i.external_currency,
           i.internal_status, i.external_status, i.internal_at, i.occurred_at,
           CASE
               WHEN i.waiting THEN 'waiting'
               WHEN h.compensation_id IS NULL THEN 'open'
               WHEN c.status IN ('pending', 'running') THEN 'healing'
               ELSE 'heal_failed'
           END AS state,
           h.compensation_id
      FROM payments.reconciliation_items i
      JOIN payments.reconciliation_runs r ON r.id = i.run_id
      JOIN payments.reconciliations d ON d.id = i.reconciliation_id
      LEFT JOIN payments.reconciliation_pool p
             ON p.reconciliation_id = i.reconciliation_id AND p.reference = i.reference
      LEFT JOIN payments.reconciliation_heals h
             ON h.reconciliation_id = i.reconciliation_id AND h.class = i.class
            AND h.reference = i.heal_reference AND h.external_id = i.heal_external_id
     CROSS JOIN LATERAL (SELECT payments.compensation_status(h.compensation_id) AS status) c
     WHERE r.superseded_by IS NULL
       AND i.class <> 'matched'
       AND NOT (i.waiting AND p.state IS DISTINCT FROM 'waiting')
       AND h.accepted_at IS NULL
       AND c.status IS DISTINCT FROM 'succeeded'
       AND (pg_catalog.pg_has_role(d.owner, 'USAGE')
            OR pg_catalog.pg_has_role('payments_operator', 'USAGE'));

COMMENT ON VIEW payments.reconciliation_open IS
    'Differences of the latest runs not yet healed or accepted: waiting, open, healing or heal_failed';

CREATE FUNCTION payments.define_reconciliation(
        name text, source regclass, ref_col name, amount_col name,
        status_col name, at_col name, currency_col name DEFAULT NULL,
        status_map jsonb DEFAULT NULL, grace interval DEFAULT '3 days',
        amount_tolerance numeric DEFAULT 0)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_define_reconciliation'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.define_reconciliation(text, regclass, name, name, name, name, name, jsonb, interval, numeric) IS
    'Define (or redefine) a reconciliation of a provider''s statements against a table or view of ours; returns its id';

CREATE FUNCTION payments.reconciliation_policy(
        name text, class text, handler regprocedure)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_reconciliation_policy'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.reconciliation_policy(text, text, regprocedure) IS
    'Heal each new difference of a class by queuing handler(difference) as the reconciliation''s role; a NULL handler removes the policy';

CREATE FUNCTION payments.statement_begin(
        provider text, period tstzrange, source text DEFAULT NULL,
        expected_lines bigint DEFAULT NULL, expected_total numeric DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_statement_begin'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.statement_begin(text, tstzrange, text, bigint, numeric) IS
    'Open a statement of a provider for a period, with the line count and total its header announces; returns its id';

CREATE FUNCTION payments.statement_add(statement_id bigint, lines jsonb)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_statement_add'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.statement_add(bigint, jsonb) IS
    'Add lines, a JSON array of objects, to an open statement; returns how many';

CREATE FUNCTION payments.statement_close(statement_id bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_statement_close'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.statement_close(bigint) IS
    'Close a statement whose lines agree with its header; refuses one that does not';

CREATE FUNCTION payments.reconcile(name text, statement_id bigint)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_reconcile'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.reconcile(text, bigint) IS
    'Classify every line of a closed statement and every row of ours in its period, queue the heals; returns the run id';

CREATE FUNCTION payments.accept_difference(item_id bigint, note text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_accept_difference'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.accept_difference(bigint, text) IS
    'Record a person''s decision to accept a difference that is not healed: no heal is queued for it again';
