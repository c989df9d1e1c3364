#!/usr/bin/env bash
# Set everything up and run every test suite: pg_regress, isolation specs and
# TAP tests, each against scratch clusters with shared_preload_libraries =
# 'payments'.  Ends with "N passed, N failed"; exits non-zero on any failure.
source "$(dirname "$0")/lib.sh"

# The test command's build fails on any compiler warning (the demo's does not).
BUILD_COPT=-Werror
setup_all
SRC="$SCRATCH/src"
LOG="$SCRATCH/test-logs"
as_user mkdir -p "$LOG"

passed=0
failed=0

# count_regress FILE: pg_regress and pg_isolation_regress print one
# "name ... ok|FAILED" line per test.
count_regress() {
	local ok bad
	ok=$(grep -cE '\.\.\. ok|\.\.\. ignored' "$1" || true)
	bad=$(grep -cE '\.\.\. FAILED|\.\.\. failed' "$1" || true)
	passed=$((passed + ok))
	failed=$((failed + bad))
}

# count_tap FILE: prove's summary gives the number of assertions run
# ("Files=N, Tests=N"); each failing file reports "Failed N/M subtests", and
# a file that died without failing an assertion is "Dubious" on its own.
count_tap() {
	local total bad dubious listed
	total=$(sed -n 's/^Files=[0-9]*, Tests=\([0-9]*\),.*/\1/p' "$1" | tail -n 1)
	bad=$(sed -n 's/^Failed \([0-9]*\)\/[0-9]* subtests.*/\1/p' "$1" | awk '{ s += $1 } END { print s + 0 }')
	dubious=$(grep -c '^Dubious' "$1" || true)
	listed=$(grep -c '^Failed [0-9]*/[0-9]* subtests' "$1" || true)
	passed=$((passed + ${total:-0} - bad))
	failed=$((failed + bad + (dubious > listed ? dubious - listed : 0)))
}

# count_pass_fail FILE: test/package/run.sh prints one "PASS: ..." or
# "FAIL: ..." line per check.
count_pass_fail() {
	passed=$((passed + $(grep -c '^PASS:' "$1" || true)))
	failed=$((failed + $(grep -c '^FAIL:' "$1" || true)))
}

# run_suite NAME COUNTER [COMMAND...]: the command defaults to the
# Makefile's test-NAME target, run as the run user.
run_suite() {
	local name=$1 counter=$2 status=0
	shift 2
	[ $# -gt 0 ] || set -- as_user make -C "$SRC" -s PG_CONFIG="$PG_CONFIG" "test-$name"
	say "running $name tests"
	"$@" >"$LOG/$name.out" 2>&1 || status=$?
	cat "$LOG/$name.out"
	local before=$failed
	$counter "$LOG/$name.out"
	if [ "$status" -ne 0 ] && [ "$failed" -eq "$before" ]; then
		# The suite failed before it could report any test (a crash, a
		# build error): count it as one failure rather than none.
		failed=$((failed + 1))
	fi
	for diffs in "$SRC/regression.diffs" "$SRC/output_iso/regression.diffs"; do
		if [ "$status" -ne 0 ] && [ -s "$diffs" ]; then
			echo "---- $diffs"
			cat "$diffs"
		fi
	done
	if [ "$status" -ne 0 ] && [ "$name" = tap ] && [ -d "$SRC/tmp_check/log" ]; then
		for f in "$SRC"/tmp_check/log/regress_log_*; do
			echo "---- $f (last 60 lines)"
			tail -n 60 "$f"
		done
	fi
}

run_suite regress count_regress
run_suite isolation count_regress
run_suite tap count_tap
# The Citus tests (test/t/950_citus.pl) need Citus in this PostgreSQL; a
# user installs it from Citus's own packages, CI (.ci/run) from the source
# archive in ../shared/vendor.
skipped=""
if [ ! -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; then
	skipped=" (Citus is not installed: the Citus tests, test/t/950_citus.pl, were skipped)"
	say "Citus is not installed: the Citus tests (test/t/950_citus.pl) were skipped"
fi
# Last, as root: it installs the Debian package into the system's PostgreSQL
# and purges it again, putting back what make install had put there.
run_suite package count_pass_fail "$REPO_DIR/test/package/run.sh"

echo
echo "$passed passed, $failed failed$skipped"
[ "$failed" -eq 0 ]
