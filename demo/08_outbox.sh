#!/usr/bin/env bash
# Demo step 8: the transactional outbox and the inbox.
#
# Run by scripts/demo.sh with PGHOST, PGPORT, PGDATABASE and PGUSER (a
# superuser) set.  The shop (demo_shop) sends an order's events in the
# transactions that change the order; demo/outbox_relay.py, as demo_relay,
# publishes them to a stand-in broker (a file) and acknowledges them;
# demo/outbox_consumer.py, as the warehouse's role demo_warehouse, applies
# each one once.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PSQL=(psql -X -q -v ON_ERROR_STOP=1)
BROKER=$(mktemp)
trap 'rm -f "$BROKER"; [ -n "${RELAY_PID:-}" ] && kill "$RELAY_PID" 2>/dev/null || true' EXIT

echo
echo "== 8. Outbox and inbox: events sent with the commit, in order per order, applied once =="
echo

"${PSQL[@]}" <<'SQL'
\set QUIET on
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS payments;
-- The roles (roles outlive the demo database).
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_shop') AS create_shop,
       NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_relay') AS create_relay,
       NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_warehouse') AS create_warehouse \gset
\if :create_shop
CREATE ROLE demo_shop LOGIN;
\endif
\if :create_relay
CREATE ROLE demo_relay LOGIN;
\endif
\if :create_warehouse
CREATE ROLE demo_warehouse LOGIN;
\endif
GRANT payments_app TO demo_shop, demo_relay, demo_warehouse;
RESET client_min_messages;

CREATE TABLE store_orders (order_ref text PRIMARY KEY, status text NOT NULL);
GRANT SELECT, INSERT, UPDATE ON store_orders TO demo_shop;
CREATE TABLE warehouse_events (order_ref text, event text, applied_at timestamptz DEFAULT clock_timestamp());
GRANT SELECT, INSERT ON warehouse_events TO demo_warehouse;

\echo 'An operator lets demo_shop send to topic "orders.events" and demo_relay relay it:'
SELECT payments.outbox_grant('orders.events', 'demo_shop', 'send') \g /dev/null
SELECT payments.outbox_grant('orders.events', 'demo_relay', 'relay') \g /dev/null
SELECT topic, grantee, privilege FROM payments.outbox_grants ORDER BY privilege;
SQL

# The relay starts first and waits on LISTEN; it stops after 3 acks.
PGUSER=demo_relay python3 -u "$HERE/outbox_relay.py" orders.events "$BROKER" 3 --lose-first-ack &
RELAY_PID=$!
sleep 1

"${PSQL[@]}" <<'SQL'
\set QUIET on
\pset footer off
SET ROLE demo_shop;
\echo
\echo 'demo_shop: order W-4001 is paid; the event is sent in the same transaction:'
\echo '  BEGIN; UPDATE store_orders ...; SELECT payments.outbox_send(''orders.events'', ''W-4001'', ...); COMMIT;'
BEGIN;
INSERT INTO store_orders VALUES ('W-4001', 'paid');
SELECT payments.outbox_send('orders.events', 'W-4001', '{"event": "paid", "amount": 4990}') \g /dev/null
COMMIT;
\echo 'demo_shop: order W-4002 is paid too, but its transaction fails and rolls back:'
\echo 'its event is never sent.'
BEGIN;
INSERT INTO store_orders VALUES ('W-4002', 'paid');
SELECT payments.outbox_send('orders.events', 'W-4002', '{"event": "paid", "amount": 1200}') \g /dev/null
ROLLBACK;
\echo 'demo_shop: W-4001 is shipped, then delivered (each event waits for the one before it):'
BEGIN;
UPDATE store_orders SET status = 'shipped' WHERE order_ref = 'W-4001';
SELECT payments.outbox_send('orders.events', 'W-4001', '{"event": "shipped"}') \g /dev/null
COMMIT;
BEGIN;
UPDATE store_orders SET status = 'delivered' WHERE order_ref = 'W-4001';
SELECT payments.outbox_send('orders.events', 'W-4001', '{"event": "delivered"}') \g /dev/null
COMMIT;
\echo
SQL

wait "$RELAY_PID"
RELAY_PID=
echo
echo "The broker got four messages for three events: the first one twice (its ack was lost)."
echo "The warehouse (demo/outbox_consumer.py as demo_warehouse) applies each event once:"
PGUSER=demo_warehouse python3 -u "$HERE/outbox_consumer.py" "$BROKER"

"${PSQL[@]}" <<'SQL'
\set QUIET on
\pset footer off
\echo
\echo 'What the warehouse applied, in the order the shop sent it:'
SELECT order_ref, event FROM warehouse_events ORDER BY applied_at;
\echo 'The outbox: each message acknowledged once, the first after two attempts:'
SELECT key, payload->>'event' AS event, status, attempts FROM payments.outbox ORDER BY id;
SQL
