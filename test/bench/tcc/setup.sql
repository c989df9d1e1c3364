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
