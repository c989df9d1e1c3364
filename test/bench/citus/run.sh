#!/usr/bin/env bash
# The hot SKU and idempotency workloads on a Citus cluster on this machine
# (a coordinator and two workers, payments.distribute()d), against the
# single bench node in the same run.  Clients connect to the coordinator,
# which sends each call to the worker holding its key's shard.  The ratio
# is the cluster's throughput over the single node's, best run of each.
#
# On one machine the three nodes share its cores and every call crosses
# one more connection, so the ratio shows the cost of the hop, not a
# speed-up; the README says how throughput grows with nodes.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set;
# skipped where Citus is not installed.
set -euo pipefail

BIN=$(pg_config --bindir)
if [ ! -e "$(pg_config --pkglibdir)/citus.so" ]; then
	echo "skipped: Citus is not installed"
	exit 0
fi
DIR=$(mktemp -d /tmp/payments-bench-citus.XXXXXX)
PORTS=(55441 55442 55443)
CLIENTS=${BENCH_CITUS_CLIENTS:-8}

stop_all() {
	for p in "${PORTS[@]}"; do
		"$BIN/pg_ctl" -D "$DIR/$p" -m immediate stop >/dev/null 2>&1 || true
	done
	rm -rf "$DIR"
}
trap stop_all EXIT

for p in "${PORTS[@]}"; do
	"$BIN/initdb" -D "$DIR/$p" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
	cat >>"$DIR/$p/postgresql.conf" <<-CONF
		port = $p
		listen_addresses = ''
		unix_socket_directories = '$DIR'
		shared_preload_libraries = 'citus,payments'
		max_connections = 300
		max_prepared_transactions = 100
	CONF
	"$BIN/pg_ctl" -D "$DIR/$p" -l "$DIR/$p.log" -w start >/dev/null
	psql -X -q -h "$DIR" -p "$p" -d postgres -c 'CREATE EXTENSION citus'
done
coord=(-h "$DIR" -p "${PORTS[0]}" -d postgres)
psql -X -q -v ON_ERROR_STOP=1 "${coord[@]}" <<SQL >/dev/null
SELECT citus_set_coordinator_host('$DIR', ${PORTS[0]});
SELECT citus_add_node('$DIR', ${PORTS[1]});
SELECT citus_add_node('$DIR', ${PORTS[2]});
CREATE EXTENSION payments;
SELECT payments.distribute(32);
SQL

SETUP="SELECT payments.stock_set('hot', 1000000000000, slots => 64);"
SPREAD="SELECT payments.stock_set('sku-' || i, 1000000000) FROM generate_series(1, 1000) AS i;"
psql -X -q -v ON_ERROR_STOP=1 -c "CREATE EXTENSION payments" -c "$SETUP" -c "$SPREAD" >/dev/null
# On the cluster, each SKU's stock_set is a call of its own, sent to its node.
psql -X -q -v ON_ERROR_STOP=1 "${coord[@]}" -c "$SETUP" >/dev/null
for i in $(seq 1000); do echo "SELECT payments.stock_set('sku-$i', 1000000000);"; done |
	psql -X -q -v ON_ERROR_STOP=1 "${coord[@]}" >/dev/null

cat >"$DIR/hot.sql" <<'SQL'
\set o random(1, 1000000000)
SELECT payments.reserve('o' || :o, 'hot', 1) AS id \gset
SELECT payments.confirm_reservation(:id, 'hot');
SQL
cat >"$DIR/spread.sql" <<'SQL'
\set o random(1, 1000000000)
\set s random(1, 1000)
SELECT payments.reserve('o' || :o, 'sku-' || :s, 1) AS id \gset
SELECT payments.confirm_reservation(:id, 'sku-' || :s);
SQL
cat >"$DIR/keys.sql" <<'SQL'
\set k random(1, 9223372036854775807)
SELECT outcome FROM payments.idempotency_begin('bench', 'k' || :k, '{"amount": 1}');
SELECT payments.idempotency_complete('bench', 'k' || :k, '{"ok": true}', 200);
SQL

# tps SCRIPT CLIENTS CONNECTION...: transactions per second of one run
tps() {
	local script=$1 clients=$2
	shift 2
	pgbench -n -M prepared -T "$BENCH_SECONDS" -c "$clients" -j 2 -f "$script" "$@" 2>&1 |
		sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}

printf '%-34s %8s %12s %12s %7s  %s\n' case clients single cluster ratio "rounds (cluster/single)"
for w in hot spread keys; do
	for clients in 1 "$CLIENTS"; do
		best_single=0 best_cluster=0 rounds=""
		for _ in $(seq "$BENCH_ROUNDS"); do
			s=$(tps "$DIR/$w.sql" "$clients")
			c=$(tps "$DIR/$w.sql" "$clients" "${coord[@]}")
			best_single=$(awk -v a="$best_single" -v b="$s" 'BEGIN { print (b > a ? b : a) }')
			best_cluster=$(awk -v a="$best_cluster" -v b="$c" 'BEGIN { print (b > a ? b : a) }')
			rounds="$rounds $(awk -v c="$c" -v s="$s" 'BEGIN { printf "%.2f", c / s }')"
		done
		case $w in
		hot) label="hot SKU reserve + confirm" ;;
		spread) label="1,000 SKUs reserve + confirm" ;;
		keys) label="idempotency begin + complete" ;;
		esac
		printf '%-34s %8s %12.0f %12.0f %7.2f %s\n' "$label" "$clients" "$best_single" \
			"$best_cluster" "$(awk -v c="$best_cluster" -v s="$best_single" 'BEGIN { print c / s }')" \
			"$rounds"
	done
done
psql -X -q -A -t "${coord[@]}" -c "SELECT 'holds of the 1,000 SKUs per worker: ' || string_agg(n::text, ', ' ORDER BY g)
  FROM (SELECT p.groupid AS g, count(*) AS n FROM payments.reservations r
          JOIN pg_dist_placement p
            ON p.shardid = get_shard_id_for_distribution_column('payments.reservations', r.sku)
         WHERE r.sku LIKE 'sku-%' GROUP BY 1) x"
