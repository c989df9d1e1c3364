-- TCC fence: Try then Confirm of a new branch, each in its own
-- transaction as a participant runs them, with payments.tcc_try and
-- payments.tcc_confirm, against the plain SQL an application writes for
-- the same barrier: an INSERT ... ON CONFLICT DO NOTHING of the branch as
-- tried, then the conditional UPDATE to confirmed, on a table of the same
-- columns and primary key.  Both sides check the answer the way business
-- code would branch on it (a row inserted, a row updated).
CREATE EXTENSION payments;

CREATE TABLE tcc_barrier (
    gid         text COLLATE "C" NOT NULL,
    branch_id   text COLLATE "C" NOT NULL,
    action      text,
    state       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gid, branch_id)
);

-- The ceiling: the baseline's two statements, each wrapped in a SQL
-- function as any function-based API wraps them, against the baseline.
-- No fence called as a function gets above this ratio on the machine at
-- hand: it is the price of the call itself, not of the fence's rules.
CREATE FUNCTION barrier_try(g text) RETURNS text LANGUAGE sql AS $$
    INSERT INTO tcc_barrier (gid, branch_id, action, state)
    VALUES (g, 'stock', 'reserve', 'tried') ON CONFLICT DO NOTHING
    RETURNING 'proceed'
$$;
CREATE FUNCTION barrier_confirm(g text) RETURNS text LANGUAGE sql AS $$
    UPDATE tcc_barrier SET state = 'confirmed', updated_at = now()
     WHERE gid = g AND branch_id = 'stock' AND state = 'tried'
    RETURNING 'proceed'
$$;
