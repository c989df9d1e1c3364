#!/usr/bin/env bash
# Benchmark runner: sets everything up like scripts/demo.sh, starts a scratch
# cluster of its own, and runs each workload under test/bench/<workload>/.
#
#   test/bench/run.sh                 every workload
#   test/bench/run.sh idempotency     only the ones named
#
# Environment: BENCH_SECONDS (per pgbench run, default 10), BENCH_ROUNDS
# (alternating baseline/extension runs per case, default 2; the best run of
# each side gives the ratio, and each round's own ratio gives the spread
# beside it), PAYMENTS_BENCH_PORT (default 55433).
#
# A workload directory holds:
#   setup.sql    run once in a fresh database before its cases
#   cases        one case a line: LABEL CLIENTS EXTENSION.sql BASELINE.sql
#                [SETTING=VALUE ...], the settings applied to both sides'
#                sessions (for example synchronous_commit=off)
#   *.sql        pgbench scripts
#   figures.sh   optional, executable: run after the cases, with the
#                connection as below, for figures that are not ratios (a
#                cost in microseconds, printed, never compared); what it
#                prints is printed again under the table
# or, for a workload that is not a throughput ratio, an executable run.sh
# that gets the connection in PGHOST/PGPORT/PGUSER/PGDATABASE, and
# BENCH_SECONDS and BENCH_ROUNDS.
#
# Every figure is a ratio measured in the same invocation on the same
# cluster, never an absolute number compared with a constant.
source "$(dirname "$0")/../../scripts/lib.sh"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-2}
BENCH_DIR="$SCRATCH/bench"
BENCH_PORT=${PAYMENTS_BENCH_PORT:-55433}

setup_all
say "starting the bench cluster in $BENCH_DIR (port $BENCH_PORT)"
start_cluster "$BENCH_DIR" "$BENCH_PORT"

export PGHOST="$BENCH_DIR" PGPORT="$BENCH_PORT" PGUSER=postgres
PSQL=(psql -X -q -v ON_ERROR_STOP=1)

# pgbench_tps DB SCRIPT CLIENTS [SETTING=VALUE ...]: transactions per
# second of one run, with the settings given to every session
pgbench_tps() {
	local db=$1 script=$2 clients=$3 jobs=1 out options="" setting
	shift 3
	for setting in "$@"; do options="$options -c $setting"; done
	[ "$clients" -gt 1 ] && jobs=2
	as_user "${PSQL[@]}" -d "$db" -c CHECKPOINT
	out=$(as_user env PGOPTIONS="$options" pgbench -n -M prepared -T "$BENCH_SECONDS" \
		-c "$clients" -j "$jobs" -f "$script" "$db" 2>&1) ||
		{ echo "$out" >&2; die "pgbench failed on $script"; }
	sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out"
}

max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }

# spread RATIO...: the smallest, median and largest of the per-round ratios
spread() {
	printf '%s\n' "$@" | sort -g | awk '{ r[NR] = $1 }
		END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		      printf "%.2f %.2f %.2f", r[1], m, r[NR] }'
}

results=()
figures=()
if [ $# -gt 0 ]; then workloads=("$@"); else
	workloads=()
	for d in "$SCRATCH"/src/test/bench/*/; do workloads+=("$(basename "$d")"); done
fi

for w in "${workloads[@]}"; do
	dir="$SCRATCH/src/test/bench/$w"
	[ -d "$dir" ] || die "no workload named $w"
	db="bench_$w"
	as_user "${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
	if [ -x "$dir/run.sh" ]; then
		say "workload $w"
		(cd "$dir" && PGDATABASE="$db" as_user env PGHOST="$PGHOST" PGPORT="$PGPORT" \
			PGUSER="$PGUSER" PGDATABASE="$db" BENCH_SECONDS="$BENCH_SECONDS" \
			BENCH_ROUNDS="$BENCH_ROUNDS" ./run.sh)
		continue
	fi
	say "workload $w: setup"
	as_user "${PSQL[@]}" -d "$db" -f "$dir/setup.sql" >/dev/null
	while read -r label clients ext base settings; do
		case "$label" in '' | '#'*) continue ;; esac
		best_ext=0
		best_base=0
		paired=()
		for _ in $(seq "$BENCH_ROUNDS"); do
			# shellcheck disable=SC2086
			tps_base=$(pgbench_tps "$db" "$dir/$base" "$clients" $settings)
			# shellcheck disable=SC2086
			tps_ext=$(pgbench_tps "$db" "$dir/$ext" "$clients" $settings)
			best_base=$(max "$best_base" "$tps_base")
			best_ext=$(max "$best_ext" "$tps_ext")
			paired+=("$(awk -v e="$tps_ext" -v b="$tps_base" 'BEGIN { print e / b }')")
		done
		read -r lo med hi <<<"$(spread "${paired[@]}")"
		line=$(awk -v w="$w" -v l="$label" -v c="$clients" -v e="$best_ext" -v b="$best_base" \
			-v lo="$lo" -v med="$med" -v hi="$hi" \
			'BEGIN { printf "%-12s %-22s %7d %12.0f %12.0f %7.2f %6.2f %6.2f %6.2f", w, l, c, e, b, e / b, lo, med, hi }')
		echo "$line"
		results+=("$line")
	done <"$dir/cases"
	if [ -x "$dir/figures.sh" ]; then
		out=$(cd "$dir" && as_user env PGHOST="$PGHOST" PGPORT="$PGPORT" PGUSER="$PGUSER" \
			PGDATABASE="$db" ./figures.sh) || die "figures.sh of workload $w failed"
		echo "$out"
		figures+=("$out")
	fi
done

if [ ${#results[@]} -gt 0 ]; then
	echo
	printf '%-12s %-22s %7s %12s %12s %7s %6s %6s %6s\n' workload case clients "ext tps" "base tps" ratio min med max
	printf '%s\n' "${results[@]}"
	echo "($BENCH_ROUNDS alternating runs of ${BENCH_SECONDS}s per side; tps: best of each side; ratio = best ext / best base;"
	echo " min, med, max: of the $BENCH_ROUNDS ratios of a round's ext run to the base run just before it)"
fi
if [ ${#figures[@]} -gt 0 ]; then
	echo
	printf '%s\n' "${figures[@]}"
fi
