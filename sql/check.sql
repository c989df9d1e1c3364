--
-- Consistency checks: payments.check() reports nothing on a healthy
-- database, and each built-in check reports the violation a superuser
-- plants by hand (a direct UPDATE that bypasses the extension), with its
-- severity and object, until it is repaired.  Only payments_operator may
-- run it.  The worker is off here, so lapsed holds are not reported
-- (test/t/802_checks.pl covers that check with the worker).
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
SET timezone = 'UTC';

-- A healthy database with some of everything
SELECT payments.stock_set('mug', 10, 2);
SELECT payments.stock_set('lamp', 5);
SELECT payments.reserve('o-1', 'mug', 3) AS held_id \gset
SELECT payments.reserve('o-2', 'mug', 2) AS sold_id \gset
SELECT payments.confirm_reservation(:sold_id);
SELECT payments.reserve('o-3', 'lamp', 1) AS released_id \gset
SELECT payments.release_reservation(:released_id);
SELECT payments.stock_adjust('lamp', 7);
SELECT payments.stock_adjust('mug', -1);
SELECT payments.stock_set('mug', 12, 3);

SELECT payments.define_state_machine('order', '{"new": ["paid", "cancelled"], "paid": ["shipped"]}');
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
CREATE TABLE lines (order_id int, n int, status text NOT NULL, PRIMARY KEY (order_id, n));
SELECT payments.guard_state('orders', 'status', 'order');
SELECT payments.guard_state('lines', 'status', 'order');
INSERT INTO orders VALUES (1, 'new'), (2, 'new');
UPDATE orders SET status = 'paid' WHERE id = 1;
INSERT INTO lines VALUES (1, 1, 'new'), (1, 2, 'new');
UPDATE lines SET status = 'paid' WHERE n = 2;

SELECT payments.idempotency_begin('shop', 'k-1', '{}') IS NOT NULL AS began;
SELECT payments.tcc_try('g-1', 'stock');
SELECT payments.saga_begin('s-1', '1 hour');
CREATE FUNCTION undo(p jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION gateway(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.register_external_handler('gateway(jsonb)');
SELECT payments.enqueue_compensation('gateway(jsonb)', '{}') AS gw_item \gset
SELECT count(*) AS claimed FROM payments.claim_compensations('gateway(jsonb)', 1, '1 hour');
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a-secret-of-the-psp') > 0 AS key_added;
SELECT payments.expect_callback('psp', 'A-1', '1 hour', 'undo(jsonb)') AS expected_id \gset

SELECT * FROM payments.check();

-- stock_ledger: units that appear in a slot from nowhere
UPDATE payments.stock_slots SET available = available + 4 WHERE sku = 'mug' AND slot = 0;
SELECT check_name, severity, object FROM payments.check();
SELECT regexp_replace(regexp_replace(detail, '\w{3} \w{3} \d{2} [\d:.]+ \d{4} UTC', '<time>', 'g'), 'role \S+', 'role <owner>') AS detail FROM payments.check() WHERE check_name = 'stock_ledger';
UPDATE payments.stock_slots SET available = available - 4 WHERE sku = 'mug' AND slot = 0;
-- ... and units a hold keeps that no slot gave
UPDATE payments.reservations SET qty = qty + 1 WHERE id = :held_id;
SELECT check_name, severity, object FROM payments.check();
UPDATE payments.reservations SET qty = qty - 1 WHERE id = :held_id;

-- stock_slots: a slot row lost
CREATE TEMP TABLE saved_slot AS SELECT * FROM payments.stock_slots WHERE sku = 'lamp';
DELETE FROM payments.stock_slots WHERE sku = 'lamp';
SELECT check_name, severity, object FROM payments.check() ORDER BY check_name;
INSERT INTO payments.stock_slots SELECT * FROM saved_slot;

-- compensation_lease: an executor's claim whose lease ran out
UPDATE payments.compensations SET lease_expires_at = now() - interval '1 second' WHERE id = :gw_item;
SELECT check_name, severity, object = 'compensation ' || :gw_item AS that_item FROM payments.check();
UPDATE payments.compensations SET lease_expires_at = now() + interval '1 hour' WHERE id = :gw_item;

-- idempotency_lease: a flow that stopped renewing its key
UPDATE payments.idempotency_keys SET lease_expires_at = now() - interval '1 second' WHERE key = 'k-1';
SELECT check_name, severity, object FROM payments.check();
SELECT payments.idempotency_abandon('shop', 'k-1');

-- state_history: a status written with the guard out of the way, for a
-- one-column key and a composite one
SET session_replication_role = replica;
UPDATE orders SET status = 'shipped' WHERE id = 2;
UPDATE lines SET status = 'cancelled' WHERE order_id = 1 AND n = 2;
RESET session_replication_role;
SELECT check_name, severity, object FROM payments.check() ORDER BY object;
SELECT regexp_replace(regexp_replace(detail, '\w{3} \w{3} \d{2} [\d:.]+ \d{4} UTC', '<time>', 'g'), 'role \S+', 'role <owner>') AS detail FROM payments.check() ORDER BY object;
SET session_replication_role = replica;
UPDATE orders SET status = 'new' WHERE id = 2;
UPDATE lines SET status = 'paid' WHERE order_id = 1 AND n = 2;
RESET session_replication_role;

-- callback_overdue: past its deadline, and its query failed for good
UPDATE payments.expected_callbacks SET deadline = now() - interval '2 minutes',
    query_error = 'the provider''s API answered 500' WHERE id = :expected_id;
SELECT check_name, severity, object = 'expected callback ' || :expected_id AS that_one FROM payments.check();
SELECT regexp_replace(regexp_replace(detail, '\w{3} \w{3} \d{2} [\d:.]+ \d{4} UTC', '<time>', 'g'), 'role \S+', 'role <owner>') AS detail FROM payments.check();
UPDATE payments.expected_callbacks SET met_at = now(), met_by = 'by-hand' WHERE id = :expected_id;

-- tcc_stuck: a branch tried long ago and never finished
UPDATE payments.tcc_fence SET updated_at = now() - interval '1 hour' WHERE gid = 'g-1';
SELECT check_name, severity, object FROM payments.check();
SELECT payments.tcc_confirm('g-1', 'stock');

-- saga_stuck: past its timeout and not aborted; then halted at a dead link
UPDATE payments.saga_state SET timeout_at = now() - interval '1 second' WHERE saga_id = 's-1';
SELECT check_name, severity, object FROM payments.check();
SELECT payments.saga_step('s-1', 'one', 'undo(jsonb)', '{}');
\set VERBOSITY terse
SELECT payments.saga_abort('s-1', 'declined');
\set VERBOSITY default
UPDATE payments.compensations SET status = 'dead', finished_at = now()
 WHERE id = (SELECT compensation_id FROM payments.saga_steps WHERE saga_id = 's-1');
SELECT check_name, severity, object FROM payments.check();
SELECT regexp_replace(regexp_replace(detail, '\w{3} \w{3} \d{2} [\d:.]+ \d{4} UTC', '<time>', 'g'), 'role \S+', 'role <owner>') AS detail FROM payments.check();
UPDATE payments.compensations SET status = 'cancelled'
 WHERE id = (SELECT compensation_id FROM payments.saga_steps WHERE saga_id = 's-1');

-- Repaired: nothing to report
SELECT * FROM payments.check();

-- Who may run it
CREATE ROLE regress_check_app LOGIN;
CREATE ROLE regress_check_operator LOGIN;
GRANT payments_app TO regress_check_app;
GRANT payments_operator TO regress_check_operator;
SET ROLE regress_check_app;
\set VERBOSITY sqlstate
SELECT * FROM payments.check();
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SET ROLE regress_check_operator;
SELECT count(*) FROM payments.check();
RESET ROLE;

DROP TABLE orders, lines;
DROP EXTENSION payments;
DROP FUNCTION undo(jsonb), gateway(jsonb);
DROP ROLE regress_check_app, regress_check_operator;
