\set o random(1, 1000000000)
\set s random(1, 1000)
WITH s AS (UPDATE baseline_stock SET available = available - 1
            WHERE sku = 'sku-' || :s AND available >= 1 RETURNING sku)
INSERT INTO baseline_holds (order_ref, sku, qty, expires_at)
SELECT 'o' || :o, sku, 1, clock_timestamp() + interval '15 minutes' FROM s
RETURNING id \gset
UPDATE baseline_holds SET state = 'confirmed', resolved_at = clock_timestamp()
 WHERE id = :id AND state = 'held' AND expires_at > clock_timestamp();
