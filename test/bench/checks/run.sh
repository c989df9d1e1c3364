#!/usr/bin/env bash
# payments.check() on a database of 1,000,000 reservations (BENCH_CHECK_ROWS)
# over 1,000 SKUs: 90% sold, 5% released, 5% held, with the stock of every
# SKU balanced, plus a guarded table of 100,000 orders with their history.
# Each round times one call, in a fresh session, from before the statement
# to after its result; the figure is the seconds of each round, and the
# call must report nothing (the data is consistent).  Not a ratio: there is
# no plain SQL doing the same job to compare with.
#
# That the call never blocks a concurrent reserve is an isolation spec
# (test/isolation/specs/check_no_block.spec), not a figure.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set, as a
# superuser (the rows are written directly).
set -euo pipefail

ROWS=${BENCH_CHECK_ROWS:-1000000}
ROUNDS=${BENCH_ROUNDS:-2}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)

"${PSQL[@]}" -v rows="$ROWS" <<'SQL'
CREATE EXTENSION payments;
SELECT payments.stock_set('sku-' || i, 1000000) FROM generate_series(1, 1000) i;
INSERT INTO payments.reservations (order_ref, sku, qty, state, expires_at, created_at, resolved_at)
SELECT 'order-' || n, 'sku-' || (n % 1000 + 1), 1 + n % 3,
       CASE WHEN n % 20 = 0 THEN 'held' WHEN n % 20 = 1 THEN 'released' ELSE 'confirmed' END,
       now() + interval '1 day', now(),
       CASE WHEN n % 20 = 0 THEN NULL ELSE now() END
  FROM generate_series(1, :rows) n;
-- the units held and sold leave the slots, as reserve and confirm do
UPDATE payments.stock_slots sl SET available = sl.available - t.units
  FROM (SELECT sku, sum(qty) AS units FROM payments.reservations
         WHERE state IN ('held', 'confirmed') GROUP BY sku) t
 WHERE sl.sku = t.sku;
SELECT payments.define_state_machine('order', '{"new": ["paid"], "paid": ["shipped"]}');
CREATE TABLE orders (id int PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('orders', 'status', 'order');
INSERT INTO orders SELECT i, 'new' FROM generate_series(1, 100000) i;
UPDATE orders SET status = 'paid' WHERE id % 2 = 0;
VACUUM ANALYZE;
SQL

times=()
for _ in $(seq "$ROUNDS"); do
	"${PSQL[@]}" -c CHECKPOINT
	start=$(date +%s.%N)
	found=$("${PSQL[@]}" -c 'SELECT count(*) FROM payments.check()')
	end=$(date +%s.%N)
	[ "$found" = 0 ] || { echo "payments.check() found $found violations in consistent data" >&2; exit 1; }
	times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')")
done
printf 'checks       payments.check() on %d reservations, 1,000 SKUs, 100,000 guarded rows: %s s (each of %d rounds)\n' \
	"$ROWS" "${times[*]}" "$ROUNDS"
