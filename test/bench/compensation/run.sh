#!/usr/bin/env bash
# Compensation drain throughput: 100,000 queued no-op compensations run by
# the worker, against a plain-SQL baseline that marks the same rows done in
# batches of 1,000 with FOR UPDATE SKIP LOCKED, in the same run.
#
# Worker: the items are queued with payments.enqueue_compensation in one
# transaction, whose COMMIT wakes the worker; the time runs from that COMMIT
# to the finished_at of the last item.  Each call of the worker takes up to
# 1,000 due items, marks them succeeded with their attempt counted, and
# runs each in a subtransaction as its enqueuer (in the worker, with the
# item's id written to its marker file first), all in one transaction.
#
# Baseline: a copy of the queue table with the same indexes and the same
# rows, drained by one session: UPDATE ... SET status = 'succeeded' WHERE id
# = ANY (ARRAY(SELECT ... ORDER BY next_attempt_at LIMIT 1000 FOR UPDATE
# SKIP LOCKED)), one transaction per batch, until nothing is left.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set.
set -euo pipefail

ITEMS=${BENCH_COMPENSATION_ITEMS:-100000}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)

"${PSQL[@]}" <<'SQL'
CREATE EXTENSION payments;
CREATE FUNCTION public.noop(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE TABLE public.baseline_queue (LIKE payments.compensations INCLUDING ALL);
-- No autovacuum of either table in the middle of the other side's run.
ALTER TABLE payments.compensations SET (autovacuum_enabled = off);
ALTER TABLE public.baseline_queue SET (autovacuum_enabled = off);
CHECKPOINT;
SQL

# Wait for this database's worker to be up.
for _ in $(seq 100); do
	[ "$("${PSQL[@]}" -c 'SELECT pid IS NOT NULL FROM payments.worker_status()')" = t ] && break
	sleep 0.2
done

# --- worker ---
t0=$("${PSQL[@]}" <<SQL
BEGIN;
SELECT count(payments.enqueue_compensation('public.noop(jsonb)', jsonb_build_object('n', i)))
  FROM generate_series(1, $ITEMS) AS i \\g /dev/null
COMMIT;
SELECT clock_timestamp();
SQL
)
for _ in $(seq 1200); do
	left=$("${PSQL[@]}" -c "SELECT count(*) FROM payments.compensations WHERE status IN ('pending', 'running')")
	[ "$left" = 0 ] && break
	sleep 0.5
done
[ "$left" = 0 ] || { echo "the worker did not drain the queue ($left left)" >&2; exit 1; }
worker_secs=$("${PSQL[@]}" -c "SELECT extract(epoch FROM max(finished_at) - '$t0'::timestamptz)
                                 FROM payments.compensations")
failed=$("${PSQL[@]}" -c "SELECT count(*) FROM payments.compensations WHERE status <> 'succeeded'")
[ "$failed" = 0 ] || { echo "$failed compensations did not succeed" >&2; exit 1; }

# --- baseline: the same rows, pending again, in a table of their own ---
"${PSQL[@]}" <<'SQL'
INSERT INTO public.baseline_queue
SELECT id, handler, payload, dedup_key, 'pending', 0, max_attempts, created_at, NULL,
       enqueued_by, created_at, created_at, NULL, handler_owner, NULL, NULL
  FROM payments.compensations;
VACUUM ANALYZE public.baseline_queue;
VACUUM payments.compensations;
CHECKPOINT;
SQL
base_secs=$("${PSQL[@]}" <<'SQL'
CREATE TEMP TABLE t (t0 timestamptz);
INSERT INTO t VALUES (clock_timestamp());
DO $$
DECLARE
    n integer;
BEGIN
    LOOP
        UPDATE public.baseline_queue
           SET status = 'succeeded', attempts = attempts + 1,
               finished_at = clock_timestamp(), updated_at = clock_timestamp()
         WHERE id = ANY (ARRAY(
               SELECT id FROM public.baseline_queue
                WHERE status = 'pending' AND next_attempt_at <= clock_timestamp()
                ORDER BY next_attempt_at LIMIT 1000
                  FOR UPDATE SKIP LOCKED));
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        EXIT WHEN n = 0;
    END LOOP;
END
$$;
SELECT extract(epoch FROM max(finished_at) - (SELECT t0 FROM t)) FROM public.baseline_queue;
SQL
)

awk -v n="$ITEMS" -v w="$worker_secs" -v b="$base_secs" 'BEGIN {
	printf "%-12s %-22s %9s %14s %14s %7s\n", "workload", "case", "items", "worker items/s", "base items/s", "ratio"
	printf "%-12s %-22s %9d %14.0f %14.0f %7.2f\n", "compensation", "drain no-op handlers", n, n / w, n / b, b / w
}'
