#!/usr/bin/env bash
# A session left idle in a transaction while 64 clients buy a hot SKU
# (issue 19): the bloat of payments.stock_slots and payments.reservations
# (pgstattuple) and the throughput before, during and after.
#
# The sale is hot.sql of test/bench/reservation (reserve, then confirm, each
# its own transaction) on its hot SKU, split across 64 slots, with stock
# enough that it never runs out: what matters is the churn of the slot rows
# (every reserve updates one) and of the holds (every confirm updates one).
#
#   control  LONG_TXN_SECONDS (default 60) of the sale with no other session
#   during   VACUUM, then the same while one session holds a snapshot: BEGIN
#            ISOLATION LEVEL REPEATABLE READ; SELECT 1; and then nothing,
#            "idle in transaction", until the sale ends.  No row version
#            deleted or updated after its snapshot can be pruned or vacuumed
#            meanwhile.
#   after    the session commits; BENCH_SECONDS of the sale as it is, then
#            VACUUM of both tables, then BENCH_SECONDS again.
#
# pgstattuple (table_len, live and dead tuples, dead_tuple_percent,
# free_percent) and the size of the indexes of both tables at each step;
# tps per 10 s (pgbench -P) of the control and during runs.  Figures, not
# ratios: they are for operators choosing settings (see the notes of issue
# 19), and depend on the machine.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set (a
# superuser), BENCH_SECONDS and BENCH_ROUNDS (unused: one run of each).
set -euo pipefail

LONG=${LONG_TXN_SECONDS:-60}
CLIENTS=${LONG_TXN_CLIENTS:-64}
SECS=${BENCH_SECONDS:-10}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)
RES=$(cd ../reservation && pwd)

"${PSQL[@]}" -f "$RES/setup.sql" >/dev/null
"${PSQL[@]}" -c 'CREATE EXTENSION pgstattuple'

# bloat STEP: one line per table
bloat() {
	"${PSQL[@]}" -F ' ' -v step="$1" <<-'SQL'
		SELECT format('%-34s %-13s %10s %9s %9s %6s %6s %10s', :'step', t.name,
		              pg_size_pretty(s.table_len), s.tuple_count, s.dead_tuple_count,
		              round(s.dead_tuple_percent::numeric, 1), round(s.free_percent::numeric, 1),
		              pg_size_pretty(pg_indexes_size(t.rel)))
		  FROM (VALUES ('stock_slots', 'payments.stock_slots'::regclass),
		               ('reservations', 'payments.reservations'::regclass)) AS t(name, rel),
		       LATERAL pgstattuple(t.rel) AS s;
	SQL
}

# sale SECONDS [PROGRESS]: tps of the sale; with PROGRESS, tps of each 10 s
# too, after the total
sale() {
	local out progress=""
	[ $# -gt 1 ] && progress="-P 10"
	"${PSQL[@]}" -c CHECKPOINT
	# shellcheck disable=SC2086
	out=$(pgbench -n -M prepared -T "$1" -c "$CLIENTS" -j 2 $progress -f "$RES/hot.sql" 2>&1) ||
		{ echo "$out" >&2; echo "pgbench failed" >&2; exit 1; }
	printf '%.0f' "$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out")"
	[ -n "$progress" ] && printf ' (per 10 s: %s)' \
		"$(sed -n 's/^progress: [0-9.]* s, \([0-9.]*\) tps.*/\1/p' <<<"$out" | awk '{ printf "%s%.0f", (NR > 1 ? " " : ""), $1 }')"
	echo
}

steps=()
"${PSQL[@]}" -c 'VACUUM ANALYZE'
steps+=("$(bloat 'before')")
tps_control=$(sale "$LONG" progress)
steps+=("$(bloat "control: after ${LONG}s, no long txn")")

"${PSQL[@]}" -c 'VACUUM payments.stock_slots, payments.reservations'
steps+=("$(bloat 'during: before (after VACUUM)')")
# The idle session: psql reads its statements from a pipe that stays open,
# without a statement, until COMMIT is written to it.
exec 3> >(psql -X -q -o /dev/null)
idle=$!
printf 'BEGIN ISOLATION LEVEL REPEATABLE READ;\nSELECT 1;\n' >&3
for _ in $(seq 100); do
	[ "$("${PSQL[@]}" -c "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
	                        AND state = 'idle in transaction' AND backend_xmin IS NOT NULL")" = 1 ] && break
	sleep 0.1
done
tps_during=$(sale "$LONG" progress)
held=$("${PSQL[@]}" -c "SELECT age(backend_xmin) || ' transactions behind, idle for '
                              || round(extract(epoch FROM now() - state_change)) || ' s'
                         FROM pg_stat_activity WHERE state = 'idle in transaction'
                          AND datname = current_database()")
steps+=("$(bloat "during: after ${LONG}s, txn still open")")
printf 'COMMIT;\n' >&3
exec 3>&-
wait "$idle" || true

tps_after=$(sale "$SECS")
steps+=("$(bloat "after: txn ended + ${SECS}s")")
autovac=$("${PSQL[@]}" -F ' ' -c "SELECT string_agg(relname || ' autovacuums ' || autovacuum_count, ', ')
                                    FROM pg_stat_user_tables
                                   WHERE relid IN ('payments.stock_slots'::regclass, 'payments.reservations'::regclass)")
t0=$(date +%s.%N)
"${PSQL[@]}" -c 'VACUUM payments.stock_slots, payments.reservations'
vacuum_secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
steps+=("$(bloat 'after: VACUUM')")
tps_vacuumed=$(sale "$SECS")

printf '%-34s %-13s %10s %9s %9s %6s %6s %10s\n' step table table_len live dead dead% free% indexes
printf '%s\n' "${steps[@]}"
echo
printf 'long_transaction  %d clients on the hot SKU (64 slots), tps:\n' "$CLIENTS"
printf '  control, %ds, no long txn:        %s\n' "$LONG" "$tps_control"
printf '  during, %ds, idle txn snapshot:   %s\n' "$LONG" "$tps_during"
printf '  after it ended, %ds, no VACUUM:   %s\n' "$SECS" "$tps_after"
printf '  after VACUUM (%s s), %ds:          %s\n' "$vacuum_secs" "$SECS" "$tps_vacuumed"
printf '  the snapshot at the end: %s; %s\n' "$held" "$autovac"
