#!/usr/bin/env bash
# Worker wake-up latency: from the COMMIT of queued work to the moment the
# worker starts on it, over 1,000 items, beside payments.worker_naptime;
# then the same spread over 20 databases served by the pool of
# payments.max_workers workers, and the CPU the whole server uses while
# those 21 databases have nothing due, with the workers on and off.
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

# --- 20 databases ---

DBS=${BENCH_WORKER_DATABASES:-20}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-60}
psql -X -q -c "DELETE FROM latency"
for i in $(seq "$DBS"); do
	psql -X -q -d postgres -c "DROP DATABASE IF EXISTS ${PGDATABASE}_$i WITH (FORCE)" \
		-c "CREATE DATABASE ${PGDATABASE}_$i TEMPLATE $PGDATABASE"
done
# Each database gets its share of the items, all at once, at
# MULTI_RATE items per second in all (1 per database and second by
# default: tenants that each queue a little).
MULTI_RATE=${BENCH_LATENCY_MULTI_RATE:-$DBS}
for i in $(seq "$DBS"); do
	pgbench -n -c 1 -R "$(awk -v r="$MULTI_RATE" -v d="$DBS" 'BEGIN { print r / d }')" \
		-t "$((ITEMS / DBS))" -f /tmp/payments-bench-latency.sql "${PGDATABASE}_$i" >/dev/null &
done
wait
for i in $(seq "$DBS"); do
	for _ in $(seq 100); do
		[ "$(psql -X -A -t -d "${PGDATABASE}_$i" -c "SELECT count(*) FROM payments.idempotency_keys WHERE scope = 'latency'")" = 0 ] && break
		sleep 0.1
	done
	psql -X -A -t -d "${PGDATABASE}_$i" -c \
		"SELECT extract(epoch FROM started_at - queued_at) * 1000 FROM latency"
done | sort -g | awk -v dbs="$DBS" -v rate="$MULTI_RATE" -v w="$(psql -X -A -t -c 'SHOW payments.max_workers')" '
	{ v[NR] = $1 }
	END { p50 = v[int((NR - 1) * 0.5) + 1]; p99 = v[int((NR - 1) * 0.99) + 1]
	      printf "%d databases, %d workers, %s items/s in all: %d items, wake-up p50 %.2f ms, p99 %.2f ms, max %.2f ms\n",
	             dbs, w, rate, NR, p50, p99, v[NR] }'
rm -f /tmp/payments-bench-latency.sql

# CPU of every process of the server (the postmaster, its children, and
# the children it reaped, through cutime/cstime) over IDLE_SECONDS.
server_ticks() {
	local pm pid total=0 f
	pm=$(head -1 "$(psql -X -A -t -c 'SHOW data_directory')/postmaster.pid")
	read -r -a f <"/proc/$pm/stat"
	total=$((f[13] + f[14] + f[15] + f[16]))
	for pid in $(pgrep -P "$pm"); do
		read -r -a f 2>/dev/null <"/proc/$pid/stat" || continue
		total=$((total + f[13] + f[14]))
	done
	echo "$total"
}
idle_cpu() {
	local t0 t1
	sleep 5
	t0=$(server_ticks)
	sleep "$IDLE_SECONDS"
	t1=$(server_ticks)
	awk -v d="$((t1 - t0))" -v hz="$(getconf CLK_TCK)" -v s="$IDLE_SECONDS" \
		'BEGIN { printf "%.2f", 100 * d / hz / s }'
}
on=$(idle_cpu)
psql -X -q -c "ALTER SYSTEM SET payments.worker_enabled = off" -c "SELECT pg_reload_conf()" >/dev/null
off=$(idle_cpu)
psql -X -q -c "ALTER SYSTEM RESET payments.worker_enabled" -c "SELECT pg_reload_conf()" >/dev/null
echo "idle server, $((DBS + 1)) databases with the extension, nothing due, ${IDLE_SECONDS}s:" \
	"${on}% of a core with the workers, ${off}% without (worker_naptime $(psql -X -A -t -c 'SHOW payments.worker_naptime'))"
for i in $(seq "$DBS"); do
	psql -X -q -d postgres -c "DROP DATABASE ${PGDATABASE}_$i WITH (FORCE)"
done
