-- State guard against no trigger and against the PL/pgSQL trigger an
-- application would write itself.  The machine is a two-state cycle, so
-- toggling a row's status is always legal and every transaction succeeds
-- under all three variants.
CREATE EXTENSION payments;
SELECT payments.define_state_machine('bench',
    '{"pending": ["active"], "active": ["pending"]}', '{pending}');

CREATE TABLE orders_guard (
    id int PRIMARY KEY,
    status text NOT NULL,
    amount bigint NOT NULL DEFAULT 4990
);
CREATE TABLE orders_plain (LIKE orders_guard INCLUDING ALL);
CREATE TABLE orders_plpgsql (LIKE orders_guard INCLUDING ALL);
INSERT INTO orders_guard (id, status) SELECT i, 'pending' FROM generate_series(1, 100000) AS i;
INSERT INTO orders_plain SELECT * FROM orders_guard;
INSERT INTO orders_plpgsql SELECT * FROM orders_guard;

SELECT payments.guard_state('orders_guard', 'status', 'bench');

-- The PL/pgSQL equivalent: edges in a table, the same history row per move.
CREATE TABLE transitions (
    machine text NOT NULL,
    from_state text NOT NULL,
    to_state text NOT NULL,
    PRIMARY KEY (machine, from_state, to_state)
);
INSERT INTO transitions VALUES ('bench', 'pending', 'active'), ('bench', 'active', 'pending');
CREATE TABLE plpgsql_history (
    id bigserial PRIMARY KEY,
    tbl regclass NOT NULL,
    col text NOT NULL,
    row_key text NOT NULL,
    from_state text,
    to_state text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_by text NOT NULL
);
CREATE FUNCTION plpgsql_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
        RETURN NEW;
    END IF;
    IF NOT EXISTS (SELECT FROM transitions
                    WHERE machine = TG_ARGV[0]
                      AND from_state = OLD.status AND to_state = NEW.status) THEN
        RAISE EXCEPTION USING ERRCODE = 'PM201',
            MESSAGE = format('invalid transition from %L to %L', OLD.status, NEW.status);
    END IF;
    INSERT INTO plpgsql_history (tbl, col, row_key, from_state, to_state, changed_by)
    VALUES (TG_RELID, 'status', NEW.id::text, OLD.status, NEW.status, current_user);
    RETURN NEW;
END
$$;
CREATE TRIGGER guard BEFORE UPDATE OF status ON orders_plpgsql
    FOR EACH ROW EXECUTE FUNCTION plpgsql_guard('bench');

-- The ceiling of vs-no-trigger: the same history row written by the
-- no-trigger UPDATE's own statement (update_history.sql), into a table of
-- payments.state_history's columns and primary key.
CREATE TABLE ceiling_history (
    id bigserial PRIMARY KEY,
    tbl regclass NOT NULL,
    col text NOT NULL,
    row_key text NOT NULL,
    from_state text,
    to_state text NOT NULL,
    changed_at timestamptz NOT NULL DEFAULT now(),
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    changed_by text NOT NULL
);
VACUUM ANALYZE;
