#!/usr/bin/env bash
# The claim at a backlog of 100,000 messages over 1,000 keys: how long one
# payments.outbox_claim('orders', 100, ...) takes, and the plan of its
# statement (claim_plan.sql: the same text, planned generic as the
# extension plans it), in the situations below.  Not run by run.sh: run it
# by hand in this directory against the bench cluster, with the connection
# run.sh gets (a superuser, a database of its own, for example bench_outbox
# after test/bench/run.sh outbox).  It creates the workload's roles if they
# are missing, and leaves the extension installed with the last
# situation's messages.
#
#   fresh-analyzed   100,000 pending, keys at random, ANALYZE, nothing in flight
#   400-in-flight    the same, with the first messages of 400 keys claimed
#   990-in-flight    the same, with 990 keys in flight
#   half-acked       the first 50,000 acknowledged, in order, no VACUUM yet
#   hot-key          50,000 messages of one key, then 50,000 over 1,000 keys,
#                    the hot key's first in flight
#   stale-stats      100,000 sent and acknowledged, ANALYZE (a steady state:
#                    every message settled), then a backlog of 100,000 (a
#                    relay outage) before autovacuum analyzes again
#   fresh-install    a relay that claimed from the empty table after CREATE
#                    EXTENSION, then a backlog of 100,000, before any ANALYZE
#
# Each situation starts from fresh_ext.sql with autovacuum off on the
# table.  A claim is cut off at EXPLAIN_TIMEOUT (120 s).
set -euo pipefail

TIMEOUT=${EXPLAIN_TIMEOUT:-120s}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)

fresh() {
	"${PSQL[@]}" -f fresh_ext.sql >/dev/null
	"${PSQL[@]}" -c "ALTER TABLE payments.outbox SET (autovacuum_enabled = off)"
}
# send N KEY-EXPRESSION: N messages in one transaction
send() {
	"${PSQL[@]}" -c "SET payments.outbox_notify = off" -c "SELECT count(payments.outbox_send('orders', $2, '{\"event\": \"order.paid\"}'))
	                   FROM generate_series(1, $1) AS i" >/dev/null
}
uniform="'k' || (1 + floor(random() * 1000))::integer"
# in_flight N: claim N messages for an hour, committed
in_flight() {
	"${PSQL[@]}" -c "SET ROLE bench_outbox_relay" -c "SELECT count(*) FROM payments.outbox_claim('orders', $1, '1 hour')" >/dev/null
}
# measure LABEL [SETUP-SQL]: one claim of 100 as a relay in a new session
# (rolled back; the time of the second, after one that loads the
# session's caches), and the EXPLAIN of its statement; SETUP-SQL, which must
# prepare claim_stmt, replaces the plain \i claim_plan.sql
measure() {
	local label=$1 out ms plan
	out=$("${PSQL[@]}" 2>&1 <<-SQL || true
		SET statement_timeout = '$TIMEOUT';
		${2:-\\i claim_plan.sql}
		SET ROLE bench_outbox_relay;
		BEGIN;
		SELECT count(*) FROM payments.outbox_claim('orders', 100, '1 minute') \\g /dev/null
		ROLLBACK;
		BEGIN;
		\\timing on
		SELECT count(*) FROM payments.outbox_claim('orders', 100, '1 minute');
		\\timing off
		ROLLBACK;
		RESET ROLE;
		BEGIN;
		EXPLAIN (ANALYZE, BUFFERS, COSTS OFF)
		EXECUTE claim_stmt('orders', 100, '1 minute', 42, 'bench_outbox_relay'::regrole, false, now());
		ROLLBACK;
	SQL
	)
	ms=$(sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p' <<<"$out" | head -1)
	grep -q "canceling statement due to statement timeout" <<<"$out" && [ -z "$ms" ] && ms=">$TIMEOUT"
	printf '\n--- %s: outbox_claim of 100 took %s ms\n' "$label" "${ms:-?}"
	grep -E "Anti Join|Join Filter|Rows Removed by Join|Index Scan|Seq Scan|Index Cond|Rows Removed by Filter|Execution Time|InitPlan|shared hit|timeout" <<<"$out" |
		grep -v "^ *Buffers: shared hit=[0-9]*$" | sed -n '1,40p'
}

"${PSQL[@]}" -c "SELECT 1 FROM pg_roles WHERE rolname = 'bench_outbox_relay'" | grep -q 1 ||
	"${PSQL[@]}" -f schema.sql >/dev/null

fresh
send 100000 "$uniform"
"${PSQL[@]}" -c "ANALYZE payments.outbox"
measure fresh-analyzed
in_flight 400
measure 400-in-flight
in_flight 590
measure 990-in-flight

fresh
send 100000 "$uniform"
"${PSQL[@]}" -c "ANALYZE payments.outbox"
"${PSQL[@]}" -c "UPDATE payments.outbox SET status = 'acked', settled_at = clock_timestamp() WHERE id <= (SELECT min(id) + 49999 FROM payments.outbox)"
measure half-acked

fresh
send 50000 "'hot'"
send 50000 "$uniform"
"${PSQL[@]}" -c "ANALYZE payments.outbox"
in_flight 1
measure hot-key

fresh
send 100000 "$uniform"
"${PSQL[@]}" -c "UPDATE payments.outbox SET status = 'acked', settled_at = clock_timestamp()" -c "ANALYZE payments.outbox"
send 100000 "$uniform"
measure stale-stats

fresh
# The relay's session claims from the empty table first (its plan is made
# then, as a relay started with the service makes it), the backlog is sent
# from another session, then the relay claims again.
measure fresh-install "SET ROLE bench_outbox_relay;
SELECT count(*) FROM payments.outbox_claim('orders', 100, '1 minute');
RESET ROLE;
\\i claim_plan.sql
BEGIN; EXPLAIN EXECUTE claim_stmt('orders', 100, '1 minute', 42, 'bench_outbox_relay'::regrole, false, now()) \\g /dev/null
ROLLBACK;
\\! psql -X -q -A -t -c \"SET payments.outbox_notify = off\" -c \"SELECT count(payments.outbox_send('orders', $uniform, '{}')) FROM generate_series(1, 100000) AS i\" >/dev/null"
