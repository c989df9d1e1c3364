#!/usr/bin/env bash
# Retention: how fast the worker's purge removes resolved holds past
# payments.reservation_retention, and what it costs a hot SKU meanwhile.
#
# The table starts with BENCH_PURGE_ROWS (default 2,000,000) holds resolved
# 40 days ago (90% confirmed, 5% released, 5% expired) over 1,000 SKUs,
# written set-based with INSERT ... SELECT, with the stock balanced as
# reserve and confirm leave it.  Each round runs the hot-SKU workload of
# test/bench/reservation (reserve + confirm, 16 clients) twice:
# alone, then while a loop calls payments.purge_retention(1000) one
# transaction after another, as the worker does.  It prints the purge's
# rows per second under that load, the hot SKU's tps in both runs and
# their ratio, and at the end the rows per second of payments.purge() by
# hand on an idle server.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set, as a
# superuser (the rows are written directly).
set -euo pipefail

ROWS=${BENCH_PURGE_ROWS:-2000000}
ROUNDS=${BENCH_ROUNDS:-2}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CLIENTS=${BENCH_PURGE_CLIENTS:-16}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)
HERE=$(cd "$(dirname "$0")" && pwd)

"${PSQL[@]}" -v rows="$ROWS" <<'SQL'
CREATE EXTENSION payments;
-- the worker stays away: the loop below is the purge measured
SELECT format('ALTER DATABASE %I SET payments.reservation_retention = 0', current_database()) \gexec
SELECT payments.stock_set('hot', 1000000000000, slots => 64);
SELECT payments.stock_set('sku-' || i, 1000000) FROM generate_series(1, 1000) i;
INSERT INTO payments.reservations (order_ref, sku, qty, state, expires_at, created_at, resolved_at)
SELECT 'order-' || n, 'sku-' || (n % 1000 + 1), 1 + n % 3,
       CASE n % 20 WHEN 0 THEN 'released' WHEN 1 THEN 'expired' ELSE 'confirmed' END,
       now() - interval '40 days', now() - interval '40 days',
       now() - interval '40 days' + n * interval '1 millisecond'
  FROM generate_series(1, :rows) n;
-- the units sold left the slots, as confirm does
UPDATE payments.stock_slots sl SET available = sl.available - t.units
  FROM (SELECT sku, sum(qty) AS units FROM payments.reservations
         WHERE state = 'confirmed' GROUP BY sku) t
 WHERE sl.sku = t.sku;
VACUUM ANALYZE;
SQL

remaining() { "${PSQL[@]}" -c "SELECT count(*) FROM payments.reservations WHERE state <> 'held' AND resolved_at < now() - interval '30 days'"; }
tps() {
	pgbench -n -M prepared -T "$SECONDS_PER_RUN" -c "$CLIENTS" -j 2 -f "$HERE/../reservation/hot.sql" 2>&1 |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

for round in $(seq "$ROUNDS"); do
	alone=$(tps)
	before=$(remaining)
	[ "$before" -gt 0 ] || { echo "round $round: nothing left to purge; raise BENCH_PURGE_ROWS"; break; }
	# one session, one batch per transaction: what the worker does
	PGOPTIONS="-c payments.reservation_retention=30d" pgbench -n -T "$SECONDS_PER_RUN" -c 1 \
		-f "$HERE/purge.sql" >/dev/null 2>&1 &
	purger=$!
	during=$(tps)
	wait "$purger"
	after=$(remaining)
	awk -v r="$round" -v a="$alone" -v d="$during" -v p="$((before - after))" -v s="$SECONDS_PER_RUN" -v c="$CLIENTS" \
		'BEGIN { printf "round %d: purge %.0f rows/s (worker batches of 1000) while hot-sku at %d clients runs %.0f tps against %.0f alone: ratio %.2f\n",
		         r, p / s, c, d, a, d / a }'
done

left=$(remaining)
start=$(date +%s.%N)
PGOPTIONS="-c payments.reservation_retention=30d" "${PSQL[@]}" -c "SELECT sum(purged) FROM payments.purge(10000)" >/dev/null
end=$(date +%s.%N)
awk -v n="$left" -v a="$start" -v b="$end" \
	'BEGIN { printf "payments.purge() by hand, idle server: %d rows in %.1f s, %.0f rows/s\n", n, b - a, n / (b - a) }'
"${PSQL[@]}" -c "SELECT count(*) || ' problems found by payments.check() after the purge' FROM payments.check()"
