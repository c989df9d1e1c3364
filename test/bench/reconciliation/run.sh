#!/usr/bin/env bash
# Reconciliation: payments.reconcile of a statement against our orders of
# its period, beside a hand-written FULL OUTER JOIN classification that
# writes the same differences (baseline.sql), at 100,000 and 1,000,000
# payments: about as many lines as orders, 1% of each class of difference
# (orders.sql).  The reconciliation has grace '0' (rows missing from the
# statement are declared missing_external at once) and no policy.
#
# Each round empties both sides' results (so that every run is a first
# run), checkpoints, then times the baseline and then reconcile, each in a
# fresh session, from before its statement to after its COMMIT.  After
# every reconcile its differences are compared with the baseline's, row by
# row, and counted per class against the data's: any disagreement fails
# the bench.
#
# Memory: while each statement runs, the backend's private resident memory
# (RssAnon in /proc/PID/status) is sampled every 10 ms; after it, its peak
# resident set (VmHWM) is read.  Each is given as the most a run raised it
# above the fresh backend's.  VmHWM also counts the pages of shared buffers
# and of libraries (JIT's) that the backend touched, up to shared_buffers
# for any large enough scan, so the private figure is the one that shows
# what a run allocates; work_mem bounds each sort, hash and tuplestore of
# both sides.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set
# (as a superuser: the lines are loaded by COPY, the results emptied with
# TRUNCATE).  BENCH_RECONCILIATION_SIZES (default "100000 1000000") lists
# the numbers of orders, each a multiple of 100.
set -euo pipefail
shopt -s inherit_errexit

SIZES=${BENCH_RECONCILIATION_SIZES:-100000 1000000}
ROUNDS=${BENCH_ROUNDS:-2}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"${PSQL[@]}" -f setup.sql

# sample_anon PID: the largest private resident memory (RssAnon, kB) of
# process PID, read every 10 ms while $tmp/sampling exists
sample_anon() {
	local peak=0 key value _
	while [ -e "$tmp/sampling" ]; do
		while read -r key value _; do
			[ "$key" = RssAnon: ] && [ "$value" -gt "$peak" ] && peak=$value
		done <"/proc/$1/status"
		sleep 0.01
	done
	echo "$peak"
}

# status_kb PID FIELD: a field of /proc/PID/status, in kB
status_kb() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }

# timed SQL: runs SQL (one statement with its terminator) in a fresh
# session; prints the seconds from before it to after its COMMIT, then how
# far the backend's private memory (sampled) and its peak resident set
# (VmHWM) rose above the fresh backend's, in kB
timed() {
	local pid anon0 hwm0 sampler secs peak
	coproc SESSION { "${PSQL[@]}" -F ' '; }
	echo 'SELECT pg_backend_pid();' >&"${SESSION[1]}"
	read -r pid <&"${SESSION[0]}"
	anon0=$(status_kb "$pid" RssAnon)
	hwm0=$(status_kb "$pid" VmHWM)
	: >"$tmp/sampling"
	sample_anon "$pid" >"$tmp/anon" &
	sampler=$!
	printf '%s\n' 'SELECT extract(epoch FROM clock_timestamp()) AS t0 \gset' "$1" \
		'SELECT round(extract(epoch FROM clock_timestamp()) - :t0, 3);' >&"${SESSION[1]}"
	read -r secs <&"${SESSION[0]}" || secs=
	rm -f "$tmp/sampling"
	wait "$sampler"
	[ -n "$secs" ] || { echo "the timed statement failed" >&2; exit 1; }
	peak=$(status_kb "$pid" VmHWM)
	exec {SESSION[1]}>&-
	wait "$SESSION_PID"
	echo "$secs $(($(cat "$tmp/anon") - anon0)) $((peak - hwm0))"
}

# counts: the differences of reconcile's run and of the baseline per class
# (class=count,...,class=count), and how many rows of either the other
# lacks: both sides must write the same rows
compare() {
	"${PSQL[@]}" -F ' ' <<'SQL'
CREATE TEMP VIEW ext AS
    SELECT class, reference, payment_ref, external_id, amount, currency, internal_amount,
           external_amount, internal_currency, external_currency, internal_status,
           external_status, internal_at, occurred_at
      FROM payments.reconciliation_items WHERE class <> 'matched' AND NOT waiting;
CREATE TEMP VIEW base AS
    SELECT class, reference, payment_ref, external_id, amount, currency, internal_amount,
           external_amount, internal_currency, external_currency, internal_status,
           external_status, internal_at, occurred_at
      FROM bench.differences;
SELECT (SELECT string_agg(class || '=' || n, ',' ORDER BY class)
          FROM (SELECT class, count(*) AS n FROM ext GROUP BY class) c),
       (SELECT string_agg(class || '=' || n, ',' ORDER BY class)
          FROM (SELECT class, count(*) AS n FROM base GROUP BY class) c),
       (SELECT count(*) FROM ((TABLE ext EXCEPT ALL TABLE base)
                              UNION ALL (TABLE base EXCEPT ALL TABLE ext)) d);
SQL
}

# spread VALUE...: the smallest, median and largest
spread() {
	printf '%s\n' "$@" | sort -g | awk '{ r[NR] = $1 }
		END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		      printf "%.2f %.2f %.2f", r[1], m, r[NR] }'
}

least() { printf '%s\n' "$@" | sort -g | head -n 1; }
most() { printf '%s\n' "$@" | sort -g | tail -n 1; }

rows=()
memory=()
sizes=()
best_ext=()
best_base=()
for n in $SIZES; do
	[ $((n % 100)) -eq 0 ] || { echo "size $n is not a multiple of 100" >&2; exit 1; }
	sid=$("${PSQL[@]}" -v n="$n" -f orders.sql)
	"${PSQL[@]}" -v n="$n" -f lines.sql |
		"${PSQL[@]}" -c "SET payments.statement_id = $sid" \
			-c "COPY payments.statement_lines (external_id, payment_ref, amount, currency, status,
			    occurred_at) FROM STDIN"
	"${PSQL[@]}" -c "SELECT payments.statement_close($sid)" \
		-c "VACUUM ANALYZE bench.orders, payments.statement_lines" >/dev/null
	nlines=$("${PSQL[@]}" -c "SELECT lines FROM payments.statements WHERE id = $sid")
	expected=$(printf '%s\n' amount_mismatch currency_mismatch duplicate_external \
		missing_external missing_internal status_mismatch | sed "s/\$/=$((n / 100))/" | paste -sd ,)
	ext_s=() base_s=() ext_anon=() base_anon=() ext_hwm=() base_hwm=() paired=()
	for _ in $(seq "$ROUNDS"); do
		"${PSQL[@]}" -c "TRUNCATE bench.differences, payments.reconciliation_runs,
		                   payments.reconciliation_items, payments.reconciliation_pool,
		                   payments.reconciliation_heals" -c CHECKPOINT
		run=$(timed "$(sed "s/:sid/$sid/g" baseline.sql)")
		read -r bs banon bhwm <<<"$run"
		"${PSQL[@]}" -c CHECKPOINT
		run=$(timed "SELECT payments.reconcile('bench', $sid) \\g /dev/null")
		read -r es eanon ehwm <<<"$run"
		check=$(compare)
		read -r got_ext got_base unlike <<<"$check"
		if [ "$got_ext" != "$expected" ] || [ "$got_base" != "$expected" ] || [ "$unlike" != 0 ]; then
			echo "reconcile and the baseline disagree at $n payments:" >&2
			echo "  expected  $expected" >&2
			echo "  reconcile $got_ext" >&2
			echo "  baseline  $got_base" >&2
			echo "  rows of one side that the other lacks: $unlike" >&2
			exit 1
		fi
		ext_s+=("$es") base_s+=("$bs")
		ext_anon+=("$eanon") base_anon+=("$banon") ext_hwm+=("$ehwm") base_hwm+=("$bhwm")
		paired+=("$(awk -v e="$es" -v b="$bs" 'BEGIN { print b / e }')")
	done
	read -r lo med hi <<<"$(spread "${paired[@]}")"
	be=$(least "${ext_s[@]}")
	bb=$(least "${base_s[@]}")
	rows+=("$(awk -v n="$n" -v l="$nlines" -v e="$be" -v b="$bb" -v lo="$lo" -v med="$med" -v hi="$hi" 'BEGIN {
		printf "%-14s %-17s %8d %8d %8.2f %8.2f %6.2f %6.2f %6.2f %6.2f",
			"reconciliation", "reconcile-" n, l, n, e, b, b / e, lo, med, hi }')")
	memory+=("$(awk -v n="$n" -v ea="$(most "${ext_anon[@]}")" -v ba="$(most "${base_anon[@]}")" \
		-v eh="$(most "${ext_hwm[@]}")" -v bh="$(most "${base_hwm[@]}")" 'BEGIN {
		printf "%-14s %-17s %8d %18.1f %18.1f %12.1f %12.1f",
			"reconciliation", "memory-" n, n, ea / 1024, ba / 1024, eh / 1024, bh / 1024 }')")
	sizes+=("$n") best_ext+=("$be") best_base+=("$bb")
done

printf '%-14s %-17s %8s %8s %8s %8s %6s %6s %6s %6s\n' workload case lines orders \
	"ext s" "base s" ratio min med max
printf '%s\n' "${rows[@]}"
if [ ${#sizes[@]} -gt 1 ]; then
	last=$((${#sizes[@]} - 1))
	awk -v a="${sizes[0]}" -v z="${sizes[$last]}" -v ea="${best_ext[0]}" -v ez="${best_ext[$last]}" \
		-v ba="${best_base[0]}" -v bz="${best_base[$last]}" 'BEGIN {
		printf "%-14s %-17s %.0fx the orders: reconcile %.1fx the seconds, baseline %.1fx\n",
			"reconciliation", "growth", z / a, ez / ea, bz / ba }'
fi
echo
printf '%-14s %-17s %8s %18s %18s %12s %12s\n' workload case orders \
	"ext private MB" "base private MB" "ext VmHWM MB" "base VmHWM MB"
printf '%s\n' "${memory[@]}"
echo "($ROUNDS alternating rounds, baseline then reconcile, each in a fresh session; s: the best run of each side;"
echo " ratio = best base s / best ext s (1.00 = as fast; target >= 0.80); min, med, max: of each round's ratio;"
echo " memory: the most a run raised the backend's private memory (RssAnon, sampled every 10 ms) and its peak"
echo " resident set (VmHWM, which also counts the shared buffers and libraries it touched) above a fresh"
echo " backend's; $("${PSQL[@]}" -c "SELECT format('work_mem %s, shared_buffers %s, jit %s',
	current_setting('work_mem'), current_setting('shared_buffers'), current_setting('jit'))"))"
