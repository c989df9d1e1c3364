-- Demo step 7: the TCC fence.
\set QUIET on
\pset footer off
\echo
\echo '== 7. TCC fence: a payment across stock and points, each participant safe against retries and reordering =='
\echo
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS payments;
RESET client_min_messages;

-- Two participants of one global transaction: the stock service (the
-- inventory's reservations) and a points ledger.  Each endpoint calls the
-- fence first and does its work only when told to proceed.
SELECT payments.stock_set('tcc-lamp', 5) \g /dev/null
CREATE TABLE tcc_points (customer text PRIMARY KEY, balance bigint NOT NULL, held bigint NOT NULL DEFAULT 0);
INSERT INTO tcc_points VALUES ('ann', 100);

CREATE FUNCTION tcc_stock_try(gid text, qty bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE fence text := payments.tcc_try(gid, 'stock', 'reserve');
BEGIN
    IF fence = 'proceed' THEN PERFORM payments.reserve(gid, 'tcc-lamp', qty); END IF;
    RETURN fence;
END $$;
CREATE FUNCTION tcc_stock_confirm(gid text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE fence text := payments.tcc_confirm(gid, 'stock');
BEGIN
    IF fence = 'proceed' THEN PERFORM payments.confirm_order(gid); END IF;
    RETURN fence;
END $$;
CREATE FUNCTION tcc_stock_cancel(gid text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE fence text := payments.tcc_cancel(gid, 'stock');
BEGIN
    IF fence = 'proceed' THEN PERFORM payments.release_order(gid); END IF;
    RETURN fence;
END $$;
CREATE FUNCTION tcc_points_try(gid text, pts bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE fence text := payments.tcc_try(gid, 'points', 'hold');
BEGIN
    IF fence = 'proceed' THEN
        UPDATE tcc_points SET held = held + pts WHERE customer = 'ann' AND balance - held >= pts;
    END IF;
    RETURN fence;
END $$;
CREATE FUNCTION tcc_points_confirm(gid text, pts bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE fence text := payments.tcc_confirm(gid, 'points');
BEGIN
    IF fence = 'proceed' THEN
        UPDATE tcc_points SET held = held - pts, balance = balance - pts WHERE customer = 'ann';
    END IF;
    RETURN fence;
END $$;
CREATE FUNCTION tcc_points_cancel(gid text, pts bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE fence text := payments.tcc_cancel(gid, 'points');
BEGIN
    IF fence = 'proceed' THEN
        UPDATE tcc_points SET held = held - pts WHERE customer = 'ann';
    END IF;
    RETURN fence;
END $$;

\echo 'Order T-1: Try on both participants (the coordinator retries the stock Try), then Confirm,'
\echo 'also retried. Every retry is a duplicate: nothing is reserved or charged twice.'
SELECT tcc_stock_try('T-1', 2) AS stock_try, tcc_stock_try('T-1', 2) AS stock_retry,
       tcc_points_try('T-1', 30) AS points_try;
SELECT tcc_stock_confirm('T-1') AS stock_confirm, tcc_points_confirm('T-1', 30) AS points_confirm,
       tcc_points_confirm('T-1', 30) AS points_retry;

\echo
\echo 'Order T-2: the coordinator gives up before the points Try arrives and cancels both.'
\echo 'The stock Cancel undoes its Try; the points Cancel is an empty rollback: no Try ran.'
SELECT tcc_stock_try('T-2', 1) AS stock_try;
SELECT tcc_stock_cancel('T-2') AS stock_cancel, tcc_points_cancel('T-2', 50) AS points_cancel;
\echo 'The delayed points Try arrives now: suspended, it holds nothing (the participant answers failure).'
SELECT tcc_points_try('T-2', 50) AS late_points_try;

\echo
\echo 'Stock and points: 2 lamps sold, none held; 30 points spent, none held.'
SELECT sku, on_hand, held, available FROM payments.stock_levels WHERE sku = 'tcc-lamp';
SELECT customer, balance, held FROM tcc_points;
SELECT gid, branch_id, state FROM payments.tcc_branches WHERE gid LIKE 'T-%' ORDER BY gid, branch_id;
