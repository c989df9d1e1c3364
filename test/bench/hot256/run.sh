#!/usr/bin/env bash
# The hot SKU with 256 clients (issue 19): "at 256 clients the hot SKU must
# stay within 0.8x of the extension on 1,000 SKUs".  The database, SKUs and
# scripts are those of test/bench/reservation (setup.sql, hot.sql,
# spread.sql and the baselines); one reservation = reserve, then confirm.
#
# A workload of its own rather than a line of reservation/cases because 256
# clients need max_connections above the 200 that scripts/lib.sh
# start_cluster writes, a postmaster setting no case line can raise, and a
# case line that cannot connect would stop the whole reservation workload.
# When the cluster has too few connections, this sets max_connections with
# ALTER SYSTEM (it takes effect when test/bench/run.sh next restarts the
# cluster, which it does at every start), says so, and measures nothing.
#
# Cases, each with BENCH_ROUNDS alternating runs, printed as run.sh does
# (best of each side, ratio of the bests, min/med/max of each round's):
#   hot-vs-1000-skus     hot.sql against spread.sql: the hot SKU split
#                        across 64 slots, as reservation/setup.sql makes it
#   hot-sku / 1000-skus  each against its plain-SQL baseline, with
#                        HOT256_BASELINES=1 (they double the time)
#   hot256-vs-1000-skus  the same as the first, after stock_set gives the
#                        hot SKU 256 slots, one per client
#
# A run's tps is not pgbench's total: 256 new backends take seconds to
# connect (7 s on two busy cores) and their first transactions, which fill
# each backend's caches, are slower still, so the total of a short run is
# mostly start-up.  Each run lasts HOT256_WARMUP (default 20) seconds more
# than BENCH_SECONDS, and its tps is the mean of pgbench's per-second
# progress over the last BENCH_SECONDS.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set (a
# superuser), BENCH_SECONDS and BENCH_ROUNDS.
set -euo pipefail

CLIENTS=${HOT256_CLIENTS:-256}
SECS=${BENCH_SECONDS:-10}
WARMUP=${HOT256_WARMUP:-20}
ROUNDS=${BENCH_ROUNDS:-2}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)
RES=$(cd ../reservation && pwd)

# pgbench connects as a superuser, who may use every slot; one more for
# psql, and a few for whatever else connects meanwhile.
need=$((CLIENTS + 8))
have=$("${PSQL[@]}" -c 'SHOW max_connections')
if [ "$have" -lt "$need" ]; then
	"${PSQL[@]}" -c "ALTER SYSTEM SET max_connections = $((need > 300 ? need : 300))"
	cat <<-MSG
		hot256       NOT MEASURED: max_connections is $have, $CLIENTS clients need at least $need.
		             ALTER SYSTEM has set max_connections = $((need > 300 ? need : 300)) in this bench cluster
		             (postgresql.auto.conf of $PGHOST/data): run test/bench/run.sh hot256 again,
		             it restarts the cluster first.  The lasting fix, for new bench clusters:
		             max_connections = 300 instead of 200 in scripts/lib.sh start_cluster.
	MSG
	exit 0
fi

"${PSQL[@]}" -f "$RES/setup.sql" >/dev/null

# pgbench_tps SCRIPT: transactions per second of the last BENCH_SECONDS of
# a run
pgbench_tps() {
	local out
	"${PSQL[@]}" -c CHECKPOINT
	out=$(pgbench -n -M prepared -T "$((WARMUP + SECS))" -P 1 -c "$CLIENTS" -j 2 -f "$1" 2>&1) ||
		{ echo "$out" >&2; echo "pgbench failed on $1" >&2; exit 1; }
	sed -n 's/^progress: [0-9.]* s, \([0-9.]*\) tps.*/\1/p' <<<"$out" | tail -n "$SECS" |
		awk -v n="$SECS" '{ t += $1 } END { if (NR < n) exit 1; print t / NR }' ||
		{ echo "$out" >&2; echo "fewer than $SECS progress reports from $1" >&2; exit 1; }
}

lines=()
# run_case LABEL EXT.sql BASE.sql: rounds of BASE then EXT
run_case() {
	local label=$1 ext=$2 base=$3 e b best_e=0 best_b=0 paired=() line
	for _ in $(seq "$ROUNDS"); do
		b=$(pgbench_tps "$base")
		e=$(pgbench_tps "$ext")
		best_b=$(awk -v a="$best_b" -v b="$b" 'BEGIN { print (a > b ? a : b) }')
		best_e=$(awk -v a="$best_e" -v b="$e" 'BEGIN { print (a > b ? a : b) }')
		paired+=("$(awk -v e="$e" -v b="$b" 'BEGIN { print e / b }')")
	done
	line=$(printf '%s\n' "${paired[@]}" | sort -g | awk -v l="$label" -v c="$CLIENTS" -v e="$best_e" -v b="$best_b" \
		'{ r[NR] = $1 }
		 END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		       printf "%-12s %-22s %7d %12.0f %12.0f %7.2f %6.2f %6.2f %6.2f", "hot256", l, c, e, b, e / b, r[1], m, r[NR] }')
	echo "$line" >&2
	lines+=("$line")
}

run_case hot-vs-1000-skus "$RES/hot.sql" "$RES/spread.sql"
if [ "${HOT256_BASELINES:-0}" = 1 ]; then
	run_case hot-sku "$RES/hot.sql" "$RES/baseline_hot.sql"
	run_case 1000-skus "$RES/spread.sql" "$RES/baseline_spread.sql"
fi
# One slot per client: what an operator can do for a sale this large.
"${PSQL[@]}" -c "SELECT payments.stock_set('hot', 1000000000000, slots => $CLIENTS)" >/dev/null
run_case hot256-vs-1000-skus "$RES/hot.sql" "$RES/spread.sql"

printf '%-12s %-22s %7s %12s %12s %7s %6s %6s %6s\n' workload case clients "ext tps" "base tps" ratio min med max
printf '%s\n' "${lines[@]}"
echo "($ROUNDS alternating runs per side; tps: of the last ${SECS}s of each, after ${WARMUP}s of connecting and warming up;"
echo " ext: the first script, base: the second;"
echo " hot-vs-1000-skus: the hot SKU on 64 slots against 1,000 SKUs, target >= 0.8; hot256-: on $CLIENTS slots)"
