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

-- a table with row security is not read as the extension's owner (its
-- policies would run with those rights): it is reported unchecked
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
SELECT check_name, severity, object FROM payments.check();
ALTER TABLE orders DISABLE ROW LEVEL SECURITY;

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

-- User checks.  Alice's invariant: a paid order has its stock confirmed.
-- Her heal confirms it, except for an order it cannot fix; the worker is
-- off, so the runs are queued and run by hand.
CREATE TABLE public.ck_orders (ref text PRIMARY KEY, paid boolean, confirmed boolean, fixable boolean);
CREATE TABLE public.ck_heals (n serial, payload jsonb);
GRANT ALL ON public.ck_orders, public.ck_heals, public.ck_heals_n_seq TO regress_check_app;
CREATE FUNCTION public.ck_heal(p jsonb) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.ck_heals (payload) VALUES (p);
    UPDATE public.ck_orders SET confirmed = true WHERE ref = p->>'object' AND fixable;
$$;
CREATE FUNCTION public.ck_write() RETURNS text LANGUAGE sql AS
    $$ INSERT INTO public.ck_heals (payload) VALUES ('{}') RETURNING 'x' $$;
CREATE FUNCTION public.ck_slow() RETURNS text LANGUAGE sql AS $$ SELECT pg_sleep(5)::text $$;
INSERT INTO public.ck_orders VALUES ('o-1', true, false, true), ('o-2', true, false, false),
    ('o-3', true, true, true), ('o-4', false, false, true);
CREATE FUNCTION public.ck_run() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE payments.checks SET next_run_at = now();
    PERFORM payments.queue_due_checks();
    WHILE payments.run_compensations() > 0 LOOP END LOOP;
END $$;
CREATE FUNCTION public.ck_results() RETURNS TABLE (check_name text, object text, severity text, open boolean, healed text)
    LANGUAGE sql AS $$
    SELECT r.check_name, r.object, r.severity, r.cleared_at IS NULL,
           (SELECT c.status FROM payments.compensations c WHERE c.id = r.heal_id)
      FROM payments.check_results r ORDER BY r.check_name, r.object, r.first_seen $$;

SET ROLE regress_check_app;
SELECT payments.define_check('paid_unconfirmed',
    'SELECT ref, ''paid but its stock is not confirmed'' FROM public.ck_orders WHERE paid AND NOT confirmed',
    heal => 'public.ck_heal(jsonb)', every => '1 minute');
SELECT name, every, heal, last_run_at, open_violations FROM payments.check_status;
RESET ROLE;

-- First run: two violations, each with its heal queued
SELECT payments.queue_due_checks() AS queued;
SELECT payments.queue_due_checks() AS queued_again;
SELECT payments.run_compensations() AS ran;
SELECT * FROM public.ck_results();
SELECT name, last_error, open_violations, escalated_violations FROM payments.check_status;
-- the heals run: o-1 is fixed, o-2 is not
SELECT payments.run_compensations() AS ran;
SELECT payload->>'object' AS healed, payload->>'check' AS check_name, payload->>'detail' AS detail
  FROM public.ck_heals ORDER BY n;

-- Second run: o-1 cleared; o-2 outlived its heal and is escalated
SELECT public.ck_run();
SELECT * FROM public.ck_results();
-- Third run: nothing healed twice
SELECT public.ck_run();
SELECT count(*) AS heals FROM public.ck_heals;
SELECT name, open_violations, escalated_violations FROM payments.check_status;
-- Repaired by hand: cleared; a new violation of o-1 later is a new row,
-- whose heal is not queued again (one heal per check and object)
UPDATE public.ck_orders SET confirmed = true WHERE ref = 'o-2';
SELECT public.ck_run();
UPDATE public.ck_orders SET confirmed = false WHERE ref = 'o-1';
SELECT public.ck_run();
SELECT * FROM public.ck_results();
SELECT count(*) AS heals FROM public.ck_heals;

-- A query that fails, writes, or runs too long is recorded, not fatal
SET ROLE regress_check_app;
SELECT payments.define_check('divides',
    'SELECT ref, (1 / CASE WHEN paid THEN 0 ELSE 1 END)::text FROM public.ck_orders');
SELECT payments.define_check('writes', 'SELECT public.ck_write(), ''wrote''');
SELECT payments.define_check('slow', 'SELECT public.ck_slow(), ''slow''');
RESET ROLE;
SET payments.check_timeout = '100ms';
SELECT public.ck_run();
RESET payments.check_timeout;
SELECT name, last_error, open_violations FROM payments.check_status ORDER BY name;
SELECT count(*) AS heals FROM public.ck_heals;
SELECT status, count(*) FROM payments.compensations
 WHERE handler = 'payments.run_check(pg_catalog.jsonb)' GROUP BY 1;

-- Bad input: clear errors, nothing defined
SET ROLE regress_check_app;
\set VERBOSITY sqlstate
SELECT payments.define_check(NULL, 'SELECT 1, 2');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('', 'SELECT 1, 2');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check(repeat('n', 256), 'SELECT 1, 2');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2, 3');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'DELETE FROM public.ck_orders RETURNING ref, ref');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'WITH d AS (DELETE FROM public.ck_orders RETURNING ref) SELECT ref, ref FROM d');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2) q; DELETE FROM public.ck_orders; SELECT * FROM (SELECT 1, 2');
\echo :LAST_ERROR_SQLSTATE
-- (a trailing comment is fine)
SELECT payments.define_check('commented', 'SELECT 1, 2 -- a comment');
SELECT payments.define_check('bad', 'SELECT sku, 1 FROM payments.stock');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2', heal => 'public.ck_write()');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2', every => '0');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2', every => '-1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2', every => '500 milliseconds');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2', every => '400 days');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_check('bad', 'SELECT 1, 2', every => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.run_check('{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.run_check(NULL);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT payments.define_check('bad', 'SELECT 1, 2, 3');
SELECT payments.define_check('bad', 'SELECT 1, 2', heal => 'public.ck_write()');
SELECT name FROM payments.check_status ORDER BY name;
RESET ROLE;

-- One role's checks are its own: another role does not see them, runs
-- only its own under the same name, and drops only its own
CREATE ROLE regress_check_bob LOGIN;
GRANT payments_app TO regress_check_bob;
SET ROLE regress_check_bob;
SELECT count(*) AS visible FROM payments.check_status;
SELECT payments.run_check('{"check": "paid_unconfirmed"}');
SELECT payments.drop_check('paid_unconfirmed');
SELECT payments.define_check('paid_unconfirmed', 'SELECT ''mine'', ''bob''''s''');
SELECT payments.run_check('{"check": "paid_unconfirmed"}');
SELECT name, open_violations FROM payments.check_status;
RESET ROLE;
SELECT owner, name, open_violations FROM payments.check_status ORDER BY owner::text, name;
SET ROLE regress_check_app;
SELECT payments.drop_check('paid_unconfirmed');
SELECT payments.drop_check('paid_unconfirmed');
RESET ROLE;
SELECT owner, count(*) FROM payments.check_results GROUP BY 1 ORDER BY 1::text;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2;

DROP TABLE public.ck_orders, public.ck_heals;
DROP FUNCTION public.ck_heal(jsonb), public.ck_write(), public.ck_slow(), public.ck_run(), public.ck_results();
DROP TABLE orders, lines;
DROP EXTENSION payments;
DROP FUNCTION undo(jsonb), gateway(jsonb);
DROP ROLE regress_check_app, regress_check_operator, regress_check_bob;
