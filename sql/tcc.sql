--
-- TCC fence: every phase of a branch in every order, each told to proceed
-- at most once; the empty rollback and the suspended late Try; the
-- errors; branches of one role are not another's; the stuck view; the
-- purge keeps live rows.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
CREATE ROLE regress_tcc_alice LOGIN;
CREATE ROLE regress_tcc_bob LOGIN;
GRANT payments_app TO regress_tcc_alice, regress_tcc_bob;
SET ROLE regress_tcc_alice;

-- Try, Try again, Confirm, Confirm again, Cancel after Confirm
SELECT payments.tcc_try('g1', 'stock', 'reserve');
SELECT payments.tcc_try('g1', 'stock', 'reserve');
SELECT payments.tcc_confirm('g1', 'stock');
SELECT payments.tcc_confirm('g1', 'stock');
\set VERBOSITY sqlstate
SELECT payments.tcc_cancel('g1', 'stock');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.tcc_cancel('g1', 'stock');

-- Try, Cancel, Cancel again, a late Try retried, Confirm after Cancel
SELECT payments.tcc_try('g2', 'stock');
SELECT payments.tcc_cancel('g2', 'stock');
SELECT payments.tcc_cancel('g2', 'stock');
SELECT payments.tcc_try('g2', 'stock');
\set VERBOSITY sqlstate
SELECT payments.tcc_confirm('g2', 'stock');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default

-- Cancel before any Try: empty, and the late Try is suspended
SELECT payments.tcc_cancel('g3', 'points');
SELECT payments.tcc_cancel('g3', 'points');
SELECT payments.tcc_try('g3', 'points');
SELECT payments.tcc_confirm('g3', 'points');

-- Confirm without a Try
SELECT payments.tcc_confirm('g4', 'points');

-- A Try whose transaction rolls back leaves nothing: its Cancel is empty
BEGIN;
SELECT payments.tcc_try('g5', 'stock');
ROLLBACK;
SELECT payments.tcc_cancel('g5', 'stock');

-- The branches, as the view shows them to their role
SELECT gid, branch_id, action, state, stuck FROM payments.tcc_branches ORDER BY gid, branch_id;
SET payments.tcc_stuck_after = '1s';
SELECT payments.tcc_try('g6', 'stock');
RESET ROLE;
UPDATE payments.tcc_fence SET updated_at = now() - interval '1 minute' WHERE gid = 'g6';
SET ROLE regress_tcc_alice;
SET payments.tcc_stuck_after = '1s';
SELECT gid, state, stuck FROM payments.tcc_branches WHERE gid = 'g6';
RESET payments.tcc_stuck_after;

--
-- Another role's branches: bob's g1 is his own branch, and he sees, steers
-- and blocks nothing of alice's.
--
SET ROLE regress_tcc_bob;
SELECT count(*) FROM payments.tcc_branches;
SELECT payments.tcc_cancel('g6', 'stock');
SELECT payments.tcc_try('g1', 'stock');
SELECT count(*) FROM payments.tcc_fence;
\echo :LAST_ERROR_SQLSTATE
SELECT gid, branch_id, state FROM payments.tcc_branches ORDER BY gid;
SET ROLE regress_tcc_alice;
SELECT state FROM payments.tcc_branches WHERE gid = 'g6';
SELECT payments.tcc_confirm('g6', 'stock');

--
-- Bad input: 22004, 22023, nothing written
--
RESET ROLE;
SELECT count(*) AS branches FROM payments.tcc_fence \gset
SET ROLE regress_tcc_alice;
\set VERBOSITY sqlstate
SELECT payments.tcc_try(NULL, 'b');
SELECT payments.tcc_try('g', NULL);
SELECT payments.tcc_confirm(NULL, 'b');
SELECT payments.tcc_cancel('g', NULL);
SELECT payments.tcc_try('', 'b');
SELECT payments.tcc_try('g', '');
SELECT payments.tcc_try(repeat('g', 256), 'b');
SELECT payments.tcc_try('g', repeat('b', 256));
SELECT payments.tcc_try('g', 'b', repeat('a', 256));
SELECT payments.tcc_try('g', 'b', '');
\set VERBOSITY default
RESET ROLE;
SELECT count(*) = :branches AS unchanged FROM payments.tcc_fence;
-- ids of 255 bytes are fine
SELECT payments.tcc_try(repeat('g', 255), repeat('b', 255));

--
-- The purge: branches that finished past the retention go; tried ones,
-- recent ones, and one tried long ago but confirmed just now stay.
--
UPDATE payments.tcc_fence SET created_at = now() - interval '8 days',
                              updated_at = now() - interval '8 days';
SET ROLE regress_tcc_alice;
SELECT payments.tcc_cancel('g7', 'stock');
SELECT payments.tcc_try('g8', 'stock');
RESET ROLE;
UPDATE payments.tcc_fence SET created_at = now() - interval '8 days',
                              updated_at = now() - interval '8 days' WHERE gid = 'g8';
SET ROLE regress_tcc_alice;
SELECT payments.tcc_confirm('g8', 'stock');
RESET ROLE;
SELECT payments.purge_tcc_fence();
SELECT left(gid, 8) AS gid, owner, state FROM payments.tcc_fence ORDER BY 1, 2;
SET ROLE regress_tcc_alice;
SELECT payments.purge_tcc_fence();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

--
-- Many branches in one transaction: each call keeps nothing in the lock
-- table, so a batch of 20,000 Tries, Confirms and their retries commits.
--
SET ROLE regress_tcc_alice;
BEGIN;
SELECT count(*) FILTER (WHERE payments.tcc_try('batch', 'b-' || i) = 'proceed') AS tried
  FROM generate_series(1, 20000) i;
SELECT count(*) FILTER (WHERE payments.tcc_confirm('batch', 'b-' || i) = 'proceed') AS confirmed
  FROM generate_series(1, 20000) i;
SELECT count(*) FILTER (WHERE payments.tcc_confirm('batch', 'b-' || i) = 'duplicate') AS retried
  FROM generate_series(1, 20000) i;
COMMIT;
RESET ROLE;
DELETE FROM payments.tcc_fence WHERE gid = 'batch';

--
-- The table changed by a DBA: a column added and dropped again changes
-- nothing; a BEFORE ROW trigger, which could change or skip the row the
-- fence decides on, is refused; an AFTER ROW trigger fires, as the caller;
-- a state the fence never writes is reported, not acted on; a primary key
-- rebuilt as a partial index is refused.
--
ALTER TABLE payments.tcc_fence ADD COLUMN note text;
SET ROLE regress_tcc_alice;
SELECT payments.tcc_try('ddl-1', 'stock');
RESET ROLE;
ALTER TABLE payments.tcc_fence DROP COLUMN note;
SET ROLE regress_tcc_alice;
SELECT payments.tcc_confirm('ddl-1', 'stock');
SELECT payments.tcc_try('ddl-2', 'stock');
RESET ROLE;

CREATE TABLE public.tcc_audit (who name, gid text, state text);
GRANT INSERT ON public.tcc_audit TO regress_tcc_alice;
CREATE FUNCTION public.tcc_audit_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.tcc_audit VALUES (current_user, NEW.gid, NEW.state);
    RETURN NEW;
END $$;
CREATE TRIGGER tcc_audit_after AFTER INSERT OR UPDATE ON payments.tcc_fence
    FOR EACH ROW EXECUTE FUNCTION public.tcc_audit_row();
CREATE TRIGGER tcc_audit_before BEFORE UPDATE ON payments.tcc_fence
    FOR EACH ROW EXECUTE FUNCTION public.tcc_audit_row();
SET ROLE regress_tcc_alice;
\set VERBOSITY sqlstate
SELECT payments.tcc_cancel('ddl-2', 'stock');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.tcc_cancel('ddl-2', 'stock');
RESET ROLE;
DROP TRIGGER tcc_audit_before ON payments.tcc_fence;
SET ROLE regress_tcc_alice;
SELECT payments.tcc_cancel('ddl-2', 'stock');
SELECT payments.tcc_try('ddl-3', 'stock');
RESET ROLE;
SELECT * FROM public.tcc_audit ORDER BY gid, state;
DROP TRIGGER tcc_audit_after ON payments.tcc_fence;
DROP TABLE public.tcc_audit;
DROP FUNCTION public.tcc_audit_row();

ALTER TABLE payments.tcc_fence DROP CONSTRAINT tcc_fence_state_check;
UPDATE payments.tcc_fence SET state = 'half-done' WHERE gid = 'ddl-3';
SET ROLE regress_tcc_alice;
SELECT payments.tcc_confirm('ddl-3', 'stock');
RESET ROLE;
ALTER TABLE payments.tcc_fence ALTER COLUMN state DROP NOT NULL;
UPDATE payments.tcc_fence SET state = NULL WHERE gid = 'ddl-3';
SET ROLE regress_tcc_alice;
\set VERBOSITY sqlstate
SELECT payments.tcc_try('ddl-3', 'stock');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
RESET ROLE;
DELETE FROM payments.tcc_fence WHERE gid = 'ddl-3';
ALTER TABLE payments.tcc_fence ALTER COLUMN state SET NOT NULL;
ALTER TABLE payments.tcc_fence ADD CONSTRAINT tcc_fence_state_check
    CHECK (state IN ('tried', 'confirmed', 'cancelled', 'suspended'));

ALTER TABLE payments.tcc_fence DROP CONSTRAINT tcc_fence_pkey;
CREATE UNIQUE INDEX tcc_fence_pkey ON payments.tcc_fence (owner, gid, branch_id)
    WHERE state <> 'suspended';
SET ROLE regress_tcc_alice;
SELECT payments.tcc_try('ddl-4', 'stock');
RESET ROLE;
DROP INDEX payments.tcc_fence_pkey;
ALTER TABLE payments.tcc_fence ADD PRIMARY KEY (owner, gid, branch_id);
SET ROLE regress_tcc_alice;
SELECT payments.tcc_try('ddl-4', 'stock');
RESET ROLE;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP ROLE regress_tcc_alice, regress_tcc_bob;
