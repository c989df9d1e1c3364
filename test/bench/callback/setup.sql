-- Callbacks: payments.receive_callback with an HMAC scheme and a route,
-- against the plain SQL an application writes for the same delivery:
-- pgcrypto's hmac() compared with the signature header, the event recorded
-- in an inbox table with INSERT ... ON CONFLICT DO NOTHING, then the
-- guarded UPDATE of the order.  Both order tables carry the state guard,
-- so both sides pay for it; the machine is a two-state cycle, so every
-- move is legal and every transaction succeeds (an event for an order
-- already in its state is stale on the extension's side and moves no row
-- on the baseline's).
CREATE EXTENSION payments;
CREATE EXTENSION pgcrypto;
SELECT payments.define_state_machine('bench',
    '{"pending": ["paid"], "paid": ["pending"]}', '{pending}');

CREATE TABLE orders_ext (
    id int PRIMARY KEY,
    status text NOT NULL,
    amount bigint NOT NULL DEFAULT 4990
);
CREATE TABLE orders_base (LIKE orders_ext INCLUDING ALL);
INSERT INTO orders_ext (id, status) SELECT i, 'pending' FROM generate_series(1, 100000) AS i;
INSERT INTO orders_base SELECT * FROM orders_ext;
SELECT payments.guard_state('orders_ext', 'status', 'bench');
SELECT payments.guard_state('orders_base', 'status', 'bench');

-- The extension's side: a GitHub-style HMAC key (no timestamp, so one
-- signature computed here stays valid) and two routes.
SELECT payments.callback_key_add('bench', 'hmac-sha256', 'whsec_bench_9f2c4e7a1b3d5f60');
SELECT payments.callback_route('bench', 'charge.succeeded', 'orders_ext', 'id', 'status', 'paid');
SELECT payments.callback_route('bench', 'charge.pending', 'orders_ext', 'id', 'status', 'pending');

-- The baseline's side: the application keeps the provider's secret in a
-- table of its own, and its inbox of events received.
CREATE TABLE webhook_secrets (
    provider text PRIMARY KEY,
    secret bytea NOT NULL
);
INSERT INTO webhook_secrets VALUES ('bench', convert_to('whsec_bench_9f2c4e7a1b3d5f60', 'UTF8'));
CREATE TABLE inbox (
    provider text NOT NULL,
    event_id text NOT NULL,
    payment_ref text NOT NULL,
    event_type text NOT NULL,
    payload jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);

-- One request, as both sides receive it: a Stripe-like charge event of
-- about 1 KB, its raw body, its parsed payload, and its headers with the
-- provider's signature over the body.
CREATE TABLE request (
    body bytea NOT NULL,
    payload jsonb NOT NULL,
    headers jsonb NOT NULL
);
INSERT INTO request (body, payload, headers)
SELECT b, convert_from(b, 'UTF8')::jsonb,
       jsonb_build_object('Content-Type', 'application/json; charset=utf-8',
                          'User-Agent', 'Provider/1.0 (+https://provider.example/docs/webhooks)',
                          'X-Request-Id', 'req_8YpG2kQ4rN7sT1vW',
                          'X-Signature', 'sha256=' || encode(hmac(b, s.secret, 'sha256'), 'hex'))
  FROM webhook_secrets s,
       convert_to($json${
  "id": "evt_3OqL8y2eZvKYlo2C1x9wQk7B",
  "object": "event",
  "api_version": "2023-10-16",
  "created": 1714060800,
  "type": "charge.succeeded",
  "livemode": false,
  "pending_webhooks": 1,
  "request": {"id": "req_8YpG2kQ4rN7sT1vW", "idempotency_key": "b7e1c2d4-5f60-4a8b-9c3d-2e1f0a9b8c7d"},
  "data": {
    "object": {
      "id": "ch_3OqL8y2eZvKYlo2C1h4fJ6Xe",
      "object": "charge",
      "amount": 4990,
      "amount_captured": 4990,
      "amount_refunded": 0,
      "currency": "eur",
      "captured": true,
      "paid": true,
      "refunded": false,
      "status": "succeeded",
      "description": "Order A-1001",
      "customer": "cus_PfT6qWm2ZxYb3R",
      "payment_intent": "pi_3OqL8y2eZvKYlo2C1qNn7Hs2",
      "payment_method": "pm_1OqL8x2eZvKYlo2CkJ3dLm9P",
      "billing_details": {"email": "jane.doe@example.com", "name": "Jane Doe",
                          "address": {"city": "Berlin", "country": "DE", "postal_code": "10115"}},
      "payment_method_details": {"type": "card",
                                 "card": {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2027,
                                          "country": "US", "funding": "credit", "network": "visa"}},
      "outcome": {"network_status": "approved_by_network", "risk_level": "normal", "risk_score": 23,
                  "seller_message": "Payment complete.", "type": "authorized"},
      "metadata": {"order_id": "A-1001", "cart": "c_81f3"},
      "receipt_url": "https://pay.example.com/receipts/ch_3OqL8y2eZvKYlo2C1h4fJ6Xe"
    }
  }
}$json$, 'UTF8') AS b;
VACUUM ANALYZE;
