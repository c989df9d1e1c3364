#!/usr/bin/env bash
# Each hot path on tables holding PAYMENTS_SCALE_ROWS (default 10,000,000)
# historical rows against the same path on empty tables, and the plain-SQL
# baseline of its workload likewise (issue 19):
#
#   idempotency begin+complete (1 and 16 clients)  idempotency_keys
#   reserve+confirm, hot SKU and 1,000 SKUs (16)    reservations
#   guarded UPDATE with its history (16)            state_history
#   enqueue+drain of compensations (16)             compensations
#
# Each part gets two fresh databases, set up alike with the workload's own
# setup.sql (the tables the pgbench scripts of test/bench/<workload> use,
# with their indexes), then emptied: "empty" keeps them so, "big" gets the
# historical rows, in the extension's table and the same rows in the
# baseline's table.  The rows are written with INSERT ... SELECT
# generate_series as the table owner (a superuser), never by calling the
# functions: what the functions would have left behind, with every
# constraint of the tables met.  No trigger of the extension guards these
# tables (the guard's trigger is on the application's table, and the
# history is written beside it), so nothing is bypassed; payments.check()
# must find nothing in the result.  Then VACUUM ANALYZE.  Both databases
# are dropped at the end of their part, so only one part's rows are on disk
# at a time (about 7 GB for idempotency at 10,000,000).
#
# A round runs base on empty, base on big, extension on empty, extension on
# big (BENCH_SECONDS each, a CHECKPOINT before each).  The figures: tps of
# each (best of the rounds), ratio big/empty of the best runs and min, med,
# max of each round's ratio; ext/base on empty and on big (best / best).
# The target: ext big/empty >= 0.9, or, where the baseline drops as much
# on the same rows, ext/base on big about what it is on empty.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set (a
# superuser), BENCH_SECONDS and BENCH_ROUNDS.
set -euo pipefail

ROWS=${PAYMENTS_SCALE_ROWS:-10000000}
# The parts to run, for a run again of some of them.
PARTS=${PAYMENTS_SCALE_PARTS:-idempotency reservation state_guard compensation}
SECS=${BENCH_SECONDS:-10}
ROUNDS=${BENCH_ROUNDS:-2}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)
EMPTY="${PGDATABASE}_empty"
BIG="${PGDATABASE}_big"
# The workloads whose scripts and setup this one reuses.
BENCH=$(cd .. && pwd)
# A label for the big side in the table: 10M, 100k, ...
BIGNAME=$(awk -v n="$ROWS" 'BEGIN { if (n >= 1e6 && n % 1e6 == 0) printf "%dM", n / 1e6;
	else if (n >= 1e3 && n % 1e3 == 0) printf "%dk", n / 1e3; else print n }')

say() { printf '\n==> scale: %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

drop_dbs() {
	"${PSQL[@]}" -d postgres -c "DROP DATABASE IF EXISTS $EMPTY WITH (FORCE)" \
		-c "DROP DATABASE IF EXISTS $BIG WITH (FORCE)"
}
# Whatever happens, the databases do not stay behind to fill the disk.
trap drop_dbs EXIT

# fresh_dbs SETUP.sql: both databases, set up by the workload's setup.sql
fresh_dbs() {
	drop_dbs
	for db in "$EMPTY" "$BIG"; do
		"${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"
		"${PSQL[@]}" -d "$db" -f "$1" >/dev/null
	done
}

# load DB: runs the SQL on stdin in DB, with ROWS as :rows, and says how
# long it took and how big the database is now
load() {
	local db=$1 t0 t1
	t0=$(date +%s)
	"${PSQL[@]}" -d "$db" -v rows="$ROWS" >/dev/null
	t1=$(date +%s)
	say "loaded $db in $((t1 - t0)) s; database size $("${PSQL[@]}" -d "$db" \
		-c "SELECT pg_size_pretty(pg_database_size(current_database()))")"
}

# consistent DB: payments.check() finds nothing in the loaded rows
consistent() {
	local found
	found=$("${PSQL[@]}" -d "$1" -c 'SELECT count(*) FROM payments.check()')
	[ "$found" = 0 ] || {
		"${PSQL[@]}" -d "$1" -c 'SELECT * FROM payments.check() LIMIT 20' >&2
		die "payments.check() found $found violations in the loaded rows of $1"
	}
	say "payments.check() on $1: nothing found"
	# the scans of the load and of check() are not the hot paths'
	"${PSQL[@]}" -d "$1" -c 'SELECT pg_stat_reset()' >/dev/null
}

# pgbench_tps DB SCRIPT CLIENTS: transactions per second of one run, as in
# test/bench/run.sh
pgbench_tps() {
	local db=$1 script=$2 clients=$3 jobs=1 out
	[ "$clients" -gt 1 ] && jobs=2
	"${PSQL[@]}" -d "$db" -c CHECKPOINT
	out=$(pgbench -n -M prepared -T "$SECS" -c "$clients" -j "$jobs" -f "$script" "$db" 2>&1) ||
		{ echo "$out" >&2; die "pgbench failed on $script in $db"; }
	sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$out"
}

# drain_rate DB TABLE SCRIPT CLIENTS: compensations enqueued by pgbench for
# BENCH_SECONDS and drained meanwhile, per second from the start of the
# enqueues to the finish of the last one drained.  TABLE is
# payments.compensations, drained by this database's worker, or
# baseline_queue, drained by one session running the batch loop of
# test/bench/compensation (1,000 at a time, FOR UPDATE SKIP LOCKED) until
# pgbench is done and the queue empty.
drain_rate() {
	local db=$1 table=$2 script=$3 clients=$4 jobs=1 out t0 id0 drainer="" left n
	[ "$clients" -gt 1 ] && jobs=2
	"${PSQL[@]}" -d "$db" -c CHECKPOINT -c 'TRUNCATE drain_stop'
	t0=$("${PSQL[@]}" -d "$db" -c 'SELECT clock_timestamp()')
	# Both tables take their ids from payments.compensations_id_seq (the
	# baseline's copies its default): the run's items are those above id0,
	# found through the primary key, not by a scan of the ten million.
	id0=$("${PSQL[@]}" -d "$db" -c "SELECT CASE WHEN is_called THEN last_value ELSE 0 END
	                                  FROM payments.compensations_id_seq")
	if [ "$table" = baseline_queue ]; then
		"${PSQL[@]}" -d "$db" -f "$BENCH/scale/baseline_drain.sql" &
		drainer=$!
	fi
	out=$(pgbench -n -M prepared -T "$SECS" -c "$clients" -j "$jobs" -f "$script" "$db" 2>&1) ||
		{ echo "$out" >&2; die "pgbench failed on $script in $db"; }
	if [ -n "$drainer" ]; then
		"${PSQL[@]}" -d "$db" -c 'INSERT INTO drain_stop VALUES (true)'
		wait "$drainer" || die "the baseline drain failed in $db"
	fi
	for _ in $(seq 600); do
		left=$("${PSQL[@]}" -d "$db" -c "SELECT count(*) FROM $table
		                                  WHERE id > $id0 AND finished_at IS NULL")
		[ "$left" = 0 ] && break
		sleep 0.2
	done
	[ "$left" = 0 ] || die "$left compensations of $table in $db were not drained"
	n=$("${PSQL[@]}" -d "$db" -c "SELECT count(*) FILTER (WHERE status = 'succeeded') || ' ' || count(*)
	                               FROM $table WHERE id > $id0")
	[ "${n% *}" = "${n#* }" ] || die "not every compensation of $table in $db succeeded ($n)"
	"${PSQL[@]}" -d "$db" -c "SELECT count(*) / extract(epoch FROM max(finished_at) - '$t0')
	                            FROM $table WHERE id > $id0"
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { print (b > 0 ? a / b : 0) }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }

# spread RATIO...: the smallest, median and largest, as in test/bench/run.sh
spread() {
	printf '%s\n' "$@" | sort -g | awk '{ r[NR] = $1 }
		END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2
		      printf "%.2f %.2f %.2f", r[1], m, r[NR] }'
}

# want PART: whether PAYMENTS_SCALE_PARTS names it
want() { [[ " $PARTS " == *" $1 "* ]]; }

lines=()
# run_case LABEL CLIENTS MEASURE EXT_ARGS BASE_ARGS: MEASURE DB ARGS...
# CLIENTS, run ROUNDS times on each side and database
run_case() {
	local label=$1 clients=$2 measure=$3 ext=$4 base=$5 r
	local be=0 bb=0 ee=0 eb=0 t_be t_bb t_ee t_eb e_ratios=() b_ratios=() line
	for r in $(seq "$ROUNDS"); do
		# shellcheck disable=SC2086
		t_be=$($measure "$EMPTY" $base "$clients")
		# shellcheck disable=SC2086
		t_bb=$($measure "$BIG" $base "$clients")
		# shellcheck disable=SC2086
		t_ee=$($measure "$EMPTY" $ext "$clients")
		# shellcheck disable=SC2086
		t_eb=$($measure "$BIG" $ext "$clients")
		say "$label $clients round $r: base $t_be -> $t_bb, ext $t_ee -> $t_eb"
		be=$(max "$be" "$t_be") bb=$(max "$bb" "$t_bb")
		ee=$(max "$ee" "$t_ee") eb=$(max "$eb" "$t_eb")
		e_ratios+=("$(ratio "$t_eb" "$t_ee")")
		b_ratios+=("$(ratio "$t_bb" "$t_be")")
	done
	read -r elo emed ehi <<<"$(spread "${e_ratios[@]}")"
	read -r blo bmed bhi <<<"$(spread "${b_ratios[@]}")"
	line=$(awk -v l="$label" -v c="$clients" -v ee="$ee" -v eb="$eb" -v be="$be" -v bb="$bb" \
		-v elo="$elo" -v emed="$emed" -v ehi="$ehi" -v blo="$blo" -v bmed="$bmed" -v bhi="$bhi" \
		'BEGIN { printf "%-26s %3d %8.0f %8.0f %5.2f %4.2f %4.2f %4.2f | %8.0f %8.0f %5.2f %4.2f %4.2f %4.2f | %5.2f %5.2f",
		         l, c, ee, eb, eb / ee, elo, emed, ehi, be, bb, bb / be, blo, bmed, bhi, ee / be, eb / bb }')
	echo "$line"
	lines+=("$line")
}

# seq_reads DB TABLE...: the scans of the big tables since the load and the
# rows they read: a scan of history on a hot path, or in the worker, shows
# here (idx_tup_fetch far above the rows the runs wrote)
seq_reads() {
	local db=$1
	shift
	say "scans in $db since the load: $("${PSQL[@]}" -d "$db" -F ' ' -R '; ' -c "
		SELECT relid::regclass, 'seq_scan', seq_scan, 'seq_tup_read', seq_tup_read,
		       'idx_scan', idx_scan, 'idx_tup_fetch', idx_tup_fetch, 'n_tup_ins', n_tup_ins
		  FROM pg_stat_user_tables WHERE relid = ANY ('{$(IFS=,; echo "$*")}'::regclass[])")"
}

# --- idempotency: completed keys in the bench's own scope ---
if want idempotency; then
say "idempotency: $ROWS completed keys"
fresh_dbs "$BENCH/idempotency/setup.sql"
for db in "$EMPTY" "$BIG"; do
	# setup.sql leaves 100,000 replay keys: out, so that empty is empty
	"${PSQL[@]}" -d "$db" -c 'TRUNCATE payments.idempotency_keys, baseline_keys'
done
load "$BIG" <<'SQL'
-- Keys completed over the last 23 hours with the default TTL of 24 hours:
-- none has expired, so the worker purges none of them during the runs.
-- Keys of the form begin_complete.sql uses ('k' || a random bigint),
-- written in time order, so that the primary key grows by random inserts
-- as it does in production (leaves about 70% full, not the 90% of an index
-- built in key order).  The bigint is n scrambled (n times a constant
-- modulo a prime just below 2^63): as spread as random ones, and never
-- twice the same, which spares the load an ON CONFLICT (twice as slow).
INSERT INTO payments.idempotency_keys
       (scope, key, request_hash, state, response, response_code,
        created_at, updated_at, completed_at, lease_expires_at, expires_at)
SELECT 'bench', 'k' || (n * 6364136223846793005::numeric % 9223372036854775783)::bigint,
       sha256(convert_to(jsonb_build_object('order', 'A-' || n, 'amount', 4990, 'currency', 'EUR')::text, 'UTF8')),
       'completed', jsonb_build_object('charge_id', n, 'status', 'succeeded'), 201,
       t, t + interval '0.2 s', t + interval '0.2 s', NULL, t + interval '24 hours'
  FROM (SELECT n, now() - interval '23 hours' * (1 - n::float8 / :rows) AS t
          FROM generate_series(1, :rows) AS n) s;
-- The baseline's table gets the same keys, in the same order.
INSERT INTO baseline_keys (scope, key, request_hash, state, response, response_code, created_at, expires_at)
SELECT scope, key, request_hash, state, response, response_code, created_at, expires_at
  FROM payments.idempotency_keys ORDER BY created_at;
VACUUM ANALYZE;
SQL
consistent "$BIG"
"${PSQL[@]}" -d "$EMPTY" -c 'VACUUM ANALYZE'
run_case "idempotency begin+complete" 1 pgbench_tps "$BENCH/idempotency/begin_complete.sql" "$BENCH/idempotency/baseline_upsert.sql"
run_case "idempotency begin+complete" 16 pgbench_tps "$BENCH/idempotency/begin_complete.sql" "$BENCH/idempotency/baseline_upsert.sql"
seq_reads "$BIG" payments.idempotency_keys baseline_keys
fi

# --- reservation: resolved holds over a year ---
if want reservation; then
say "reservation: $ROWS resolved reservations"
fresh_dbs "$BENCH/reservation/setup.sql"
load "$BIG" <<'SQL'
-- 50,000 SKUs no longer sold, sold out, besides the hot SKU and the 1,000
-- SKUs of the bench.
INSERT INTO payments.stock (sku, slots, received, created_at, updated_at)
SELECT 'old-' || i, 1, 0, now() - interval '400 days', now() - interval '400 days'
  FROM generate_series(1, 50000) AS i;
INSERT INTO payments.stock_slots (sku, slot, available)
SELECT 'old-' || i, 0, 0 FROM generate_series(1, 50000) AS i;
INSERT INTO baseline_stock SELECT 'old-' || i, 0 FROM generate_series(1, 50000) AS i;
-- A year of holds, in time order (ids grow with time, as with the
-- sequence): 10% on the hot SKU, 40% on the 1,000 SKUs, 50% on the old
-- ones; 90% confirmed, 7% released, 3% expired, each resolved within its
-- TTL of 15 minutes (expired ones at its end).  Order references are
-- random, as in hot.sql and spread.sql.
INSERT INTO payments.reservations (order_ref, sku, qty, state, expires_at, created_at, resolved_at)
SELECT 'o' || (1 + floor(random() * 1000000000))::bigint,
       CASE WHEN n % 10 = 0 THEN 'hot'
            WHEN n % 10 < 5 THEN 'sku-' || (n / 10 % 1000 + 1)
            ELSE 'old-' || (n::bigint * 7919 % 50000 + 1) END,
       1 + n % 3,
       CASE WHEN n % 100 < 90 THEN 'confirmed' WHEN n % 100 < 97 THEN 'released' ELSE 'expired' END,
       t + interval '15 minutes', t,
       CASE WHEN n % 100 < 90 THEN t + (n % 600) * interval '1 s'
            WHEN n % 100 < 97 THEN t + interval '5 minutes'
            ELSE t + interval '15 minutes' END
  FROM (SELECT n, now() - interval '365 days' * (1 - n::float8 / :rows) - interval '1 hour' AS t
          FROM generate_series(1, :rows) AS n) s;
-- What was sold was received first: the ledger of each SKU (received =
-- available + held + sold) holds as it did before.
UPDATE payments.stock s SET received = s.received + x.sold
  FROM (SELECT sku, sum(qty) AS sold FROM payments.reservations
         WHERE state = 'confirmed' GROUP BY sku) x
 WHERE s.sku = x.sku;
INSERT INTO baseline_holds (order_ref, sku, qty, state, expires_at, created_at, resolved_at)
SELECT order_ref, sku, qty, state, expires_at, created_at, resolved_at
  FROM payments.reservations ORDER BY id;
VACUUM ANALYZE;
SQL
consistent "$BIG"
run_case "reserve+confirm hot SKU" 16 pgbench_tps "$BENCH/reservation/hot.sql" "$BENCH/reservation/baseline_hot.sql"
run_case "reserve+confirm 1000 SKUs" 16 pgbench_tps "$BENCH/reservation/spread.sql" "$BENCH/reservation/baseline_spread.sql"
seq_reads "$BIG" payments.reservations payments.stock payments.stock_slots baseline_holds baseline_stock
fi

# --- state guard: the history of orders archived since ---
if want state_guard; then
say "state guard: $ROWS history rows"
fresh_dbs "$BENCH/state_guard/setup.sql"
load "$BIG" <<'SQL'
-- Five moves per order (inserted pending, then pending -> active ->
-- pending -> active -> pending) over a year, for orders 100,001 and up:
-- orders archived out of orders_guard since, whose history stays.  Each
-- move as the guard writes it; txid is the loading transaction's, as if
-- one transaction had made them all (nothing reads it back).
INSERT INTO payments.state_history (tbl, col, row_key, from_state, to_state, changed_at, txid, changed_by)
SELECT 'orders_guard'::regclass, 'status', (100001 + n / 5)::text,
       CASE n % 5 WHEN 0 THEN NULL WHEN 1 THEN 'pending' WHEN 2 THEN 'active'
                  WHEN 3 THEN 'pending' ELSE 'active' END,
       CASE n % 5 WHEN 1 THEN 'active' WHEN 3 THEN 'active' ELSE 'pending' END,
       now() - interval '365 days' * (1 - n::float8 / :rows) - interval '1 hour',
       pg_current_xact_id(), 'app'
  FROM generate_series(0, :rows - 1) AS n;
-- The PL/pgSQL baseline's history gets the same rows.
INSERT INTO plpgsql_history (tbl, col, row_key, from_state, to_state, changed_at, txid, changed_by)
SELECT 'orders_plpgsql'::regclass, col, row_key, from_state, to_state, changed_at, txid, changed_by
  FROM payments.state_history ORDER BY id;
VACUUM ANALYZE;
SQL
consistent "$BIG"
run_case "guarded UPDATE" 16 pgbench_tps "$BENCH/state_guard/update_guard.sql" "$BENCH/state_guard/update_plpgsql.sql"
seq_reads "$BIG" payments.state_history plpgsql_history orders_guard orders_plpgsql
fi

# --- compensations: a year of succeeded ones ---
if want compensation; then
say "compensation: $ROWS succeeded compensations"
fresh_dbs "$BENCH/scale/compensation_setup.sql"
load "$BIG" <<'SQL'
-- Refunds of a year, each run once and succeeded within a second, with a
-- dedup key of the form enqueue.sql uses ('c' || a random bigint,
-- scrambled as the idempotency keys above).  The same rows in the
-- baseline's queue.
INSERT INTO payments.compensations
       (handler, payload, dedup_key, status, attempts, max_attempts, next_attempt_at,
        enqueued_by, created_at, updated_at, finished_at, handler_owner, claim_token)
SELECT 'public.noop(jsonb)', jsonb_build_object('order', 'A-' || n, 'amount', 4990),
       'c' || (n * 6364136223846793005::numeric % 9223372036854775783)::bigint, 'succeeded', 1, 10, t,
       'postgres'::regrole, t, t + interval '1 s', t + interval '1 s', 'postgres'::regrole, n
  FROM (SELECT n, now() - interval '365 days' * (1 - n::float8 / :rows) - interval '1 hour' AS t
          FROM generate_series(1, :rows) AS n) s;
INSERT INTO baseline_queue
SELECT * FROM payments.compensations ORDER BY id;
VACUUM ANALYZE;
SQL
consistent "$BIG"
for db in "$EMPTY" "$BIG"; do
	for _ in $(seq 100); do
		[ "$("${PSQL[@]}" -d "$db" -c 'SELECT pid IS NOT NULL FROM payments.worker_status()')" = t ] && break
		sleep 0.2
	done
done
run_case "compensation enqueue+drain" 16 drain_rate "payments.compensations $BENCH/scale/enqueue.sql" \
	"baseline_queue $BENCH/scale/baseline_enqueue.sql"
seq_reads "$BIG" payments.compensations baseline_queue
fi

echo
printf '%-26s %3s %8s %8s %5s %4s %4s %4s | %8s %8s %5s %4s %4s %4s | %5s %5s\n' \
	"scale ($BIGNAME rows)" cl "ext 0" "ext $BIGNAME" ratio min med max \
	"base 0" "base $BIGNAME" ratio min med max "e/b 0" "e/b $BIGNAME"
printf '%s\n' "${lines[@]}"
echo "($ROUNDS rounds of base empty, base $BIGNAME, ext empty, ext $BIGNAME, ${SECS}s each; tps: best of each;"
echo " ratio = best $BIGNAME / best empty; min, med, max: of each round's own ratio; e/b: best ext / best base;"
echo " compensation: items enqueued and drained per second, from the first enqueue to the last finish)"
