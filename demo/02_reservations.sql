-- Demo step 2: inventory reservations with TTL.
\set QUIET on
\pset footer off
\echo
\echo '== 2. Inventory reservations: held, confirmed or given back, never oversold =='
\echo
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS payments;
RESET client_min_messages;

\echo 'The shop receives 3 units of a mug, and 10 t-shirts split across 4 slots for a flash sale:'
SELECT payments.stock_set('mug', 3);
SELECT payments.stock_set('tshirt', 10, slots => 4);
SELECT * FROM payments.stock_levels ORDER BY sku;

\echo
\echo 'Order A-1 checks out: 2 mugs and 1 t-shirt, held for 15 minutes, all or nothing:'
SELECT payments.reserve('A-1', '[{"sku": "tshirt", "qty": 1}, {"sku": "mug", "qty": 2}]') AS reservation_ids;
SELECT * FROM payments.stock_levels ORDER BY sku;

\echo
\echo 'Order A-2 wants 2 mugs and 1 t-shirt: only 1 mug is left, so nothing is held (SQLSTATE PM101):'
\set VERBOSITY verbose
\set ON_ERROR_STOP off
SELECT payments.reserve('A-2', '[{"sku": "tshirt", "qty": 1}, {"sku": "mug", "qty": 2}]');
\set ON_ERROR_STOP on
\set VERBOSITY default
SELECT * FROM payments.stock_levels ORDER BY sku;

\echo
\echo 'A-1 is paid: its holds become sales.  The callback is delivered twice; the second changes nothing:'
SELECT payments.confirm_order('A-1') AS confirmed;
SELECT payments.confirm_order('A-1') AS confirmed_again;
SELECT * FROM payments.stock_levels ORDER BY sku;

\echo
\echo 'Order A-3 holds the last mug, then its buyer walks away.  (The demo moves its expiry back'
\echo 'instead of waiting 15 minutes.)  A hold past its TTL no longer holds stock:'
SELECT payments.reserve('A-3', 'mug', 1) AS reservation_id;
UPDATE payments.reservations SET expires_at = now() - interval '1 second' WHERE order_ref = 'A-3';
SELECT * FROM payments.stock_levels WHERE sku = 'mug';

\echo
\echo 'Order A-4 gets that mug at once: the reserve reclaims the lapsed hold itself.'
SELECT payments.reserve('A-4', 'mug', 1) AS reservation_id;
SELECT order_ref, sku, qty, state FROM payments.reservations ORDER BY id;

\echo
\echo 'A-3 pays too late: its hold expired (SQLSTATE PM102), so it is never sold twice.'
\set VERBOSITY verbose
\set ON_ERROR_STOP off
SELECT payments.confirm_order('A-3');
\set ON_ERROR_STOP on
\set VERBOSITY default

\echo
\echo 'A-4 is cancelled: its mug comes back.'
SELECT payments.release_order('A-4') AS released;

\echo
\echo 'A-5 holds a t-shirt; the warehouse tries to write off all 9 t-shirts on hand.'
\echo 'Refused (SQLSTATE PM103): one of them is held.'
SELECT payments.reserve('A-5', 'tshirt', 1) AS reservation_id;
\set VERBOSITY verbose
\set ON_ERROR_STOP off
SELECT payments.stock_adjust('tshirt', -9);
\set ON_ERROR_STOP on
\set VERBOSITY default
SELECT * FROM payments.stock_levels ORDER BY sku;
