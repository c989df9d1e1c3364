#!/usr/bin/env bash
# Demo step 5: provider callbacks, over real HTTP.
#
# Run by scripts/demo.sh with PGHOST, PGPORT, PGDATABASE and PGUSER (a
# superuser) set.  Starts demo/callback_receiver.py in the background as
# the application role demo_shop and stops it on the way out.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PSQL=(psql -X -q -v ON_ERROR_STOP=1)
# The signing secret Stripe shows for the endpoint, used as the HMAC key as is.
SECRET=whsec_demo_5f3a9c1e7b2d4a6c8e0f

echo
echo "== 5. Callbacks: a provider's webhook verified, recorded once, applied once =="
echo

"${PSQL[@]}" -v secret="$SECRET" <<'SQL'
\set QUIET on
\pset footer off
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS payments;
-- The shop's application role (roles outlive the demo database).
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'demo_shop') AS create_role \gset
\if :create_role
CREATE ROLE demo_shop LOGIN;
\endif
GRANT payments_app TO demo_shop;
RESET client_min_messages;

\echo 'The shop''s orders, guarded by a state machine; the application role demo_shop may update them:'
\o /dev/null
SELECT payments.define_state_machine('web_order', '{
    "awaiting_payment": ["paid", "cancelled"],
    "paid": ["shipped", "refunded"]}');
\o
CREATE TABLE web_orders (order_ref text PRIMARY KEY, status text NOT NULL DEFAULT 'awaiting_payment', amount bigint);
\o /dev/null
SELECT payments.guard_state('web_orders', 'status', 'web_order');
\o
GRANT SELECT, UPDATE ON web_orders TO demo_shop;
INSERT INTO web_orders (order_ref, amount) VALUES ('W-3001', 4990), ('W-3002', 129900);
SELECT * FROM web_orders ORDER BY order_ref;

\echo 'demo_shop stores Stripe''s signing secret (nobody can read it back) and routes'
\echo '"payment_intent.succeeded" to status "paid" of the order its metadata names:'
SET ROLE demo_shop;
\o /dev/null
SELECT payments.callback_key_add('stripe', 'stripe', :'secret', 'endpoint-1');
SELECT payments.callback_route('stripe', 'payment_intent.succeeded',
                               'web_orders', 'order_ref', 'status', 'paid');
\o
RESET ROLE;
SQL

# The receiver prints "listening on URL" once connected, then a line per
# request, each before it answers: read from its pipe after a request
# returns, a request's line is already there.
coproc RECEIVER { PGUSER=demo_shop exec python3 "$HERE/callback_receiver.py" 0; }
trap 'kill "$RECEIVER_PID" 2>/dev/null || true' EXIT
read -r line <&"${RECEIVER[0]}" || { echo "error: the callback receiver did not start" >&2; exit 1; }
URL=${line#listening on }
echo
echo "The shop's webhook endpoint is demo/callback_receiver.py, a Python http.server on $URL."
echo 'It passes the raw body and the headers to payments.receive_callback, as demo_shop, and answers'
echo '200 with the outcome, or 400 when the signature is refused (a provider retries on non-2xx).'

# post BODY [SIGNATURE_HEADER]: what curl sends, the receiver's log line
# and its answer.
post() {
	local body=$1 header=$2 answer code
	answer=$(mktemp)
	echo "  curl -X POST $URL"
	echo "       -H 'Stripe-Signature: ${header:0:30}...'"
	code=$(curl -sS -o "$answer" -w '%{http_code}' -H 'Content-Type: application/json' \
		-H "Stripe-Signature: $header" --data-binary "$body" "$URL")
	read -r -t 10 line <&"${RECEIVER[0]}" && echo "  $line"
	echo "  answer: HTTP $code $(cat "$answer")"
	rm -f "$answer"
}

# A Stripe event as Stripe sends it; the signature is HMAC-SHA256, keyed
# with the secret, of "<timestamp>.<raw body>", in hex.
ts=$(date +%s)
event=$(printf '{"id":"evt_demo_%s","object":"event","type":"payment_intent.succeeded","created":%s,"data":{"object":{"id":"pi_demo_%s","object":"payment_intent","amount":4990,"currency":"eur","status":"succeeded","metadata":{"order_id":"W-3001"}}}}' "$ts" "$ts" "$ts")
sig=$(printf '%s.%s' "$ts" "$event" | openssl dgst -sha256 -hmac "$SECRET" | awk '{print $NF}')
signature="t=$ts,v1=$sig"

echo
echo 'Stripe posts "payment_intent.succeeded" for order W-3001, signed with the secret:'
post "$event" "$signature"
echo
echo 'Stripe did not get the answer in time and sends the same event again: a duplicate,'
echo 'answered 200 like the first, and the order is not touched again:'
post "$event" "$signature"
echo
echo 'Someone who captured that request edits the body to pay order W-3002 (another event id)'
echo 'and replays the signature: refused with SQLSTATE PM401, nothing recorded:'
forged=$(printf '%s' "$event" | sed 's/W-3001/W-3002/; s/"evt_demo_/"evt_forged_/')
post "$forged" "$signature"

echo
"${PSQL[@]}" <<'SQL'
\set QUIET on
\pset footer off
\echo 'W-3001 is paid, moved once by demo_shop; W-3002 is still awaiting payment:'
SELECT * FROM web_orders ORDER BY order_ref;
SELECT row_key AS order_ref, from_state, to_state, changed_by
  FROM payments.state_history WHERE tbl = 'web_orders'::regclass ORDER BY id;
\echo 'One row per event: two deliveries, its first outcome, the key that verified it:'
SELECT event_id, payment_ref, event_type, outcome, deliveries, key_id, received_by
  FROM payments.callbacks ORDER BY first_delivered_at;
\echo 'What demo_shop sees of its provider (the refusal was counted, though rolled back):'
SET ROLE demo_shop;
SELECT provider, received, applied, duplicates, signature_failures FROM payments.callback_stats;
RESET ROLE;
SQL
