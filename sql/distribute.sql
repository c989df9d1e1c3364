-- The calls by SKU that the distributed layout needs, here on local
-- tables, and payments.distribute() where Citus is not installed.
CREATE EXTENSION payments;
SELECT payments.stock_set('fig', 10);
SELECT payments.stock_set('kiwi', 10);
SELECT payments.reserve('o-1', 'fig', 2) AS fig_hold \gset
SELECT payments.reserve('o-2', 'fig', 3) AS fig_hold2 \gset

-- The hold's own SKU confirms or releases it; another SKU does not know it
\set VERBOSITY terse
SELECT payments.confirm_reservation(:fig_hold, 'kiwi');
SELECT payments.release_reservation(:fig_hold, 'kiwi');
SELECT payments.confirm_reservation(:fig_hold, NULL);
SELECT payments.release_reservation(:fig_hold, '');
\set VERBOSITY default
SELECT id = :fig_hold AS same, state FROM payments.reservations WHERE order_ref = 'o-1';
SELECT payments.confirm_reservation(:fig_hold, 'fig') AS confirmed,
       payments.confirm_reservation(:fig_hold, 'fig') AS again;
SELECT payments.release_reservation(:fig_hold2, 'fig') AS released,
       payments.release_reservation(:fig_hold2, 'fig') AS again;
\set VERBOSITY terse
SELECT payments.release_reservation(:fig_hold, 'fig');
SELECT payments.confirm_reservation(:fig_hold2, 'fig');
\set VERBOSITY default
SELECT sku, on_hand, held, available FROM payments.stock_levels ORDER BY sku;

-- Without Citus there is nothing to distribute to, and the tables are left
-- as they were
\set VERBOSITY verbose
\set SHOW_CONTEXT never
SELECT payments.distribute();
SELECT payments.undistribute();
\set VERBOSITY default
\set SHOW_CONTEXT errors
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = 'payments.reservations'::regclass AND contype = 'p';

-- Only a superuser may distribute or undistribute
CREATE ROLE distribute_app;
GRANT payments_app TO distribute_app;
SET ROLE distribute_app;
SELECT payments.distribute();
SELECT payments.undistribute();
RESET ROLE;
DROP ROLE distribute_app;
DROP EXTENSION payments;
