--
-- Inventory reservations: stock in slots, reserve (one SKU or several, all
-- or nothing), confirm and release once, orders, TTLs and expiry,
-- stock_adjust, and the rights the calls run with.  Every refused call has
-- its SQLSTATE and changes nothing: the ledger (slots + held + sold =
-- received) is checked as it goes.
--
CREATE EXTENSION payments;

-- Per SKU: units in slots + held + sold must equal what was received.
CREATE TEMP TABLE received (sku text PRIMARY KEY, units bigint);
CREATE FUNCTION pg_temp.ledger() RETURNS TABLE (sku text, slots bigint, held bigint, sold bigint, received bigint, balanced boolean)
LANGUAGE sql AS $$
    SELECT s.sku,
           (SELECT sum(available) FROM payments.stock_slots sl WHERE sl.sku = s.sku)::bigint,
           (SELECT coalesce(sum(qty), 0) FROM payments.reservations r WHERE r.sku = s.sku AND state = 'held')::bigint,
           (SELECT coalesce(sum(qty), 0) FROM payments.reservations r WHERE r.sku = s.sku AND state = 'confirmed')::bigint,
           rc.units,
           (SELECT sum(available) FROM payments.stock_slots sl WHERE sl.sku = s.sku)
             + (SELECT coalesce(sum(qty), 0) FROM payments.reservations r WHERE r.sku = s.sku AND state IN ('held', 'confirmed'))
             = rc.units
      FROM payments.stock s LEFT JOIN received rc USING (sku)
     ORDER BY 1
$$;

-- Stock: create, read, split into slots
SELECT payments.stock_set('apple', 10);
SELECT payments.stock_set('pear', 7, slots => 3);
INSERT INTO received VALUES ('apple', 10), ('pear', 7);
SELECT * FROM payments.stock_levels ORDER BY sku;
SELECT sku, slot, available FROM payments.stock_slots ORDER BY sku, slot;
SELECT sku, slots FROM payments.stock ORDER BY sku;

-- stock_set: bad arguments
SELECT payments.stock_set(NULL, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set(repeat('x', 256), 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('apple', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('apple', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('apple', 1000000000000001);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('apple', 1, slots => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('apple', 1, slots => 1025);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.stock_levels ORDER BY sku;

-- reserve one SKU: returns the reservation id; the hold is 'held'
SELECT payments.reserve('order-1', 'apple', 3);
SELECT id, order_ref, sku, qty, state, resolved_at IS NULL AS open,
       expires_at - created_at > interval '14 minutes' AND expires_at - created_at < interval '16 minutes' AS ttl_15min
  FROM payments.reservations ORDER BY id;
SELECT payments.reserve('order-2', 'pear', 2, ttl => '1 hour');
SELECT * FROM payments.stock_levels ORDER BY sku;

-- reserve: bad arguments and refusals change nothing
SELECT payments.reserve('o', 'apple', 8);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'plum', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', NULL::bigint);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve(NULL, 'apple', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('', 'apple', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve(repeat('o', 256), 'apple', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', NULL::text, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', 1, '0 seconds');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', 1, '-5 minutes');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', 1, '31 days');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', 'apple', 1, '1000000 years');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS reservations FROM payments.reservations;
SELECT * FROM payments.stock_levels ORDER BY sku;

-- reserve several SKUs: ids in item order, SKUs taken in byte order
SELECT payments.reserve('order-3', '[{"sku": "pear", "qty": 1}, {"sku": "apple", "qty": 2}]');
SELECT id, order_ref, sku, qty, state FROM payments.reservations WHERE order_ref = 'order-3' ORDER BY id;
SELECT * FROM payments.stock_levels ORDER BY sku;

-- all or nothing: one short SKU, or an unknown one, and no item is held
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1}, {"sku": "pear", "qty": 5}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1}, {"sku": "plum", "qty": 1}]');
\echo :LAST_ERROR_SQLSTATE
-- malformed items
SELECT payments.reserve('o', NULL::jsonb);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '{"sku": "apple", "qty": 1}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '"apple"');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[1]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1, "note": "x"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": 1, "qty": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": null, "qty": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "", "qty": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": "1"}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1.5}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 0}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1e30}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1}, {"sku": "apple", "qty": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', (SELECT jsonb_agg(jsonb_build_object('sku', 's' || i, 'qty', 1)) FROM generate_series(1, 1001) i));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.reserve('o', '[{"sku": "apple", "qty": 1}]'::jsonb, '0 seconds');
\echo :LAST_ERROR_SQLSTATE
-- a whole number written with a fraction or exponent is a whole number
SELECT array_length(payments.reserve('order-4', '[{"sku": "apple", "qty": 1.0}, {"sku": "pear", "qty": 1e0}]'), 1) AS holds;
SELECT count(*) AS reservations FROM payments.reservations;
SELECT * FROM payments.stock_levels ORDER BY sku;
SELECT * FROM pg_temp.ledger();

-- confirm: the hold becomes a sale (on_hand and held both drop), once
SELECT payments.confirm_reservation(1);
SELECT payments.confirm_reservation(1);
SELECT id, state, resolved_at IS NOT NULL AS resolved FROM payments.reservations WHERE id = 1;
SELECT * FROM payments.stock_levels ORDER BY sku;
-- release: the stock comes back, once; a confirmed hold cannot be released
SELECT payments.release_reservation(2);
SELECT payments.release_reservation(2);
SELECT payments.release_reservation(1);
\echo :LAST_ERROR_SQLSTATE
-- confirm after release: PM102; unknown id: PM105
SELECT payments.confirm_reservation(2);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.confirm_reservation(999);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_reservation(999);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.confirm_reservation(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_reservation(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT id, state FROM payments.reservations ORDER BY id;
SELECT * FROM payments.stock_levels ORDER BY sku;
SELECT * FROM pg_temp.ledger();
-- a confirm sees what its statement wrote before it: a hold reserved in
-- the same SELECT, and a confirm of that hold earlier in the same SELECT
-- (rolled back, with the ids it used, so that later ids stay as they are)
SELECT last_value AS ids_before FROM payments.reservations_id_seq \gset
BEGIN;
SELECT payments.confirm_reservation(payments.reserve('same-statement', 'apple', 1)) AS confirmed;
SELECT payments.reserve('same-statement-2', 'apple', 1) AS same_id \gset
SELECT payments.confirm_reservation(:same_id) AS first,
       payments.confirm_reservation(:same_id) AS second;
-- an UPDATE OF state trigger added to the reservations fires for a confirm
CREATE FUNCTION pg_temp.hold_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'hold of % is now %', NEW.order_ref, NEW.state;
    RETURN NULL;
END
$$;
CREATE TRIGGER moved AFTER UPDATE OF state ON payments.reservations
    FOR EACH ROW EXECUTE FUNCTION pg_temp.hold_moved();
SELECT payments.confirm_reservation(payments.reserve('with-trigger', 'apple', 1)) AS confirmed;
ROLLBACK;
SELECT setval('payments.reservations_id_seq', :ids_before) > 0 AS ids_restored;
-- a reservations table altered by hand is refused with a clear error
-- (55000), not written with values in the wrong columns
BEGIN;
ALTER TABLE payments.reservations ADD COLUMN note text;
SELECT payments.reserve('altered', 'apple', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- and so is one whose primary key was rebuilt on other columns
BEGIN;
ALTER TABLE payments.stock_slots DROP CONSTRAINT stock_slots_pkey;
ALTER TABLE payments.stock_slots ADD PRIMARY KEY (slot, sku);
SELECT payments.reserve('altered', 'apple', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
-- a read-only transaction cannot confirm (25006), and the hold stays held
SELECT id AS held_id FROM payments.reservations WHERE state = 'held' ORDER BY id LIMIT 1 \gset
BEGIN READ ONLY;
SELECT payments.confirm_reservation(:held_id);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK;
SELECT state FROM payments.reservations WHERE id = :held_id;

-- orders: confirm_order / release_order act on every hold of the order
SELECT payments.confirm_order('order-3');
SELECT payments.confirm_order('order-3');
SELECT payments.release_order('order-3');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_order('order-4');
SELECT payments.release_order('order-4');
SELECT payments.confirm_order('order-4');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.confirm_order('no-such-order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_order('no-such-order');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.confirm_order(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_order('');
\echo :LAST_ERROR_SQLSTATE
-- an order released in part: confirm_order confirms what is still held
SELECT payments.reserve('order-5', '[{"sku": "apple", "qty": 1}, {"sku": "pear", "qty": 1}]') AS ids \gset
SELECT payments.release_reservation((:'ids'::bigint[])[1]);
SELECT payments.confirm_order('order-5');
SELECT order_ref, sku, qty, state FROM payments.reservations WHERE order_ref IN ('order-3', 'order-4', 'order-5') ORDER BY id;
SELECT * FROM payments.stock_levels ORDER BY sku;
SELECT * FROM pg_temp.ledger();

-- TTL.  A hold past its TTL no longer holds stock, even before it is
-- expired: the view counts it as available.  (The tests move expires_at
-- back instead of sleeping.)
SELECT payments.stock_set('fig', 5);
INSERT INTO received VALUES ('fig', 5);
SELECT payments.reserve('order-6', 'fig', 2) AS r6 \gset
SELECT payments.reserve('order-7', 'fig', 3) AS r7 \gset
SELECT * FROM payments.stock_levels WHERE sku = 'fig';
UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE id IN (:r6, :r7);
SELECT * FROM payments.stock_levels WHERE sku = 'fig';
-- confirming a hold past its TTL is refused, and so is its order
SELECT payments.confirm_reservation(:r6);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.confirm_order('order-6');
\echo :LAST_ERROR_SQLSTATE
-- a reserve that finds the stock short reclaims lapsed holds of that SKU
SELECT payments.reserve('order-8', 'fig', 4) AS r8 \gset
SELECT id = :r8 AS new_hold, order_ref, qty, state FROM payments.reservations WHERE sku = 'fig' ORDER BY id;
SELECT * FROM payments.stock_levels WHERE sku = 'fig';
SELECT payments.confirm_reservation(:r7);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_reservation(:r7);
-- a reserve that is short even after reclaiming fails and reclaims nothing
UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE id = :r8;
SELECT payments.reserve('order-9', 'fig', 6);
\echo :LAST_ERROR_SQLSTATE
SELECT id, state FROM payments.reservations WHERE id = :r8;
-- releasing a lapsed hold that nothing has expired gives its stock back
SELECT payments.release_reservation(:r8);
SELECT * FROM payments.stock_levels WHERE sku = 'fig';
SELECT * FROM pg_temp.ledger();

-- expire_reservations: releases holds past their TTL, oldest first, up to max_rows
SELECT payments.reserve('order-10', 'fig', 1) AS r10 \gset
SELECT payments.reserve('order-11', 'fig', 1) AS r11 \gset
SELECT payments.reserve('order-12', 'fig', 1) AS r12 \gset
UPDATE payments.reservations SET expires_at = now() - interval '2 seconds' WHERE id = :r11;
UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE id = :r10;
SELECT payments.expire_reservations(1);
SELECT id = :r11 AS oldest_first, state FROM payments.reservations WHERE state = 'expired' AND id >= :r10;
SELECT payments.expire_reservations();
SELECT payments.expire_reservations();
SELECT order_ref, state, resolved_at IS NOT NULL AS resolved FROM payments.reservations WHERE id >= :r10 ORDER BY id;
SELECT payments.confirm_reservation(:r10);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.confirm_order('order-10');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.release_reservation(:r10);
SELECT payments.release_order('order-11');
SELECT payments.expire_reservations(0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expire_reservations(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.stock_levels WHERE sku = 'fig';
SELECT * FROM pg_temp.ledger();

-- stock_adjust: receive and write off; never below what is held (PM103)
SELECT payments.stock_adjust('apple', 5);
UPDATE received SET units = units + 5 WHERE sku = 'apple';
SELECT * FROM payments.stock_levels WHERE sku = 'apple';
SELECT payments.reserve('order-13', 'apple', 6) AS r13 \gset
SELECT * FROM payments.stock_levels WHERE sku = 'apple';
SELECT payments.stock_adjust('apple', -5);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_adjust('apple', -4);
UPDATE received SET units = units - 4 WHERE sku = 'apple';
SELECT * FROM payments.stock_levels WHERE sku = 'apple';
-- a write-off reclaims lapsed holds first
UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE id = :r13;
SELECT payments.stock_adjust('apple', -6);
UPDATE received SET units = units - 6 WHERE sku = 'apple';
SELECT state FROM payments.reservations WHERE id = :r13;
SELECT * FROM payments.stock_levels WHERE sku = 'apple';
SELECT payments.stock_adjust('plum', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_adjust('apple', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_adjust('apple', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_adjust(NULL, 1);
\echo :LAST_ERROR_SQLSTATE
-- at most 10^15 units on hand
SELECT payments.stock_adjust('apple', 1000000000000000);
SELECT payments.stock_adjust('apple', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('apple', 1000000000000001);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_adjust('apple', -1000000000000000);
SELECT payments.stock_adjust('apple', -9223372036854775808);
\echo :LAST_ERROR_SQLSTATE

-- stock_set on a SKU with holds: on_hand counts them, so it cannot go below
SELECT payments.reserve('order-14', 'pear', 2) AS r14 \gset
SELECT * FROM payments.stock_levels WHERE sku = 'pear';
SELECT payments.stock_set('pear', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('pear', 2);
UPDATE received SET units = 2 + (SELECT sum(qty) FROM payments.reservations WHERE sku = 'pear' AND state = 'confirmed') WHERE sku = 'pear';
SELECT * FROM payments.stock_levels WHERE sku = 'pear';
SELECT payments.reserve('o', 'pear', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.stock_set('pear', 12);
UPDATE received SET units = units + 10 WHERE sku = 'pear';
SELECT * FROM payments.stock_levels WHERE sku = 'pear';
SELECT * FROM pg_temp.ledger();

-- slots: more, fewer, kept when not given; the units are spread evenly
SELECT payments.stock_set('pear', 12, slots => 5);
SELECT slot, available FROM payments.stock_slots WHERE sku = 'pear' ORDER BY slot;
SELECT payments.stock_set('pear', 12);
SELECT slots FROM payments.stock WHERE sku = 'pear';
SELECT payments.stock_set('pear', 12, slots => 2);
SELECT slot, available FROM payments.stock_slots WHERE sku = 'pear' ORDER BY slot;

-- the last units are never stranded: a quantity no single slot holds is
-- gathered from all of them, down to the very last unit
SELECT payments.stock_set('kiwi', 4, slots => 4);
INSERT INTO received VALUES ('kiwi', 4);
SELECT slot, available FROM payments.stock_slots WHERE sku = 'kiwi' ORDER BY slot;
SELECT payments.reserve('order-15', 'kiwi', 3) IS NOT NULL AS reserved;
SELECT slot, available FROM payments.stock_slots WHERE sku = 'kiwi' ORDER BY slot;
SELECT payments.reserve('order-16', 'kiwi', 1) IS NOT NULL AS reserved;
SELECT payments.reserve('o', 'kiwi', 1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.stock_levels WHERE sku = 'kiwi';
SELECT * FROM pg_temp.ledger();

-- Privileges: applications use the functions and the view, not the tables.
CREATE ROLE reservation_test_app LOGIN IN ROLE payments_app;
SET ROLE reservation_test_app;
SELECT payments.reserve('order-17', 'pear', 1) IS NOT NULL AS reserved;
SELECT payments.confirm_order('order-17');
SELECT sku, on_hand FROM payments.stock_levels WHERE sku = 'pear';
SELECT count(*) FROM payments.reservations;
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.stock_slots SET available = 1000;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expire_reservations();
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
-- reserve and confirm_reservation are not SECURITY DEFINER (see
-- src/sql/20_reservation.sql): their hot path writes as the caller, so a trigger
-- on the tables runs with the caller's rights; the slow path's SQL (here:
-- no single slot of 'plum' holds 3 units, so all are gathered) runs as the
-- extension's owner.  Either way the application role needs no privilege
-- on the tables, and a failed call leaves them as they were.
SELECT payments.stock_set('plum', 4, slots => 4);
INSERT INTO received VALUES ('plum', 4);
CREATE FUNCTION pg_temp.whose_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE '% of %: current_user %', TG_OP, TG_TABLE_NAME,
        current_user = 'reservation_test_app';
    RETURN NULL;
END
$$;
CREATE TRIGGER whose_hold AFTER INSERT OR UPDATE ON payments.reservations
    FOR EACH ROW EXECUTE FUNCTION pg_temp.whose_write();
CREATE TRIGGER whose_slot AFTER UPDATE ON payments.stock_slots
    FOR EACH ROW EXECUTE FUNCTION pg_temp.whose_write();
SET ROLE reservation_test_app;
SELECT payments.reserve('order-18', 'plum', 1) AS plum_fast \gset
SELECT payments.confirm_reservation(:plum_fast) AS confirmed;
SELECT payments.reserve('order-19', 'plum', 3) IS NOT NULL AS reserved_slow;
BEGIN;
SAVEPOINT refused;
SELECT payments.reserve('order-20', 'plum', 1);
\echo :LAST_ERROR_SQLSTATE
ROLLBACK TO refused;
-- that error left the slow path, and the rollback to the savepoint undid
-- it: the caller's role and search_path are back
SELECT current_user = 'reservation_test_app' AS caller_again,
       current_setting('search_path') AS search_path;
COMMIT;
SELECT payments.reserve('order-20', '[{"sku": "pear", "qty": 1}, {"sku": "plum", "qty": 1}]');
\echo :LAST_ERROR_SQLSTATE
SELECT cardinality(payments.reserve('order-21', '[{"sku": "pear", "qty": 2}]')) AS items_reserved;
RESET ROLE;
DROP TRIGGER whose_hold ON payments.reservations;
DROP TRIGGER whose_slot ON payments.stock_slots;
SELECT order_ref, sku, qty, state FROM payments.reservations
 WHERE order_ref IN ('order-18', 'order-19', 'order-20', 'order-21') ORDER BY id;
SELECT * FROM payments.stock_levels WHERE sku IN ('pear', 'plum') ORDER BY sku;
SELECT * FROM pg_temp.ledger();
DROP ROLE reservation_test_app;

-- The pinned search_path at work: in a new session (so the slow path's
-- SQL is prepared afresh) whose search_path puts a look-alike "=" first, a
-- slow-path reserve, a hot-path reserve and a confirm touch only their SKU
SELECT payments.stock_set('pinned-a', 10, slots => 2);
SELECT payments.stock_set('pinned-b', 10);
CREATE SCHEMA evil;
CREATE FUNCTION evil.texteq_evil(text, text) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq_evil);
\c
SET search_path = evil, pg_catalog, public;
SELECT payments.reserve('pinned-1', 'pinned-a', 7) > 0 AS slow_path;
SELECT payments.reserve('pinned-2', 'pinned-a', 1) AS fast_id \gset
SELECT payments.confirm_reservation(:fast_id) AS confirmed;
RESET search_path;
SELECT sku, on_hand, held, available FROM payments.stock_levels
 WHERE sku LIKE 'pinned-%' ORDER BY sku;
DROP SCHEMA evil CASCADE;

-- Every function is SECURITY DEFINER with a pinned search_path but for
-- reserve and confirm_reservation (above); the maintenance function is not
-- granted.  The tables are dumped.
SELECT p.oid::regprocedure AS function, p.prosecdef, p.proconfig,
       has_function_privilege('payments_app', p.oid, 'EXECUTE') AS app_may_call
  FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
 WHERE n.nspname = 'payments' AND p.proname ~ '^(stock_|reserve$|confirm_|release_|expire_reservations)'
 ORDER BY p.oid::regprocedure::text;
SELECT c.relname FROM pg_extension e, unnest(e.extconfig) AS t(oid) JOIN pg_class c ON c.oid = t.oid
 WHERE e.extname = 'payments' AND c.relname ~ '^(stock|reservations)' ORDER BY 1;

-- The hot path keeps its tables' OIDs per backend: after the extension is
-- dropped and created again in this same session, a reserve and a confirm
-- find the new tables, not the dropped ones
SELECT payments.reserve('before-drop', 'pear', 1) > 0 AS reserved_before;
DROP EXTENSION payments CASCADE;
CREATE EXTENSION payments;
SELECT payments.stock_set('again', 2, slots => 2);
SELECT payments.confirm_reservation(payments.reserve('after-drop', 'again', 1)) AS confirmed;
SELECT payments.reserve('after-drop', 'pear', 1);
SELECT order_ref, sku, state FROM payments.reservations;
SELECT * FROM payments.stock_levels;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
