-- TCC fence: the participant's side of a Try-Confirm-Cancel transaction.
-- Each call takes one row of payments.tcc_fence in the caller's
-- transaction, so the answer commits or rolls back with the business work
-- it guards.  See src/tcc_fence.c for the rules and doc/tcc.md.
--
-- A fence row belongs to the role that wrote it (owner is part of the
-- key): roles sharing the extension never see, steer or block each other's
-- branches, even under the same global transaction id.

CREATE TABLE payments.tcc_fence (
    owner       regrole     NOT NULL,
    gid         text COLLATE "C" NOT NULL,
    branch_id   text COLLATE "C" NOT NULL,
    action      text,
    state       text        NOT NULL
        CHECK (state IN ('tried', 'confirmed', 'cancelled', 'suspended')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner, gid, branch_id)
) WITH (fillfactor = 80);   -- room for the Confirm's or Cancel's HOT update

COMMENT ON TABLE payments.tcc_fence IS
    'One row per TCC branch of a role: tried, confirmed, cancelled, or suspended (cancelled before any Try)';

-- The purge's index: branches come in time order, and a BRIN index on the
-- creation time, which no update changes, leaves the Confirm and the
-- Cancel HOT updates.
CREATE INDEX tcc_fence_created_idx
    ON payments.tcc_fence USING brin (created_at);

SELECT pg_catalog.pg_extension_config_dump('payments.tcc_fence', '');

CREATE VIEW payments.tcc_branches WITH (security_barrier) AS
    SELECT f.gid, f.branch_id, f.action, f.state, f.created_at, f.updated_at,
           f.owner,
           f.state = 'tried'
             AND f.updated_at < pg_catalog.now()
                 - pg_catalog.current_setting('payments.tcc_stuck_after')::interval
             AS stuck
      FROM payments.tcc_fence f
     WHERE pg_catalog.pg_has_role(f.owner, 'USAGE')
        OR pg_catalog.pg_has_role('payments_operator', 'USAGE');

COMMENT ON VIEW payments.tcc_branches IS
    'TCC branches, with those tried but neither confirmed nor cancelled for longer than payments.tcc_stuck_after marked stuck';

CREATE FUNCTION payments.tcc_try(gid text, branch_id text, action text DEFAULT NULL)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_tcc_try'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.tcc_try(text, text, text) IS
    'Call first in a Try''s transaction: proceed, duplicate (already tried) or suspended (cancelled first)';

CREATE FUNCTION payments.tcc_confirm(gid text, branch_id text)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_tcc_confirm'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.tcc_confirm(text, text) IS
    'Call first in a Confirm''s transaction: proceed once after a committed Try, then duplicate';

CREATE FUNCTION payments.tcc_cancel(gid text, branch_id text)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_tcc_cancel'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION payments.tcc_cancel(text, text) IS
    'Call first in a Cancel''s transaction: proceed (undo the Try), empty (no Try: a marker now refuses it) or duplicate';

CREATE FUNCTION payments.purge_tcc_fence(max_rows integer DEFAULT 10000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_purge_tcc_fence'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.purge_tcc_fence(integer) IS
    'Delete up to max_rows TCC branches that finished longer than payments.tcc_fence_retention ago; returns how many';
