#!/usr/bin/env bash
# Transactional outbox, end to end (issue: "send + claim + ack of 100,000
# messages over 1,000 keys with 4 relays, against the plain SQL a team
# writes: at least 0.8x while keeping per-key order; report the latency
# p50/p99 from commit to claim").
#
# Both sides run the same shape at once: SENDERS (8) pgbench clients send
# MESSAGES (100,000) messages, each in its own transaction, to topic
# 'orders' with a key drawn from 1,000; RELAYS (4) relay.py sessions,
# started first, loop: claim up to BATCH (100) in one transaction, deliver
# them (a log line each), acknowledge the batch in one more transaction
# (one statement), until every message is acknowledged.
#
#   ext   outbox_send as bench_outbox_sender (granted 'send'); outbox_claim
#         and outbox_ack_batch of the batch as bench_outbox_relay (granted
#         'relay').  Each run starts from a fresh CREATE EXTENSION
#         (fresh_ext.sql): a new deployment, no rows, no statistics.
#   base  public.base_outbox (fresh_base.sql), a new table per run: INSERT;
#         UPDATE ... WHERE id = ANY (ARRAY(SELECT ... ORDER BY id LIMIT 100
#         FOR UPDATE SKIP LOCKED)); UPDATE ... WHERE id = ANY (batch).  The
#         same states, lease, roles, payloads, keys and relay program as
#         the extension's, a partial index like its, no per-key order.
#
# The ceilings: per-key order in plain SQL, the same workload, relays
# polling.  They must deliver in key order as the extension does, and show
# what that order costs without the extension on the same machine in the
# same round.  BENCH_OUTBOX_CEILINGS lists the ones to run (default:
# ready; empty: none).
#   ready      the extension's way (fresh_ready.sql, send_ready.sql): each
#              key's first unacknowledged message is marked ready and the
#              claim takes ready ones only; a PL/pgSQL send takes the key's
#              advisory lock, then inserts, ready when the key has no
#              unacknowledged message; a PL/pgSQL ack takes its keys' locks,
#              acknowledges the batch and marks each key's next message
#              ready.
#   notexists  the simplest (fresh_notexists.sql, send_notexists.sql): the
#              sender takes the key's lock in its INSERT before the id is
#              drawn, held to its commit; the claim skips a message while an
#              earlier one of its key is unacknowledged (NOT EXISTS on a
#              partial index of topic, key and id); the base ack.  It slows
#              down with the backlog: every claim scans from the oldest
#              unacknowledged message.
#
# Time: from a run's first sent_at to its last acknowledgement; msg/s: the
# messages acknowledged over that time; the ratio: ext msg/s over base
# msg/s (base time over ext time).  Each case runs BENCH_ROUNDS rounds,
# baseline, ceilings, then extension; the ratio is of each side's best
# run, and min, med, max of each round's pair.  Rows CASE-vs-CEILING put
# the extension against a ceiling of the same rounds, and the rows
# ceiling-CEILING-sql a ceiling against the baseline, over the rounds of
# every case.  An extension or ceiling run still going after CAP_FACTOR
# (10) times its round's baseline time (at least MIN_CAP, 60 s) is cut off:
# its msg/s counts what it acknowledged by then.  A cut-off extension run
# also skips the case's later rounds and fails the bench.
#
# Checks of every run: each message acknowledged and delivered, the
# redeliveries (a lease that ran out) counted; per key, the adjacent pairs
# (in id order, which on the extension's side and the ceilings' is a key's
# commit order) that the relays delivered in the other order.  The
# extension's side and the ceilings' must have none, by the relays' log
# and by their own ack times, and lose nothing:
# the bench fails otherwise.  Latency: from a message's sent_at (its send
# statement, before its COMMIT and the COMMIT's WAL flush: an upper bound)
# to the clock_timestamp() of the claim that first took it.
#
# Cases, as the extension's side runs (the baseline always polls):
#   defaults          payments.outbox_notify on (the default), relays block
#                     on LISTEN payments_outbox between claims
#   notify-off        payments.outbox_notify = off for the senders, relays
#                     poll every POLL_MS (10) ms
#   notify-on+poll    notify on, relays poll
#   drain             a relay outage: the senders (notify off) first, then
#                     ANALYZE (as autovacuum would have by then), then the
#                     relays, polling, timed from their start to the last ack
# BENCH_OUTBOX_CASES lists the cases to run (default: defaults notify-off).
#
# Knobs: BENCH_OUTBOX_MESSAGES, _SENDERS, _RELAYS, _BATCH, _POLL_MS,
# _CAP_FACTOR, _MIN_CAP, _CASES, and _RATE (messages per second of all
# senders together, pgbench -R: the latency below saturation; unset, the
# senders go as fast as they can).
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set (a
# superuser), BENCH_ROUNDS.  explain.sh (run by hand) shows the claim's
# plans at a backlog of 100,000.
set -euo pipefail

MESSAGES=${BENCH_OUTBOX_MESSAGES:-100000}
SENDERS=${BENCH_OUTBOX_SENDERS:-8}
RELAYS=${BENCH_OUTBOX_RELAYS:-4}
BATCH=${BENCH_OUTBOX_BATCH:-100}
POLL_MS=${BENCH_OUTBOX_POLL_MS:-10}
CAP_FACTOR=${BENCH_OUTBOX_CAP_FACTOR:-10}
MIN_CAP=${BENCH_OUTBOX_MIN_CAP:-60}
RATE=${BENCH_OUTBOX_RATE:-}     # messages per second of all senders together; unset: as fast as they can
BASE_CAP=600
LEASE='1 minute'
ROUNDS=${BENCH_ROUNDS:-2}
CEILINGS=${BENCH_OUTBOX_CEILINGS-ready}
PYTHON=${PYTHON:-/usr/bin/python3}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)
HERE=$(pwd)
TMP=$(mktemp -d)
children=()     # this script's relays and senders, ended if it stops early
trap 'kill "${children[@]}" 2>/dev/null || true; rm -rf "$TMP"' EXIT

[ $((MESSAGES % SENDERS)) = 0 ] || { echo "BENCH_OUTBOX_MESSAGES must be a multiple of BENCH_OUTBOX_SENDERS" >&2; exit 1; }

"${PSQL[@]}" -f schema.sql >/dev/null

# The messages of a side, as the checks read them.
messages_sql() {
	if [ "$1" = ext ]; then
		echo "SELECT id, key, sent_at, settled_at AS acked_at, status = 'acked' AS acked, attempts FROM payments.outbox"
	else
		echo "SELECT id, key, sent_at, acked_at, status = 'acked' AS acked, attempts FROM public.base_outbox"
	fi
}
unacked_sql() {
	if [ "$1" = ext ]; then
		echo "SELECT EXISTS (SELECT FROM payments.outbox WHERE settled_at IS NULL)"
	else
		echo "SELECT EXISTS (SELECT FROM public.base_outbox WHERE acked_at IS NULL)"
	fi
}

run_no=0
cut_off_runs=()
# one_run SIDE VARIANT ROUND NOTIFY WAIT CAP DRAIN: one run, its figures
# in public.runs as run number $run_no; cut says whether it was cut off.
# DRAIN true: the senders first, then the relays, timed from their start.
cut=false
one_run() {
	local side=$1 variant=$2 round=$3 notify=$4 wait=$5 cap=$6 drain=$7
	local r pids=() pid sender t0 failed=0 t_start=NULL t_end=NULL bad claims empty conflicts
	cut=false
	run_no=$((run_no + 1))
	"${PSQL[@]}" -f "fresh_$side.sql" >/dev/null
	"${PSQL[@]}" -c "UPDATE public.bench_ctl SET stop = false" -c CHECKPOINT
	start_relays() {
		for r in $(seq "$RELAYS"); do
			"$PYTHON" "$HERE/relay.py" "$side" "$run_no" "$r" "$BATCH" "$LEASE" "$wait" "$POLL_MS" \
				"$TMP/log.$run_no.$r" &
			pids+=($!)
		done
		children+=("${pids[@]}")
	}
	start_senders() {
		PGUSER=bench_outbox_sender PGOPTIONS="-c payments.outbox_notify=$notify" \
			pgbench -n -M prepared -c "$SENDERS" -j 2 -t $((MESSAGES / SENDERS)) ${RATE:+-R "$RATE"} \
			-f "$HERE/send_$side.sql" >"$TMP/pgbench.out" 2>&1 &
		sender=$!
		children+=("$sender")
	}
	senders_done() {
		wait "$sender" || $cut || { cat "$TMP/pgbench.out" >&2; echo "outbox: the senders failed" >&2; exit 1; }
	}
	if $drain; then
		start_senders
		senders_done
		# as autovacuum would have by then, in an outage of some minutes
		"${PSQL[@]}" -c "ANALYZE $([ "$side" = ext ] && echo payments.outbox || echo public.base_outbox)"
		t_start="'$("${PSQL[@]}" -c "SELECT clock_timestamp()")'::timestamptz"
		start_relays
	else
		start_relays
		start_senders
	fi
	t0=$SECONDS
	while :; do
		sleep 0.2
		if ! kill -0 "$sender" 2>/dev/null && [ "$("${PSQL[@]}" -c "$(unacked_sql "$side")")" = f ]; then
			break
		fi
		if [ $((SECONDS - t0)) -ge "$cap" ]; then
			cut=true
			t_end="'$("${PSQL[@]}" -c "SELECT clock_timestamp()")'::timestamptz"
			kill "$sender" 2>/dev/null || true
			break
		fi
	done
	$drain || senders_done
	"${PSQL[@]}" -c "UPDATE public.bench_ctl SET stop = true"
	if $cut; then
		# the relays stop at their next statement; cancel the one they are in
		for _ in 1 2 3 4 5; do
			"${PSQL[@]}" -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity
			                  WHERE application_name = 'bench_outbox_relay_$run_no'" >/dev/null
			sleep 0.5
		done
	fi
	for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
	children=()
	[ "$failed" = 0 ] || { echo "outbox: a relay failed ($side, run $run_no)" >&2; exit 1; }
	for r in $(seq "$RELAYS"); do cat "$TMP/log.$run_no.$r"; done |
		"${PSQL[@]}" -c "\\copy public.relay_log FROM STDIN"
	read -r claims empty conflicts < <(for r in $(seq "$RELAYS"); do cat "$TMP/log.$run_no.$r.claims"; done |
		awk '{ c += $1; e += $2; x += $4 } END { print c, e, x }')
	rm -f "$TMP"/log."$run_no".*
	"${PSQL[@]}" <<-SQL
		INSERT INTO public.runs
		WITH m AS ($(messages_sql "$side")),
		l AS (SELECT * FROM public.relay_log WHERE run = $run_no),
		first AS (SELECT DISTINCT ON (id) id, key, claimed_at, delivered_ns
		            FROM l ORDER BY id, delivered_ns),
		delivery AS (SELECT key, delivered_ns < lag(delivered_ns) OVER (PARTITION BY key ORDER BY id) AS inverted
		               FROM first),
		settle AS (SELECT acked_at < lag(acked_at) OVER (PARTITION BY key ORDER BY id) AS inverted
		             FROM m WHERE acked),
		latency AS (SELECT extract(epoch FROM f.claimed_at - m.sent_at) * 1000 AS ms
		              FROM first f JOIN m USING (id))
		SELECT $run_no, '$side', '$variant', $round, $cut,
		       (SELECT count(*) FROM m),
		       (SELECT count(*) FILTER (WHERE acked) FROM m),
		       (SELECT count(*) FROM l),
		       (SELECT count(*) - count(DISTINCT id) FROM l),
		       (SELECT count(*) FROM m WHERE NOT acked OR NOT EXISTS (SELECT FROM first f WHERE f.id = m.id)),
		       (SELECT count(*) FROM m WHERE attempts > 1),
		       (SELECT count(*) FILTER (WHERE inverted) FROM delivery),
		       (SELECT count(DISTINCT key) FILTER (WHERE inverted) FROM delivery),
		       (SELECT count(*) FILTER (WHERE inverted) FROM settle),
		       (SELECT extract(epoch FROM coalesce($t_end, max(acked_at)) - coalesce($t_start, min(sent_at))) FROM m),
		       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FROM latency),
		       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FROM latency),
		       (SELECT max(ms) FROM latency),
		       $claims, $empty, $conflicts;
	SQL
	"${PSQL[@]}" -c "DELETE FROM public.relay_log WHERE run = $run_no"
	# What fails the bench at once: a lost message, or a side that keeps
	# per-key order out of it.
	bad=$("${PSQL[@]}" -c "SELECT concat_ws(', ',
	           CASE WHEN NOT cut_off AND messages <> $MESSAGES THEN messages || ' messages sent, not $MESSAGES' END,
	           CASE WHEN NOT cut_off AND (acked <> $MESSAGES OR undelivered > 0)
	                THEN undelivered || ' messages not acknowledged or not delivered' END,
	           CASE WHEN side <> 'base' AND (order_violations > 0 OR settle_violations > 0)
	                THEN order_violations || ' pairs delivered and ' || settle_violations
	                     || ' pairs acknowledged out of per-key order' END)
	         FROM public.runs WHERE run = $run_no")
	[ -z "$bad" ] || { echo "outbox: $side run $run_no ($variant, round $round): $bad" >&2; exit 1; }
	"${PSQL[@]}" -c "SELECT format('  %-14s %-4s round %s: %s msg/s, %s s%s, send-to-claim p50 %s ms p99 %s ms, %s pairs out of key order, %s redelivered',
	                               variant, side, round, round(acked / elapsed), round(elapsed::numeric, 1),
	                               CASE WHEN cut_off THEN ' (CUT OFF, ' || acked || ' of ' || messages || ' acknowledged)' ELSE '' END,
	                               round(p50_ms::numeric, 1), round(p99_ms::numeric, 1), order_violations, redelivered)
	                   FROM public.runs WHERE run = $run_no" >&2
	if $cut && [ "$side" = ext ]; then
		cut_off_runs+=("$side run $run_no ($variant, round $round) after ${cap}s")
	fi
}

# run_case VARIANT NOTIFY WAIT [DRAIN]: BENCH_ROUNDS rounds of baseline,
# ceilings (their relays poll), then extension
run_case() {
	local variant=$1 notify=$2 wait=$3 drain=${4:-false} round base_secs cap ceiling
	for round in $(seq "$ROUNDS"); do
		one_run base "$variant" "$round" off poll "$BASE_CAP" "$drain"
		base_secs=$("${PSQL[@]}" -c "SELECT ceil(elapsed) FROM public.runs WHERE run = $run_no")
		cap=$((base_secs * CAP_FACTOR > MIN_CAP ? base_secs * CAP_FACTOR : MIN_CAP))
		for ceiling in $CEILINGS; do
			one_run "$ceiling" "$variant" "$round" off poll "$cap" "$drain"
		done
		one_run ext "$variant" "$round" "$notify" "$wait" "$cap" "$drain"
		! $cut || break
	done
}

for c in ${BENCH_OUTBOX_CASES:-defaults notify-off}; do
	case $c in
	defaults) run_case defaults on listen ;;
	notify-off) run_case notify-off off poll ;;
	notify-on+poll) run_case notify-on+poll on poll ;;
	drain) run_case drain off poll true ;;
	*) echo "outbox: no case $c" >&2; exit 1 ;;
	esac
done

"${PSQL[@]}" -F ' ' <<-SQL | awk -v c="$SENDERS+$RELAYS" '
	BEGIN { printf "%-12s %-24s %7s %12s %12s %7s %6s %6s %6s\n", "workload", "case", "clients", "ext msg/s", "base msg/s", "ratio", "min", "med", "max" }
	{ printf "%-12s %-24s %7s %12.0f %12.0f %7.2f %6.2f %6.2f %6.2f%s\n", "outbox", $1, c, $2, $3, $2 / $3, $4, $5, $6, ($7 == "t" ? "  (cut off)" : "") }'
	WITH r AS (SELECT variant, round, side, run, acked / elapsed AS rate, cut_off FROM public.runs),
	paired AS (
	    SELECT 1 AS kind, e.variant AS label, e.run, e.rate AS ext, b.rate AS base, e.cut_off
	      FROM r e JOIN r b ON b.variant = e.variant AND b.round = e.round AND b.side = 'base'
	     WHERE e.side = 'ext'
	    UNION ALL
	    SELECT 2, e.variant || '-vs-' || c.side, e.run, e.rate, c.rate, e.cut_off OR c.cut_off
	      FROM r e JOIN r c ON c.variant = e.variant AND c.round = e.round AND c.side NOT IN ('ext', 'base')
	     WHERE e.side = 'ext'
	    UNION ALL
	    SELECT 3, 'ceiling-' || c.side || '-sql', c.run, c.rate, b.rate, c.cut_off
	      FROM r c JOIN r b ON b.variant = c.variant AND b.round = c.round AND b.side = 'base'
	     WHERE c.side NOT IN ('ext', 'base'))
	SELECT label, max(ext), max(base),
	       min(ext / base), percentile_cont(0.5) WITHIN GROUP (ORDER BY ext / base), max(ext / base),
	       bool_or(cut_off)
	  FROM paired GROUP BY label ORDER BY min(kind) = 3, min(run), min(kind);
SQL
echo "($ROUNDS alternating runs per side (fewer after a cut-off) of $MESSAGES messages over 1,000 keys, $SENDERS senders"
echo " (pgbench, one transaction a message) and $RELAYS relays (claim $BATCH in one transaction, ack them in another);"
echo " msg/s: acknowledged messages from the first send to the last ack, best run of each side; ratio = best ext / best"
echo " base; min, med, max: of each round's ext run against the base run before it; ext: a fresh CREATE EXTENSION per run;"
echo " defaults: payments.outbox_notify on, relays LISTEN; notify-off: off, relays poll ${POLL_MS} ms; base: relays poll;"
echo " drain: senders first, then relays, timed from their start; CASE-vs-CEILING: ext against a ceiling (per-key"
echo " order in plain SQL, relays poll) of the same rounds; ceiling-CEILING-sql: the ceiling in the ext columns against"
echo " the unordered baseline, over every case's rounds)"
echo
"${PSQL[@]}" -F ' ' <<-SQL | awk '
	BEGIN { printf "%-12s %-24s %-9s %8s %8s %9s %9s %6s %10s %10s\n", "workload", "case", "side", "p50 ms", "p99 ms", "max ms", "unordered", "keys", "redelivered", "per claim" }
	{ printf "%-12s %-24s %-9s %8.1f %8.1f %9.1f %9d %6d %10d %10.1f\n", "outbox", $1, $2, $3, $4, $5, $6, $7, $8, $9 }'
	SELECT variant, side,
	       percentile_cont(0.5) WITHIN GROUP (ORDER BY p50_ms),
	       percentile_cont(0.5) WITHIN GROUP (ORDER BY p99_ms),
	       max(max_ms),
	       max(order_violations), max(keys_out_of_order), max(redelivered),
	       sum(delivered)::float8 / greatest(sum(claims - empty_claims), 1)
	  FROM public.runs GROUP BY variant, side ORDER BY min(run), side DESC;
SQL
echo "(latency: from a message's send statement (before its COMMIT) to the claim that first took it: the median of"
echo " the runs' p50 and p99, and the largest; unordered: the most, in one run, of adjacent pairs of a key (in id order)"
echo " that the relays delivered in the other order, keys: of keys with such a pair; redelivered: the most deliveries,"
echo " in one run, of a message already delivered (its lease ran out); per claim: messages per claim that found any;"
echo " every run that finished acknowledged and delivered each message, and the extension's side and the ceilings"
echo " none out of order)"
if [ ${#cut_off_runs[@]} -gt 0 ]; then
	echo
	printf 'outbox: CUT OFF, not every message acknowledged within %s times the baseline'"'"'s time: %s\n' \
		"$CAP_FACTOR" "$(IFS=';'; echo "${cut_off_runs[*]}")" >&2
	exit 1
fi
