--
-- State guard: a status column guarded by a declared state machine only
-- moves along the machine's edges, from an initial state; every accepted
-- move is recorded once in the history, refused ones change nothing;
-- redefinitions are seen at once, by this session and others; hostile
-- identifiers, privileges and partitioned tables.  Every error below is
-- followed by its SQLSTATE.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never

--
-- Defining machines
--
SELECT payments.define_state_machine('order', '{
    "created": ["awaiting_payment", "cancelled"],
    "awaiting_payment": ["paid", "cancelled", "expired"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}');
-- every state named is listed; terminal ones have no next states; the
-- default initial states are those no edge leads to
SELECT * FROM payments.state_machines ORDER BY machine, state;
-- the stored form is normalized: every state a key, no duplicate edges
SELECT payments.define_state_machine('dup', '{"a": ["b", "b", "a"]}');
SELECT transitions, initial FROM payments.state_machine_definitions WHERE name = 'dup';

-- bad definitions are refused and change nothing
SELECT payments.define_state_machine(NULL, '{"a": []}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('', '{"a": []}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine(repeat('m', 64), '{"a": []}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '["a", "b"]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '"a"');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": "b"}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": null}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": ["b", 1]}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": [["b"]]}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": [""]}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', jsonb_build_object('a', jsonb_build_array(repeat('x', 256))));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": ["b"]}', '{c}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": ["b"]}', '{a,NULL}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('bad', '{"a": ["b"]}', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a cycle has no state without an incoming edge: initial must be given
SELECT payments.define_state_machine('bad', '{"on": ["off"], "off": ["on"]}');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.state_machine_definitions WHERE name = 'bad';
SELECT payments.define_state_machine('toggle', '{"on": ["off"], "off": ["on"]}', '{off}');
SELECT state, initial, terminal, next_states FROM payments.state_machines
 WHERE machine = 'toggle' ORDER BY state;

--
-- Guarding a table
--
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    status text NOT NULL DEFAULT 'created',
    amount bigint NOT NULL DEFAULT 0,
    note text
);
CREATE TABLE no_pk (id int, status text);
CREATE VIEW orders_view AS SELECT * FROM orders;

-- errors at guard_state time, not at the first UPDATE
SELECT payments.guard_state('orders', 'missing', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('orders', 'amount', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('orders', 'ctid', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('no_pk', 'status', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('orders', 'status', 'no such machine');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('orders_view', 'status', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state(NULL, 'status', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('orders', NULL, 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('orders', 'status', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass;

SELECT payments.guard_state('orders', 'status', 'order');
SELECT tgname, tgtype, tgattr, encode(tgargs, 'escape') AS tgargs
  FROM pg_trigger WHERE tgrelid = 'orders'::regclass ORDER BY tgname;
SELECT payments.guard_state('orders', 'status', 'toggle');
\echo :LAST_ERROR_SQLSTATE

--
-- INSERT must use an initial state
--
INSERT INTO orders (id) VALUES (1);
INSERT INTO orders (id, status) VALUES (2, 'created'), (3, 'created'), (4, 'created');
INSERT INTO orders (id, status) VALUES (5, 'paid');
\echo :LAST_ERROR_SQLSTATE
INSERT INTO orders (id, status) VALUES (5, 'shiped');
\echo :LAST_ERROR_SQLSTATE
-- a NULL state: the column's own NOT NULL constraint comes first
INSERT INTO orders (id, status) VALUES (5, NULL);
\echo :LAST_ERROR_SQLSTATE

--
-- UPDATE must follow an edge
--
UPDATE orders SET status = 'awaiting_payment' WHERE id IN (1, 2, 3);
UPDATE orders SET status = 'paid' WHERE id = 1;
UPDATE orders SET status = 'cancelled' WHERE id = 2;
-- an unchanged state is accepted and not recorded
UPDATE orders SET status = 'paid', note = 'callback redelivered' WHERE id = 1;
-- updates that do not touch the column are not checked at all
UPDATE orders SET amount = 100;
-- illegal moves: PM201, and nothing changes
UPDATE orders SET status = 'paid' WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
UPDATE orders SET status = 'shipped' WHERE id = 3;
\echo :LAST_ERROR_SQLSTATE
UPDATE orders SET status = 'completed' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
-- an unknown state: PM202
UPDATE orders SET status = 'shiped' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
-- one bad row fails the whole statement
UPDATE orders SET status = 'cancelled' WHERE id IN (1, 3, 4);
\echo :LAST_ERROR_SQLSTATE
SELECT id, status, note FROM orders ORDER BY id;
-- the error names the schema, table and column in its fields
DO $$
DECLARE
    s text; t text; c text; st text;
BEGIN
    UPDATE orders SET status = 'paid' WHERE id = 2;
EXCEPTION WHEN SQLSTATE 'PM201' THEN
    GET STACKED DIAGNOSTICS s = SCHEMA_NAME, t = TABLE_NAME, c = COLUMN_NAME, st = RETURNED_SQLSTATE;
    RAISE NOTICE 'sqlstate %, schema %, table %, column %', st, s, t, c;
END
$$;

--
-- History: one row per accepted change, none for refused or unchanged ones
--
SELECT tbl, col, row_key, from_state, to_state,
       changed_by = current_user AS by_me,
       txid IS NOT NULL AS has_txid, changed_at <= now() AS at
  FROM payments.state_history ORDER BY id;
-- a move inside a transaction is recorded with that transaction's id
BEGIN;
UPDATE orders SET status = 'shipped' WHERE id = 1;
SELECT txid = pg_current_xact_id() AS same_txid, changed_at = now() AS same_now,
       id = currval('payments.state_history_id_seq') AS from_sequence
  FROM payments.state_history ORDER BY id DESC LIMIT 1;
ROLLBACK;
-- the history row is written like any other row: a constraint or trigger a
-- DBA adds to the history table applies to it, and a refusal refuses the move
BEGIN;
ALTER TABLE payments.state_history
    ADD CONSTRAINT no_shipping CHECK (to_state <> 'shipped');
\set VERBOSITY terse
UPDATE orders SET status = 'shipped' WHERE id = 1;
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
CREATE FUNCTION pg_temp.history_seen() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'history row for % as %', NEW.row_key, current_user;
    RETURN NEW;
END
$$;
CREATE TRIGGER seen AFTER INSERT ON payments.state_history
    FOR EACH ROW EXECUTE FUNCTION pg_temp.history_seen();
UPDATE orders SET status = 'shipped' WHERE id = 1;
ROLLBACK;
-- an index a DBA adds to the history table (the README's, for one row's
-- history) gets every move: the lookup below can only use the index
BEGIN;
CREATE INDEX history_by_row ON payments.state_history (tbl, row_key, id);
UPDATE orders SET status = 'shipped' WHERE id = 1;
SET LOCAL enable_seqscan = off;
SET LOCAL enable_bitmapscan = off;
CREATE FUNCTION pg_temp.plan_top(query text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    EXECUTE 'EXPLAIN (COSTS OFF) ' || query INTO line;  -- the top plan node
    RETURN line;
END
$$;
SELECT pg_temp.plan_top($$SELECT from_state, to_state FROM payments.state_history
 WHERE tbl = 'orders'::regclass AND row_key = '1' ORDER BY id$$);
SELECT from_state, to_state FROM payments.state_history
 WHERE tbl = 'orders'::regclass AND row_key = '1' ORDER BY id;
ROLLBACK;
-- a read-only transaction may write a guarded temporary table, but not
-- the history of the move: the move is refused (25006)
CREATE TEMP TABLE temp_orders (id int PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('temp_orders', 'status', 'order');
INSERT INTO temp_orders VALUES (1, 'created');
BEGIN READ ONLY;
UPDATE temp_orders SET status = 'cancelled' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT status FROM temp_orders;
DELETE FROM payments.state_history WHERE tbl = 'temp_orders'::regclass;
DROP TABLE temp_orders;
-- a history table altered by hand is refused with a clear error, not
-- written with values in the wrong columns
BEGIN;
ALTER TABLE payments.state_history ADD COLUMN note text;
UPDATE orders SET status = 'shipped' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- and goes away with it
SELECT count(*) FROM payments.state_history WHERE row_key = '1' AND to_state = 'shipped';

-- INSERT ... ON CONFLICT DO NOTHING records nothing for the row it did not insert
INSERT INTO orders (id, status) VALUES (1, 'created') ON CONFLICT DO NOTHING;
-- ... and ON CONFLICT DO UPDATE is checked (and recorded) as the update it becomes
INSERT INTO orders (id, status) VALUES (3, 'created')
    ON CONFLICT (id) DO UPDATE SET status = 'expired';
INSERT INTO orders (id, status) VALUES (4, 'created')
    ON CONFLICT (id) DO UPDATE SET status = 'paid';
\echo :LAST_ERROR_SQLSTATE
SELECT row_key, from_state, to_state FROM payments.state_history
 WHERE id > (SELECT max(id) - 2 FROM payments.state_history) ORDER BY id;

-- a later BEFORE trigger that skips the row leaves no history either
CREATE FUNCTION skip_row() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RETURN NULL; END $$;
CREATE TRIGGER zz_skip BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (NEW.note = 'skip') EXECUTE FUNCTION skip_row();
UPDATE orders SET status = 'awaiting_payment', note = 'skip' WHERE id = 4;
SELECT id, status FROM orders WHERE id = 4;
SELECT count(*) FROM payments.state_history WHERE row_key = '4' AND to_state = 'awaiting_payment';
DROP TRIGGER zz_skip ON orders;

-- the guard checks the row as written: a BEFORE trigger that changes the
-- state after the UPDATE chose it is checked too
CREATE FUNCTION force_completed() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN NEW.status := 'completed'; RETURN NEW; END $$;
CREATE TRIGGER zz_force BEFORE UPDATE ON orders FOR EACH ROW
    WHEN (NEW.note = 'force') EXECUTE FUNCTION force_completed();
UPDATE orders SET status = 'awaiting_payment', note = 'force' WHERE id = 4;
\echo :LAST_ERROR_SQLSTATE
DROP TRIGGER zz_force ON orders;
-- in INSERT ... ON CONFLICT DO UPDATE only the update that happens is
-- checked: the proposed row need not be in an initial state
INSERT INTO orders (id, status) VALUES (4, 'awaiting_payment')
    ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status;
SELECT id, status FROM orders WHERE id = 4;
SELECT row_key, from_state, to_state FROM payments.state_history
 ORDER BY id DESC LIMIT 1;

-- a nullable state column: NULL is not a state
CREATE TABLE loose (id int PRIMARY KEY, status text);
INSERT INTO loose VALUES (1, NULL), (2, 'off');
SELECT payments.guard_state('loose', 'status', 'toggle');
INSERT INTO loose VALUES (3, NULL);
\echo :LAST_ERROR_SQLSTATE
UPDATE loose SET status = NULL WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
-- a row that is NULL from before the guard cannot move; NULL again is no move
UPDATE loose SET status = 'on' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
UPDATE loose SET status = NULL WHERE id = 1;
SELECT * FROM loose ORDER BY id;
DROP TABLE loose;

-- the column may be renamed: the guard follows it
ALTER TABLE orders RENAME COLUMN status TO state;
UPDATE orders SET state = 'refunded' WHERE id = 1;
UPDATE orders SET state = 'created' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
SELECT col, row_key, from_state, to_state FROM payments.state_history ORDER BY id DESC LIMIT 1;
ALTER TABLE orders RENAME COLUMN state TO status;

--
-- Redefinition
--
-- in this session, inside a transaction: seen from the next statement
BEGIN;
UPDATE orders SET status = 'awaiting_payment' WHERE id = 4;
UPDATE orders SET status = 'created' WHERE id = 4;   -- no such edge yet
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
BEGIN;
UPDATE orders SET status = 'awaiting_payment' WHERE id = 4;
SELECT payments.define_state_machine('order', '{
    "created": ["awaiting_payment", "cancelled"],
    "awaiting_payment": ["created", "paid", "cancelled", "expired"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}', '{created}');
UPDATE orders SET status = 'created' WHERE id = 4;
ROLLBACK;
-- the rolled-back definition is gone for this session too
BEGIN;
UPDATE orders SET status = 'awaiting_payment' WHERE id = 4;
UPDATE orders SET status = 'created' WHERE id = 4;
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;

-- by another session, committed while this one has the machine cached
CREATE EXTENSION dblink;
SELECT dblink_connect('other', format('dbname=%s host=%s port=%s',
    current_database(), split_part(current_setting('unix_socket_directories'), ',', 1),
    current_setting('port')));
UPDATE orders SET status = 'awaiting_payment' WHERE id = 4;
SELECT * FROM dblink('other', $$SELECT payments.define_state_machine('order', '{
    "created": ["awaiting_payment", "cancelled"],
    "awaiting_payment": ["created", "paid", "cancelled", "expired"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}', '{created}')::text$$) AS t(defined text);
UPDATE orders SET status = 'created' WHERE id = 4;
-- and in a REPEATABLE READ transaction whose snapshot predates it
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT status FROM orders WHERE id = 4;
SELECT * FROM dblink('other', $$SELECT payments.define_state_machine('order', '{
    "created": ["awaiting_payment", "cancelled"],
    "awaiting_payment": ["paid", "cancelled", "expired"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}')::text$$) AS t(defined text);
UPDATE orders SET status = 'awaiting_payment' WHERE id = 4;
UPDATE orders SET status = 'created' WHERE id = 4;   -- the edge is gone again
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a state removed by a redefinition: rows still in it cannot move (PM202)
SELECT * FROM dblink('other', $$SELECT payments.define_state_machine('order', '{
    "created": ["awaiting_payment", "cancelled"],
    "awaiting_payment": ["paid", "cancelled"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}')::text$$) AS t(defined text);
UPDATE orders SET status = 'cancelled' WHERE id = 3;
\echo :LAST_ERROR_SQLSTATE
SELECT dblink_disconnect('other');
DROP EXTENSION dblink;

--
-- Hostile identifiers, composite keys and other column types
--
CREATE SCHEMA "My Schema";
CREATE TYPE "My Schema"."Order State" AS ENUM ('created', 'awaiting_payment', 'paid', 'cancelled');
CREATE DOMAIN "My Schema".code AS varchar(20) CHECK (VALUE <> '');
CREATE TABLE "My Schema"."Order ""Book"" 1" (
    "Shop ID" text,
    "Order, No." int,
    "Status Col" "My Schema"."Order State" NOT NULL,
    "pay""State" char(20) NOT NULL DEFAULT 'created',
    "Code" "My Schema".code NOT NULL DEFAULT 'created',
    PRIMARY KEY ("Shop ID", "Order, No.")
);
SELECT payments.guard_state('"My Schema"."Order ""Book"" 1"', 'Status Col', 'order');
SELECT payments.guard_state('"My Schema"."Order ""Book"" 1"', 'pay"State', 'order');
SELECT payments.define_state_machine('it''s "quoted"', '{"created": ["paid"]}');
SELECT payments.guard_state('"My Schema"."Order ""Book"" 1"', 'Code', 'it''s "quoted"');
INSERT INTO "My Schema"."Order ""Book"" 1" ("Shop ID", "Order, No.", "Status Col")
VALUES ('shop "A", (east)', 7, 'created');
UPDATE "My Schema"."Order ""Book"" 1"
   SET "Status Col" = 'awaiting_payment', "pay""State" = 'awaiting_payment', "Code" = 'paid';
UPDATE "My Schema"."Order ""Book"" 1" SET "Status Col" = 'created';
\echo :LAST_ERROR_SQLSTATE
UPDATE "My Schema"."Order ""Book"" 1" SET "pay""State" = 'shipped';
\echo :LAST_ERROR_SQLSTATE
UPDATE "My Schema"."Order ""Book"" 1" SET "Code" = 'created';
\echo :LAST_ERROR_SQLSTATE
SELECT tbl, col, row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = '"My Schema"."Order ""Book"" 1"'::regclass ORDER BY id;
-- the composite key reads back as a row
CREATE TYPE "My Schema".order_key AS ("Shop ID" text, "Order, No." int);
SELECT (row_key::"My Schema".order_key).* FROM payments.state_history
 WHERE tbl = '"My Schema"."Order ""Book"" 1"'::regclass LIMIT 1;
SELECT payments.unguard_state('"My Schema"."Order ""Book"" 1"', 'pay"State');
SELECT tgname FROM pg_trigger
 WHERE tgrelid = '"My Schema"."Order ""Book"" 1"'::regclass ORDER BY tgname;

--
-- Privileges: the guard runs for any writer; guarding needs rights on the table
--
CREATE ROLE state_guard_app LOGIN IN ROLE payments_app;
CREATE ROLE state_guard_other LOGIN IN ROLE payments_app;
GRANT SELECT, INSERT, UPDATE ON orders TO state_guard_app;
SET ROLE state_guard_app;
INSERT INTO orders (id) VALUES (10);
UPDATE orders SET status = 'awaiting_payment' WHERE id = 10;
UPDATE orders SET status = 'completed' WHERE id = 10;
\echo :LAST_ERROR_SQLSTATE
SELECT machine, count(*) FROM payments.state_machines GROUP BY machine ORDER BY machine;
SELECT count(*) FROM payments.state_history;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unguard_state('orders', 'status');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- guarding needs the TRIGGER privilege, unguarding needs ownership
CREATE TABLE app_orders (id int PRIMARY KEY, status text NOT NULL);
GRANT TRIGGER ON app_orders TO state_guard_other;
SET ROLE state_guard_other;
SELECT payments.guard_state('no_pk', 'status', 'order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('app', '{"new": ["done"]}');
SELECT payments.guard_state('app_orders', 'status', 'app');
SELECT payments.unguard_state('app_orders', 'status');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
INSERT INTO app_orders VALUES (1, 'done');
\echo :LAST_ERROR_SQLSTATE
SELECT defined_by FROM payments.state_machine_definitions WHERE name = 'app';
SELECT row_key, from_state, to_state, changed_by FROM payments.state_history
 WHERE row_key = '10' ORDER BY id;
-- a search_path with look-alike objects changes nothing the guard runs,
-- even in a new session whose first use prepares the guard's queries
CREATE SCHEMA evil;
CREATE FUNCTION evil.texteq_evil(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq_evil);
\c
SET search_path = evil, public, pg_catalog;
UPDATE orders SET status = 'paid' WHERE id = 10;
UPDATE orders SET status = 'awaiting_payment' WHERE id = 10;
\echo :LAST_ERROR_SQLSTATE
RESET search_path;
DROP SCHEMA evil CASCADE;

--
-- unguard
--
SELECT payments.unguard_state('orders', 'status');
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'orders'::regclass;
UPDATE orders SET status = 'anything' WHERE id = 1;
SELECT payments.unguard_state('orders', 'status');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unguard_state('orders', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unguard_state('orders', NULL);
\echo :LAST_ERROR_SQLSTATE
-- and guard again: the row in an undefined state cannot move until fixed
SELECT payments.guard_state('orders', 'status', 'order');
UPDATE orders SET status = 'created' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE

--
-- Partitioned tables: guarded as a whole, at the root of the tree; a row
-- that an UPDATE moves to another partition (a DELETE and an INSERT to
-- row triggers) is checked and recorded as one move
--
SELECT payments.define_state_machine('porder', '{
    "created": ["paid", "cancelled"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}');
CREATE TABLE porders (
    id int,
    region text,
    status text NOT NULL,
    PRIMARY KEY (id, region)
) PARTITION BY LIST (region);
CREATE TABLE porders_eu PARTITION OF porders FOR VALUES IN ('eu');
CREATE TABLE porders_us PARTITION OF porders FOR VALUES IN ('us');
-- a partition cannot be guarded on its own
SELECT payments.guard_state('porders_eu', 'status', 'porder');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.guard_state('porders', 'status', 'porder');
-- every partition gets the trigger, also one created later
CREATE TABLE porders_other PARTITION OF porders DEFAULT;
SELECT tgrelid::regclass, tgname, tgparentid <> 0 AS cloned, tgtype, tgattr
  FROM pg_trigger WHERE tgrelid IN ('porders'::regclass, 'porders_eu'::regclass,
                                    'porders_us'::regclass, 'porders_other'::regclass)
 ORDER BY tgrelid::regclass::text;
INSERT INTO porders VALUES (1, 'eu', 'created'), (2, 'eu', 'created'), (3, 'us', 'created');
INSERT INTO porders VALUES (4, 'eu', 'paid');
\echo :LAST_ERROR_SQLSTATE
UPDATE porders SET status = 'paid' WHERE id IN (1, 2);
-- a move that keeps the state is accepted and not recorded
UPDATE porders SET region = 'us' WHERE id = 1;
-- a move along an edge is accepted and recorded as one update
UPDATE porders SET region = 'eu', status = 'shipped' WHERE id = 1;
-- a move off the machine is refused (PM201), even to an initial state, which
-- a fresh insert could have used; the row stays where it was
UPDATE porders SET region = 'us', status = 'created' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
UPDATE porders SET region = 'us', status = 'completed' WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
-- a state the machine does not define (PM202)
UPDATE porders SET region = 'us', status = 'lost' WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
-- one row's bad move fails the whole statement
UPDATE porders SET region = 'other', status = 'shipped';
\echo :LAST_ERROR_SQLSTATE
SELECT tableoid::regclass, * FROM porders ORDER BY id;
-- several rows moving in one statement, each judged by its own old state
UPDATE porders SET region = CASE region WHEN 'eu' THEN 'other' ELSE 'eu' END,
       status = CASE status WHEN 'shipped' THEN 'completed'
                            WHEN 'paid' THEN 'refunded' ELSE 'cancelled' END;
SELECT tableoid::regclass, * FROM porders ORDER BY id;
-- the history names the partitioned table, the row by its key after the move
SELECT tbl, row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = 'porders'::regclass ORDER BY id;
-- a terminal state cannot be left by moving either
UPDATE porders SET region = 'us', status = 'paid' WHERE id = 3;
\echo :LAST_ERROR_SQLSTATE
-- a DELETE is not restricted and records nothing
DELETE FROM porders WHERE id = 3;
SELECT count(*) FROM payments.state_history WHERE tbl = 'porders'::regclass;

-- a table partitioned by the guarded column itself: moves to a closed state
-- change partition (and primary key)
CREATE TABLE parchive (
    id int,
    status text NOT NULL,
    PRIMARY KEY (id, status)
) PARTITION BY LIST (status);
CREATE TABLE parchive_open PARTITION OF parchive FOR VALUES IN ('created', 'paid', 'shipped');
CREATE TABLE parchive_closed PARTITION OF parchive DEFAULT;
SELECT payments.guard_state('parchive', 'status', 'porder');
INSERT INTO parchive VALUES (1, 'created'), (2, 'created');
UPDATE parchive SET status = 'paid' WHERE id = 1;
UPDATE parchive SET status = 'cancelled' WHERE id = 2;
UPDATE parchive SET status = 'completed' WHERE id = 1;
\echo :LAST_ERROR_SQLSTATE
UPDATE parchive SET status = 'created' WHERE id = 2;
\echo :LAST_ERROR_SQLSTATE
SELECT tableoid::regclass, * FROM parchive ORDER BY id;
SELECT row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = 'parchive'::regclass ORDER BY id;

-- sub-partitions: the guard of the root reaches every level
CREATE TABLE porders_apac PARTITION OF porders FOR VALUES IN ('jp', 'au')
    PARTITION BY LIST (region);
CREATE TABLE porders_jp PARTITION OF porders_apac FOR VALUES IN ('jp');
CREATE TABLE porders_au PARTITION OF porders_apac FOR VALUES IN ('au');
INSERT INTO porders VALUES (5, 'jp', 'created');
UPDATE porders SET region = 'au', status = 'paid' WHERE id = 5;
UPDATE porders SET region = 'eu', status = 'created' WHERE id = 5;
\echo :LAST_ERROR_SQLSTATE
UPDATE porders_apac SET region = 'jp', status = 'completed' WHERE id = 5;
\echo :LAST_ERROR_SQLSTATE
UPDATE porders SET region = 'eu', status = 'shipped' WHERE id = 5;
SELECT row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = 'porders'::regclass AND row_key LIKE '(5,%' ORDER BY id;
-- a statement that a trigger runs between the two halves of a move (here
-- an insert into the same table) is not taken for its second half
CREATE FUNCTION porders_spawn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO porders VALUES (OLD.id + 100, 'eu', 'created');
    RETURN NULL;
END
$$;
CREATE TRIGGER zz_spawn AFTER DELETE ON porders
    FOR EACH ROW EXECUTE FUNCTION porders_spawn();
UPDATE porders SET region = 'us', status = 'completed' WHERE id = 5;
DROP TRIGGER zz_spawn ON porders;
SELECT row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = 'porders'::regclass ORDER BY id DESC LIMIT 2;
-- a subtree cannot be guarded apart from its root
SELECT payments.guard_state('porders_apac', 'status', 'porder');
\echo :LAST_ERROR_SQLSTATE

-- a guarded table attached as a partition: its guard does not cover the
-- tree, so its guarded writes are refused until the root is guarded instead
CREATE TABLE shop (id int, region text, status text NOT NULL, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
CREATE TABLE shop_eu (id int, region text, status text NOT NULL, PRIMARY KEY (id, region));
SELECT payments.guard_state('shop_eu', 'status', 'porder');
ALTER TABLE shop ATTACH PARTITION shop_eu FOR VALUES IN ('eu');
INSERT INTO shop VALUES (1, 'eu', 'created');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unguard_state('shop_eu', 'status');
SELECT payments.guard_state('shop', 'status', 'porder');
INSERT INTO shop VALUES (1, 'eu', 'created');
-- so is a guarded partitioned table attached under another
CREATE TABLE world (id int, region text, status text NOT NULL, PRIMARY KEY (id, region))
    PARTITION BY LIST (region);
ALTER TABLE world ATTACH PARTITION shop FOR VALUES IN ('eu');
UPDATE world SET status = 'paid';
\echo :LAST_ERROR_SQLSTATE
ALTER TABLE world DETACH PARTITION shop;
UPDATE shop SET status = 'paid';
-- a detached partition leaves the guard behind
ALTER TABLE shop DETACH PARTITION shop_eu;
UPDATE shop_eu SET status = 'anything';
SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop_eu'::regclass;
DROP TABLE porders, parchive, shop, shop_eu, world;
DROP FUNCTION porders_spawn();

DROP TABLE orders, no_pk, app_orders CASCADE;
DROP SCHEMA "My Schema" CASCADE;
DROP ROLE state_guard_app, state_guard_other;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
