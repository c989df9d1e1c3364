#!/usr/bin/env bash
# Worker wake-up latency: from the COMMIT of queued work to the moment the
# worker starts on it, over 1,000 items, beside payments.worker_naptime.
#
# An item is an expired idempotency key committed together with
# payments.notify_worker(); the worker's purge deletes it.  A bench-only
# trigger records when each key is deleted.  The start of an item is
# measured from the last statement before its COMMIT, so the figure
# includes the commit's own WAL flush: it is an upper bound.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set.
set -euo pipefail

ITEMS=${BENCH_LATENCY_ITEMS:-1000}
RATE=${BENCH_LATENCY_RATE:-200}      # items per second, one client

psql -X -q -v ON_ERROR_STOP=1 <<'SQL'
CREATE EXTENSION payments;
CREATE TABLE latency (key text PRIMARY KEY, queued_at timestamptz, started_at timestamptz);
CREATE FUNCTION record_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.latency VALUES (OLD.key, OLD.created_at, clock_timestamp());
    RETURN OLD;
END
$$;
CREATE TRIGGER record_start BEFORE DELETE ON payments.idempotency_keys
    FOR EACH ROW EXECUTE FUNCTION record_start();
SQL

# Wait for this database's worker to be up.
for _ in $(seq 100); do
	[ "$(psql -X -A -t -c 'SELECT pid IS NOT NULL FROM payments.worker_status()')" = t ] && break
	sleep 0.2
done

cat >/tmp/payments-bench-latency.sql <<'SQL'
\set k random(1, 9223372036854775807)
BEGIN;
INSERT INTO payments.idempotency_keys (scope, key, request_hash, state, response, response_code, expires_at, created_at)
VALUES ('latency', 'l' || :k, '\x00', 'completed', '{}', 200, '-infinity', clock_timestamp());
SELECT payments.notify_worker();
END;
SQL
pgbench -n -c 1 -R "$RATE" -t "$ITEMS" -f /tmp/payments-bench-latency.sql >/dev/null

# Let the last items finish.
for _ in $(seq 100); do
	[ "$(psql -X -A -t -c "SELECT count(*) FROM payments.idempotency_keys WHERE scope = 'latency'")" = 0 ] && break
	sleep 0.1
done

psql -X -q <<'SQL'
SELECT current_setting('payments.worker_naptime') AS worker_naptime,
       count(*) AS items,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms))::numeric, 2) AS p50_ms,
       round((percentile_cont(0.99) WITHIN GROUP (ORDER BY ms))::numeric, 2) AS p99_ms,
       round(max(ms)::numeric, 2) AS max_ms
  FROM (SELECT extract(epoch FROM started_at - queued_at) * 1000 AS ms FROM latency) AS l;
SQL
rm -f /tmp/payments-bench-latency.sql
