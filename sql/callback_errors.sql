--
-- Callbacks: bad input gets a clear error with its SQLSTATE, and nothing
-- changes (the tables are compared before and after each group).  No
-- signature is checked here; a key is added only where one is needed.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never

SELECT payments.define_state_machine('payment', '{
    "created": ["authorized", "cancelled"],
    "authorized": ["captured", "cancelled"]}');
CREATE TABLE orders (ref text PRIMARY KEY, status text NOT NULL, note text);
SELECT payments.guard_state('orders', 'status', 'payment');
INSERT INTO orders VALUES ('A-1', 'created');
CREATE VIEW orders_view AS SELECT * FROM orders;
CREATE FUNCTION refund(p jsonb) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION not_a_handler(p text) RETURNS void LANGUAGE sql AS '';
CREATE FUNCTION returns_int(p jsonb) RETURNS integer LANGUAGE sql AS 'SELECT 1';

-- Every row of the extension's callback tables, the queue, the history
-- and the guarded table.
CREATE FUNCTION cb_state() RETURNS text LANGUAGE sql AS $$
    SELECT md5(concat_ws('|',
        (SELECT string_agg(c::text, ',' ORDER BY c.provider, c.event_id) FROM payments.callbacks c),
        (SELECT string_agg(p::text, ',' ORDER BY p.provider) FROM payments.callback_providers p),
        (SELECT string_agg(k::text, ',' ORDER BY k.id) FROM payments.callback_keys k),
        (SELECT string_agg(r::text, ',' ORDER BY r.provider, r.event_type) FROM payments.callback_routes r),
        (SELECT string_agg(e::text, ',' ORDER BY e.id) FROM payments.expected_callbacks e),
        (SELECT string_agg(q::text, ',' ORDER BY q.id) FROM payments.compensations q),
        (SELECT string_agg(h::text, ',' ORDER BY h.id) FROM payments.state_history h),
        (SELECT string_agg(o::text, ',' ORDER BY o.ref) FROM public.orders o)))
$$;
CREATE FUNCTION counts(OUT providers bigint, OUT keys bigint, OUT events bigint, OUT routes bigint,
                       OUT expectations bigint, OUT queued bigint) LANGUAGE sql AS $$
    SELECT (SELECT count(*) FROM payments.callback_providers), (SELECT count(*) FROM payments.callback_keys),
           (SELECT count(*) FROM payments.callbacks), (SELECT count(*) FROM payments.callback_routes),
           (SELECT count(*) FROM payments.expected_callbacks), (SELECT count(*) FROM payments.compensations)
$$;

-- The provider the refusals below are tried against: a key, a route.
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k1') AS k1 \gset
SELECT payments.callback_route('psp', 'payment.authorized', 'orders', 'ref', 'status', 'authorized');
SELECT * FROM counts();
SELECT cb_state() AS before \gset

--
-- NULLs: 22004, for every argument that has no meaning when null
--
SELECT payments.callback_key_add(NULL, 'hmac-sha256', 'a secret of sixteen bytes or more');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', NULL, 'a secret of sixteen bytes or more');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k2', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_revoke(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback(NULL, '{}', '\x00'::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('psp', NULL, '\x00'::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('psp', '{}', '\x00'::bytea, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback(NULL, '{}', 'body'::text);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('psp', NULL, 'body'::text);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('psp', '{}', 'body'::text, NULL);
\echo :LAST_ERROR_SQLSTATE
-- a scheme that signs the body needs one
SELECT payments.verify_callback('psp', '{}', NULL::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('psp', '{}', NULL::text);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback(NULL, 'evt_1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', NULL, 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', NULL, 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
-- a body without headers: nothing to verify it against
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', 'payment.authorized', '{}', NULL, 'body');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route(NULL, 'payment.captured', 'orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', NULL, 'orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', NULL, 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', NULL, 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', NULL, 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_unroute(NULL, 'payment.authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_unroute('psp', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback(NULL, 'A-1', '1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', NULL, '1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', NULL, 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '1 hour', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result(NULL, 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('psp', NULL, 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('psp', 'A-1', NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.chase_callbacks(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.purge_callbacks(NULL);
\echo :LAST_ERROR_SQLSTATE
-- (the statistics of no provider are unknown, not an error)
SELECT payments.callback_signature_failures(NULL);
SELECT cb_state() = :'before' AS unchanged;

--
-- Empty strings: 22023
--
SELECT payments.callback_key_add('', 'hmac-sha256', 'a secret of sixteen bytes or more');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', '', 'a secret of sixteen bytes or more');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('', '{}', '\x00'::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('', 'evt_1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', '', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', '', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', '', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('', 'payment.captured', 'orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', '', 'orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', '', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', '', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_unroute('', 'payment.authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_unroute('psp', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('', 'A-1', '1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', '', '1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('psp', '', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('psp', 'A-1', '', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;

--
-- Lengths, in bytes: a provider of at most 63, an event id, payment_ref,
-- event type and key_id of at most 255 (22023).  32 two-byte characters
-- are 64 bytes.
--
SELECT payments.callback_key_add(repeat('p', 64), 'hmac-sha256', 'a secret of sixteen bytes or more');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route(repeat('é', 32), 'payment.captured', 'orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback(repeat('p', 64), 'A-1', '1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback(repeat('p', 64), 'evt_1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', repeat('e', 256), 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', repeat('r', 256), 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', 'evt_1', 'A-1', repeat('t', 256), '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp', repeat('é', 128), 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('psp', repeat('r', 256), 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('psp', 'A-1', repeat('t', 256), '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', repeat('r', 256), '1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', repeat('t', 256), 'orders', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', repeat('k', 256));
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;
-- At the limits, accepted.
BEGIN;
SELECT payments.callback_route(repeat('p', 63), repeat('t', 255), 'orders', 'ref', 'status', 'authorized');
SELECT payments.receive_callback(repeat('p', 63), repeat('e', 255), 'A-1', repeat('t', 255), '{}');
SELECT payments.receive_callback('psp', repeat('e', 255), repeat('r', 255), 'payment.refunded', '{}');
ROLLBACK;

--
-- A provider nobody named: PM405, from every function that does not
-- name a provider for the first time.  An unknown key: PM405.
--
SELECT payments.receive_callback('nobody', 'evt_1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.record_query_result('nobody', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('nobody', '{}', '\x00'::bytea);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_unroute('nobody', 'payment.authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT nextval('payments.callback_keys_id_seq') AS missing \gset
\set VERBOSITY sqlstate
SELECT payments.callback_key_revoke(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
-- provider names are compared byte for byte
SELECT payments.receive_callback('PSP', 'evt_1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('psp ', 'evt_1', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;

--
-- Routes to what cannot be routed to
--
-- a column without the state guard: 55000
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'note', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- columns that do not exist, or are system columns: 42703
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'missing', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'missing', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ctid', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'Ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- a state the column's machine does not have: PM202
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'refunded');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'Authorized');
\echo :LAST_ERROR_SQLSTATE
-- a view: 42809
SELECT payments.callback_route('psp', 'payment.captured', 'orders_view', 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- a sequence: 42809
CREATE SEQUENCE seq;
SELECT payments.callback_route('psp', 'payment.captured', 'seq', 'last_value', 'is_called', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- an OID that is no relation: 42P01
SELECT payments.callback_route('psp', 'payment.captured', 4000000000::oid::regclass, 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- on_conflict handlers of the wrong signature (22023), or no function (42883)
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'authorized',
                               'not_a_handler(text)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'authorized',
                               'returns_int(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'authorized',
                               4000000000::oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;

--
-- Events a route cannot apply
--
-- a payment_ref that is no value of the key's type: 22P02, nothing recorded
CREATE TABLE pays (id bigint PRIMARY KEY, st text NOT NULL);
SELECT payments.guard_state('pays', 'st', 'payment');
INSERT INTO pays VALUES (1, 'created');
SELECT payments.callback_route('psp', 'pay.authorized', 'pays', 'id', 'st', 'authorized');
SELECT * FROM counts();
SELECT payments.receive_callback('psp', 'evt_2', 'one', 'pay.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a key column that is not unique: 21000, and no row moved
CREATE TABLE loose (id integer PRIMARY KEY, ref text, st text NOT NULL);
SELECT payments.guard_state('loose', 'st', 'payment');
INSERT INTO loose VALUES (1, 'L-1', 'created'), (2, 'L-1', 'created');
SELECT payments.callback_route('psp', 'loose.authorized', 'loose', 'ref', 'st', 'authorized');
SELECT * FROM counts();
SELECT payments.receive_callback('psp', 'evt_3', 'L-1', 'loose.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT st, count(*) FROM loose GROUP BY st;
-- a row in no state of the machine: PM202
ALTER TABLE pays DISABLE TRIGGER USER;
INSERT INTO pays VALUES (2, 'lost');
ALTER TABLE pays ENABLE TRIGGER USER;
SELECT payments.receive_callback('psp', 'evt_4', '2', 'pay.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a route whose state the machine has lost since: PM202
SELECT payments.define_state_machine('payment', '{
    "created": ["approved", "cancelled"],
    "approved": ["captured", "cancelled"]}');
SELECT payments.receive_callback('psp', 'evt_5', 'A-1', 'payment.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.define_state_machine('payment', '{
    "created": ["authorized", "cancelled"],
    "authorized": ["captured", "cancelled"]}');
SELECT * FROM counts();
SELECT count(*) AS moves FROM payments.state_history WHERE from_state IS NOT NULL;
-- An on_conflict handler dropped after routing: 42883, nothing recorded.
CREATE FUNCTION gone(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.callback_route('psp', 'payment.captured', 'orders', 'ref', 'status', 'captured', 'gone(jsonb)');
DROP FUNCTION gone(jsonb);
INSERT INTO orders VALUES ('A-9', 'created');
UPDATE orders SET status = 'cancelled' WHERE ref = 'A-9';
SELECT * FROM counts();
SELECT payments.receive_callback('psp', 'evt_6', 'A-9', 'payment.captured', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM counts();

--
-- Expectations: the wait is positive and at most 366 days (22023); the
-- handler has a handler's signature (22023) and exists (42883).
--
SELECT cb_state() AS before \gset
SELECT payments.expect_callback('psp', 'A-1', '0', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '-1 hour', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '1 day -24 hours', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '367 days', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '100000 years', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '1 hour', 'not_a_handler(text)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.expect_callback('psp', 'A-1', '1 hour', 4000000000::oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
-- and a new provider named by a refused call is not claimed
SELECT payments.expect_callback('newcomer', 'A-1', '0', 'refund(jsonb)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_route('newcomer', 'payment.captured', 'orders', 'ref', 'note', 'authorized');
\echo :LAST_ERROR_SQLSTATE
-- the worker's tasks take 1 to 1000000 rows (22003)
SELECT payments.chase_callbacks(0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.purge_callbacks(-1);
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;

--
-- Keys: a validity window that ends after it starts and starts at a
-- finite time (22023); a key_id the provider has already, even revoked
-- (42710).
--
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k2',
                                 '2030-01-01', '2030-01-01');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k2',
                                 '2030-01-01', '2029-12-31');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k2',
                                 'infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k2',
                                 '-infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a secret of sixteen bytes or more', 'k2',
                                 now(), '-infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'another secret of sixteen bytes', 'k1');
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;
SELECT payments.callback_key_revoke(:k1);
SELECT payments.callback_key_revoke(:k1);
SELECT cb_state() AS before \gset
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'another secret of sixteen bytes', 'k1');
\echo :LAST_ERROR_SQLSTATE
-- a key_id left out is the key's id, which no later key may take
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'a third secret of sixteen bytes') AS k3 \gset
SELECT key_id = :'k3' AS key_id_is_id FROM payments.callback_keys WHERE id = :k3;
SELECT cb_state() AS before \gset
SELECT payments.callback_key_add('psp', 'hmac-sha256', 'another secret of sixteen bytes', :'k3');
\echo :LAST_ERROR_SQLSTATE
SELECT cb_state() = :'before' AS unchanged;
-- wechatpay-v3 names its key by the platform certificate's serial: 22004
SELECT payments.callback_key_add('wx', 'wechatpay-v3', '-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAtnbTV79+z5oKqUKIWWdw
4j2F+E0SFmjD8ssV1rGri8a+8Sh5FChok5k3vFBAW/kkFO459XWiAc+/Z4Dj2FAJ
cM0SYJVDv8u+/3QxfAJMJhNpfhWlSiGl4YQhx9x2L7RPFrB4utahtf7Crahdbpsj
6MzQsc60bod2qux5J7a6HNuxze0ZNwi+KAgXOD7SvtY82YrEOCDUFMsRm+rwKqGH
f8GxdEuGmWwyi5ujqNoJjycFggRw+n+7inoaB2CvdKuHbWoYtVIV8c4CGJ09Vouv
qojYDDKDcF1UPmXTjckkn+uIt/8Xz2Xa3XpoHi+Az02W0OO+rDAU2YCW0Luaw255
PwIDAQAB
-----END PUBLIC KEY-----');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS wx_keys FROM payments.callback_keys WHERE provider = 'wx';
SELECT count(*) AS wx_claimed FROM payments.callback_providers WHERE provider = 'wx';

--
-- Hostile identifiers: a schema, table and columns whose names need
-- quoting route and apply like any other.
--
CREATE SCHEMA "we'ird ""schema""";
CREATE TABLE "we'ird ""schema"""."Order Book; DROP TABLE orders" (
    "Ref ""Key""" text PRIMARY KEY,
    "Sta'tus" text NOT NULL);
SELECT payments.guard_state('"we''ird ""schema"""."Order Book; DROP TABLE orders"', 'Sta''tus', 'payment');
INSERT INTO "we'ird ""schema"""."Order Book; DROP TABLE orders" VALUES ('H-1', 'created');
SELECT payments.callback_route('psp', 'hostile.authorized',
                               '"we''ird ""schema"""."Order Book; DROP TABLE orders"',
                               'Ref "Key"', 'Sta''tus', 'authorized');
SELECT tbl, key_col, state_col FROM payments.callback_routes WHERE event_type = 'hostile.authorized';
SELECT payments.receive_callback('psp', 'evt_h', 'H-1', 'hostile.authorized', '{}');
SELECT payments.receive_callback('psp', 'evt_h2', 'H-1'' OR ''1''=''1', 'hostile.authorized', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM "we'ird ""schema"""."Order Book; DROP TABLE orders";
SELECT count(*) AS orders_still_there FROM orders;
SELECT row_key, from_state, to_state FROM payments.state_history
 WHERE tbl = '"we''ird ""schema"""."Order Book; DROP TABLE orders"'::regclass ORDER BY id;

--
-- A table in a schema the caller has no USAGE on: 42501, even with
-- rights on the table and its OID in hand.
--
CREATE ROLE regress_cb_errors_app;
GRANT payments_app TO regress_cb_errors_app;
CREATE SCHEMA hidden;
CREATE TABLE hidden.orders (ref text PRIMARY KEY, status text NOT NULL);
SELECT payments.guard_state('hidden.orders', 'status', 'payment');
GRANT SELECT, UPDATE ON hidden.orders TO regress_cb_errors_app;
SELECT 'hidden.orders'::regclass::oid AS hidden_oid \gset
SELECT cb_state() AS before \gset
SET ROLE regress_cb_errors_app;
SELECT payments.callback_route('app', 'payment.authorized', :hidden_oid, 'ref', 'status', 'authorized');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SELECT cb_state() = :'before' AS unchanged;
SELECT count(*) AS app_claimed FROM payments.callback_providers WHERE provider = 'app';
DROP SCHEMA hidden CASCADE;
REVOKE payments_app FROM regress_cb_errors_app;
DROP ROLE regress_cb_errors_app;

DROP SCHEMA "we'ird ""schema""" CASCADE;
DROP VIEW orders_view;
DROP TABLE orders, pays, loose;
DROP SEQUENCE seq;
DROP FUNCTION cb_state(), counts(), refund(jsonb), not_a_handler(text), returns_int(jsonb);
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
