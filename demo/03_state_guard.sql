-- Demo step 3: state guard.
\set QUIET on
\pset footer off
\echo
\echo '== 3. State guard: an order''s status only moves along its state machine =='
\echo
CREATE EXTENSION IF NOT EXISTS payments;

\echo 'The business declares how an order may move:'
\o /dev/null
SELECT payments.define_state_machine('order', '{
    "created": ["awaiting_payment", "cancelled"],
    "awaiting_payment": ["paid", "cancelled", "expired"],
    "paid": ["shipped", "refunded"],
    "shipped": ["completed"]}');
\o
SELECT state, initial, terminal, next_states
  FROM payments.state_machines WHERE machine = 'order' ORDER BY terminal, state;

\echo 'The application''s own table, guarded: every INSERT and UPDATE of status passes the C trigger.'
CREATE TABLE shop_orders (id bigint PRIMARY KEY, status text NOT NULL DEFAULT 'created', amount bigint);
\o /dev/null
SELECT payments.guard_state('shop_orders', 'status', 'order');
\o
INSERT INTO shop_orders (id, amount) VALUES (42, 4990), (43, 1290);
UPDATE shop_orders SET status = 'awaiting_payment';

\echo
\echo 'The customer cancels order 42 ...'
UPDATE shop_orders SET status = 'cancelled' WHERE id = 42;
\echo '... then the payment provider''s late "paid" callback arrives: refused with SQLSTATE PM201.'
\set VERBOSITY verbose
\set ON_ERROR_STOP off
UPDATE shop_orders SET status = 'paid' WHERE id = 42;
\echo 'A typo is refused too, with SQLSTATE PM202:'
UPDATE shop_orders SET status = 'shiped' WHERE id = 43;
\set ON_ERROR_STOP on
\set VERBOSITY default

\echo
\echo 'A redelivered callback that repeats the current state is harmless (and not recorded):'
UPDATE shop_orders SET status = 'paid' WHERE id = 43;
UPDATE shop_orders SET status = 'paid' WHERE id = 43;

\echo
\echo 'Every accepted move is recorded:'
SELECT row_key AS order_id, from_state, to_state, changed_by
  FROM payments.state_history WHERE tbl = 'shop_orders'::regclass ORDER BY id;
SELECT id, status FROM shop_orders ORDER BY id;
