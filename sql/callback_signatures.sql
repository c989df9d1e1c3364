--
-- Callback signatures: every scheme's request signed here by an independent
-- implementation (pgcrypto's hmac()), verified by verify_callback and
-- receive_callback; key rotation and validity windows; each refusal with its
-- SQLSTATE (PM401 mismatch, PM402 no valid key, PM403 timestamp outside the
-- window, PM404 header missing or malformed) and counted once in
-- callback_stats.signature_failures; unfit secrets refused at
-- callback_key_add (22023).  The RSA schemes are in test/t/502_callback_rsa.pl.
--
-- Most checks judge the request at a fixed time, :'at', passed as
-- verify_callback's `at`, with every signed timestamp and key window computed
-- from it, so that the messages (which print that time) are stable and
-- nothing here expires.  receive_callback judges at now().
--
CREATE EXTENSION payments;
CREATE EXTENSION pgcrypto;

\set at '2025-03-01 12:00:00+00'
\set body '{"id":"evt_1","object":"event","type":"payment_intent.succeeded","data":{"object":{"amount":1000,"currency":"eur"}}}'

-- The provider's side.  unix(): a signed timestamp, seconds since 1970.
CREATE FUNCTION unix(at timestamptz) RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT floor(extract(epoch FROM at))::bigint::text $$;
-- Stripe: HMAC-SHA256 of "<t>.<body>", keyed with the secret's bytes.
CREATE FUNCTION stripe_v1(secret text, t text, body bytea) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT encode(hmac(convert_to(t || '.', 'UTF8') || body, convert_to(secret, 'UTF8'), 'sha256'), 'hex') $$;
CREATE FUNCTION stripe_headers(secret text, at timestamptz, body bytea) RETURNS jsonb LANGUAGE sql STABLE
    AS $$ SELECT jsonb_build_object('Stripe-Signature',
                                    format('t=%s,v1=%s', unix(at), stripe_v1(secret, unix(at), body))) $$;
-- Standard Webhooks: HMAC-SHA256 of "<id>.<t>.<body>", keyed with the
-- base64-decoded bytes after whsec_.
CREATE FUNCTION sw_v1(secret text, id text, t text, body bytea) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'v1,' || encode(hmac(convert_to(id || '.' || t || '.', 'UTF8') || body,
                                      decode(substr(secret, 7), 'base64'), 'sha256'), 'base64') $$;
CREATE FUNCTION sw_headers(secret text, id text, at timestamptz, body bytea) RETURNS jsonb LANGUAGE sql STABLE
    AS $$ SELECT jsonb_build_object('webhook-id', id, 'webhook-timestamp', unix(at),
                                    'webhook-signature', sw_v1(secret, id, unix(at), body)) $$;
-- GitHub-style: HMAC-SHA256 of the body alone, hex or base64.
CREATE FUNCTION body_hmac(secret text, body bytea, enc text) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT encode(hmac(body, convert_to(secret, 'UTF8'), 'sha256'), enc) $$;
-- The body with one bit flipped.
CREATE FUNCTION flip_bit(body bytea, n integer) RETURNS bytea LANGUAGE sql IMMUTABLE
    AS $$ SELECT set_bit(body, n, 1 - get_bit(body, n)) $$;

-- Refusals counted since the last call, per provider (the counters live in
-- shared memory and outlast this test, so only differences are shown).
CREATE TABLE failures_seen (provider text PRIMARY KEY, n bigint NOT NULL);
CREATE FUNCTION new_failures(p text) RETURNS bigint LANGUAGE sql AS $$
    WITH cur AS (SELECT signature_failures AS n FROM payments.callback_stats WHERE provider = p),
         old AS (SELECT n FROM failures_seen WHERE provider = p),
         save AS (INSERT INTO failures_seen SELECT p, n FROM cur
                  ON CONFLICT (provider) DO UPDATE SET n = excluded.n)
    SELECT (SELECT n FROM cur) - coalesce((SELECT n FROM old), 0) $$;

--
-- Stripe
--
SELECT payments.callback_key_add('sig_stripe', 'stripe', 'whsec_sigtest_stripe_key_one',
                                 key_id => 'st-k1', valid_from => :'at'::timestamptz - interval '30 days') AS st_k1 \gset
-- the counter exists (the library is preloaded)
SELECT new_failures('sig_stripe') IS NOT NULL AS counted;

-- a valid request: the key_id, from the bytea and the text overloads
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           convert_to(:'body', 'UTF8'), :'at') AS key_id;
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           :'body'::text, :'at') AS key_id;
-- header names regardless of case
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('stripe-signature', h->>'Stripe-Signature'), convert_to(:'body', 'UTF8'), :'at') AS lower,
       payments.verify_callback('sig_stripe',
           jsonb_build_object('STRIPE-SIGNATURE', h->>'Stripe-Signature'), convert_to(:'body', 'UTF8'), :'at') AS upper,
       payments.verify_callback('sig_stripe',
           jsonb_build_object('x-request-id', 'abc', 'sTrIpE-sIgNaTuRe', h->>'Stripe-Signature'), convert_to(:'body', 'UTF8'), :'at') AS mixed
  FROM stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')) AS h;
-- several v1 entries, one of them right, and a v0 that is ignored
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v1=%s,v1=%s,v0=%s', unix(:'at'), stripe_v1('whsec_another_secret_entirely', unix(:'at'), b),
                      stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b), repeat('0', 64))),
           b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b;
-- spaces around the entries are no problem
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format(' t=%s , v1=%s ', unix(:'at'), stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b))),
           b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b;

-- The body is not the one signed: PM401, whatever the change.
-- one bit of one byte (bit 0, 7, the last bit)
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           flip_bit(convert_to(:'body', 'UTF8'), 0), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           flip_bit(convert_to(:'body', 'UTF8'), 7), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           flip_bit(convert_to(:'body', 'UTF8'), 8 * length(:'body') - 1), :'at');
\echo :LAST_ERROR_SQLSTATE
-- truncated by one byte
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           substr(convert_to(:'body', 'UTF8'), 1, length(:'body') - 1), :'at');
\echo :LAST_ERROR_SQLSTATE
-- a body with a byte appended
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           convert_to(:'body' || E'\n', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
-- re-serialised: the same JSON, other bytes
SELECT :'body'::jsonb::text::jsonb = :'body'::jsonb AS same_json,
       :'body'::jsonb::text = :'body' AS same_bytes;
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')),
           :'body'::jsonb::text, :'at');
\echo :LAST_ERROR_SQLSTATE
-- signed with another key
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_two', :'at', convert_to(:'body', 'UTF8')),
           convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
-- the signature of another timestamp under this one: the timestamp is signed
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v1=%s', unix(:'at'), stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'::timestamptz - interval '1 second'), b))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- the right signature with its last byte changed
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v1=%s', unix(:'at'), overlay(v1 placing (CASE WHEN right(v1, 2) = '00' THEN '01' ELSE '00' END) from 63))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b) AS v1;
\echo :LAST_ERROR_SQLSTATE
-- every v1 wrong
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature', format('t=%s,v1=%s,v1=%s', unix(:'at'), repeat('ab', 32), repeat('cd', 32))),
           convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
-- the right signature, but only as v0: other schemes are ignored
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v0=%s', unix(:'at'), stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_stripe') AS refusals;

-- The signed timestamp must be in the window around `at` (300 s both ways):
-- the limits pass, a second beyond is PM403.
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', t, b), b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b,
       unnest(ARRAY[:'at'::timestamptz - interval '300 seconds', :'at'::timestamptz + interval '300 seconds']) AS t;
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', t, b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, CAST(:'at'::timestamptz - interval '301 seconds' AS timestamptz) AS t;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', t, b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, CAST(:'at'::timestamptz + interval '301 seconds' AS timestamptz) AS t;
\echo :LAST_ERROR_SQLSTATE
-- a replay days later
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', :'at', b), b,
                                :'at'::timestamptz + interval '3 days')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- the windows are settings
SET payments.callback_tolerance = '60s';
SET payments.callback_future_tolerance = 0;
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', t, b), b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b,
       unnest(ARRAY[:'at'::timestamptz - interval '60 seconds', :'at'::timestamptz]) AS t;
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', t, b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, CAST(:'at'::timestamptz - interval '61 seconds' AS timestamptz) AS t;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', t, b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, CAST(:'at'::timestamptz + interval '1 second' AS timestamptz) AS t;
\echo :LAST_ERROR_SQLSTATE
RESET payments.callback_tolerance;
RESET payments.callback_future_tolerance;
SELECT new_failures('sig_stripe') AS refusals;

-- A missing or malformed header: PM404.
SELECT payments.verify_callback('sig_stripe', '{}', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe', '{"Stripe-Signatures": "t=1,v1=00"}', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe', '{"Stripe-Signature": ""}', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe', '{"Stripe-Signature": 12345}', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
-- the same header twice, in two cases
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature', h->>'Stripe-Signature', 'stripe-signature', h->>'Stripe-Signature'),
           convert_to(:'body', 'UTF8'), :'at')
  FROM stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')) AS h;
\echo :LAST_ERROR_SQLSTATE
-- no t=
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature', format('v1=%s', stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- two t=
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,t=%s,v1=%s', unix(:'at'), unix(:'at'), stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- no v1
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature', format('t=%s', unix(:'at'))), convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
-- t not a number
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v1=%s', :'at', stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- v1 not hex, of an odd length, of the wrong length, and empty
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature', format('t=%s,v1=%s', unix(:'at'), repeat('zz', 32))),
           convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v1=%s', unix(:'at'), substr(stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b), 2))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature',
               format('t=%s,v1=%s', unix(:'at'), substr(stripe_v1('whsec_sigtest_stripe_key_one', unix(:'at'), b), 3))),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe',
           jsonb_build_object('Stripe-Signature', format('t=%s,v1=', unix(:'at'))), convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_stripe') AS refusals;

-- Bad arguments are errors of their own, not counted as refusals.
SELECT payments.verify_callback('sig_stripe', '["Stripe-Signature"]', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_stripe',
           stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(:'body', 'UTF8')), NULL::bytea, :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_stripe') AS refusals;

-- Bodies over payments.callback_max_body: 54000 before any check, not counted.
SET payments.callback_max_body = 100;
SELECT length(b) AS bytes,
       payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', :'at', b), b, :'at') AS key_id
  FROM convert_to(repeat('x', 100), 'UTF8') AS b;
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', :'at', b), b, :'at')
  FROM convert_to(repeat('x', 101), 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- the limit is in bytes: 51 two-byte characters are 102 bytes
SELECT payments.verify_callback('sig_stripe', stripe_headers('whsec_sigtest_stripe_key_one', :'at', convert_to(t, 'UTF8')), t, :'at')
  FROM repeat('é', 51) AS t;
\echo :LAST_ERROR_SQLSTATE
-- and with no valid header at all, the size is still what is refused
SELECT payments.verify_callback('sig_stripe', '{}', convert_to(repeat('x', 101), 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
RESET payments.callback_max_body;
SELECT new_failures('sig_stripe') AS refusals;

--
-- Standard Webhooks (Svix): the key is the base64 after whsec_, decoded.
--
SELECT 'whsec_' || encode(convert_to('sigtest standard webhooks key 1', 'UTF8'), 'base64') AS sw_secret \gset
SELECT payments.callback_key_add('sig_sw', 'standard-webhooks', :'sw_secret', key_id => 'sw-k1',
                                 valid_from => :'at'::timestamptz - interval '30 days') AS sw_k1 \gset
SELECT new_failures('sig_sw') IS NOT NULL AS counted;
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at', b), b, :'at') AS key_id,
       payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at', b), :'body'::text, :'at') AS text_body
  FROM convert_to(:'body', 'UTF8') AS b;
-- other cases, and the svix- names
SELECT payments.verify_callback('sig_sw',
           jsonb_build_object('Webhook-Id', h->'webhook-id', 'WEBHOOK-TIMESTAMP', h->'webhook-timestamp',
                              'Webhook-Signature', h->'webhook-signature'), b, :'at') AS key_id,
       payments.verify_callback('sig_sw',
           jsonb_build_object('svix-id', h->'webhook-id', 'Svix-Timestamp', h->'webhook-timestamp',
                              'svix-signature', h->'webhook-signature'), b, :'at') AS svix
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
-- several entries, one right (the others: a wrong v1 and a v1a), without
-- its padding
SELECT payments.verify_callback('sig_sw',
           h || jsonb_build_object('webhook-signature',
               format('v1a,%s %s %s', repeat('A', 43), sw_v1(:'sw_secret', 'msg_2a', unix(:'at'), 'other'),
                      rtrim(h->>'webhook-signature', '='))), b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
-- the id and the timestamp are signed
SELECT payments.verify_callback('sig_sw', h || '{"webhook-id": "msg_2b"}', b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', h || jsonb_build_object('webhook-timestamp', unix(:'at'::timestamptz - interval '1 second')), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
-- one bit of the body
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at', b), flip_bit(b, 100), :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- keyed with the secret's text instead of its decoded bytes
SELECT payments.verify_callback('sig_sw',
           h || jsonb_build_object('webhook-signature',
               'v1,' || encode(hmac(convert_to('msg_2a.' || unix(:'at') || '.', 'UTF8') || b, convert_to(:'sw_secret', 'UTF8'), 'sha256'), 'base64')),
           b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
-- another key
SELECT payments.verify_callback('sig_sw',
           sw_headers('whsec_' || encode(convert_to('sigtest standard webhooks key 2', 'UTF8'), 'base64'), 'msg_2a', :'at', b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- the window
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at'::timestamptz - interval '301 seconds', b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at'::timestamptz + interval '301 seconds', b), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- each header missing in turn
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at', b) - 'webhook-id', b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at', b) - 'webhook-timestamp', b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', sw_headers(:'sw_secret', 'msg_2a', :'at', b) - 'webhook-signature', b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- malformed: no v1 entry, an entry without a version, not base64, a bad timestamp
SELECT payments.verify_callback('sig_sw', h || jsonb_build_object('webhook-signature', replace(h->>'webhook-signature', 'v1,', 'v2,')), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', h || jsonb_build_object('webhook-signature', substr(h->>'webhook-signature', 4)), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', h || '{"webhook-signature": "v1,not*base64*at*all"}', b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_sw', h || jsonb_build_object('webhook-timestamp', unix(:'at') || '.5'), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, sw_headers(:'sw_secret', 'msg_2a', :'at', b) AS h;
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_sw') AS refusals;

--
-- hmac-sha256: the body alone, hex or base64, optionally sha256=; header
-- X-Signature, or the one the scheme names.
--
SELECT payments.callback_key_add('sig_hmac', 'hmac-sha256', 'sigtest-hmac-secret-01',
                                 key_id => 'gh-k1', valid_from => :'at'::timestamptz - interval '30 days') AS gh_k1 \gset
SELECT payments.callback_key_add('sig_hub', 'hmac-sha256:X-Hub-Signature-256', 'sigtest-hub-secret-01',
                                 key_id => 'hub-k1', valid_from => :'at'::timestamptz - interval '30 days') AS hub_k1 \gset
SELECT new_failures('sig_hmac') IS NOT NULL AND new_failures('sig_hub') IS NOT NULL AS counted;
SELECT enc, payments.verify_callback('sig_hmac', jsonb_build_object('X-Signature', sig), b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b,
       LATERAL (VALUES ('hex', body_hmac('sigtest-hmac-secret-01', b, 'hex')),
                       ('HEX', upper(body_hmac('sigtest-hmac-secret-01', b, 'hex'))),
                       ('base64', body_hmac('sigtest-hmac-secret-01', b, 'base64')),
                       ('sha256=hex', 'sha256=' || body_hmac('sigtest-hmac-secret-01', b, 'hex')),
                       ('sha256=base64', 'sha256=' || body_hmac('sigtest-hmac-secret-01', b, 'base64'))) AS s(enc, sig)
UNION ALL
SELECT 'x-signature', payments.verify_callback('sig_hmac',
           jsonb_build_object('x-signature', body_hmac('sigtest-hmac-secret-01', b, 'hex')), :'body'::text, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
-- no timestamp: the same request verifies a year later
SELECT payments.verify_callback('sig_hmac', jsonb_build_object('X-Signature', body_hmac('sigtest-hmac-secret-01', b, 'hex')),
                                b, :'at'::timestamptz + interval '1 year') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b;
SELECT payments.verify_callback('sig_hub',
           jsonb_build_object('x-hub-signature-256', 'sha256=' || body_hmac('sigtest-hub-secret-01', b, 'hex')), b, :'at') AS key_id
  FROM convert_to(:'body', 'UTF8') AS b;
-- refusals
SELECT payments.verify_callback('sig_hmac', jsonb_build_object('X-Signature', body_hmac('sigtest-hmac-secret-01', b, 'hex')),
                                flip_bit(b, 333), :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_hmac', jsonb_build_object('X-Signature', body_hmac('sigtest-hmac-secret-01', b, 'hex')),
                                :'body'::jsonb::text, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_hmac', jsonb_build_object('X-Signature', body_hmac('sigtest-hub-secret-01', b, 'hex')), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
-- the right signature with its first byte changed
SELECT payments.verify_callback('sig_hmac',
           jsonb_build_object('X-Signature', overlay(sig placing (CASE WHEN left(sig, 2) = 'ff' THEN 'fe' ELSE 'ff' END) from 1)), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b, body_hmac('sigtest-hmac-secret-01', b, 'hex') AS sig;
\echo :LAST_ERROR_SQLSTATE
-- the header the scheme does not name
SELECT payments.verify_callback('sig_hub',
           jsonb_build_object('X-Signature', 'sha256=' || body_hmac('sigtest-hub-secret-01', b, 'hex')), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_hmac', '{"X-Signature": "sha256="}', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_hmac', '{"X-Signature": "sha256=not hex, not base64"}', convert_to(:'body', 'UTF8'), :'at');
\echo :LAST_ERROR_SQLSTATE
-- 31 bytes in hex
SELECT payments.verify_callback('sig_hmac', jsonb_build_object('X-Signature', substr(body_hmac('sigtest-hmac-secret-01', b, 'hex'), 3)), b, :'at')
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_hmac') AS sig_hmac_refusals, new_failures('sig_hub') AS sig_hub_refusals;

--
-- Rotation: two keys valid at once, each verifies its requests; when a
-- request carries signatures of both (as Stripe sends during a rotation),
-- the newest key is the one returned; a revoked key and a key outside its
-- [valid_from, valid_until) window never verify.
--
SELECT payments.callback_key_add('sig_rot', 'stripe', 'whsec_sigtest_rotation_old', key_id => 'old',
                                 valid_from => :'at'::timestamptz - interval '30 days',
                                 valid_until => :'at'::timestamptz + interval '1 day') AS rot_old \gset
SELECT payments.callback_key_add('sig_rot', 'stripe', 'whsec_sigtest_rotation_new', key_id => 'new',
                                 valid_from => :'at'::timestamptz - interval '1 hour') AS rot_new \gset
SELECT new_failures('sig_rot') IS NOT NULL AS counted;
CREATE FUNCTION rot_verify(secrets text[], at timestamptz) RETURNS text LANGUAGE sql AS $$
    SELECT payments.verify_callback('sig_rot',
               jsonb_build_object('Stripe-Signature',
                   't=' || unix(at) || (SELECT string_agg(',v1=' || stripe_v1(s, unix(at), 'rotated body'), '') FROM unnest(secrets) AS s)),
               'rotated body'::bytea, at) $$;
-- both valid
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at') AS old_signed,
       rot_verify('{whsec_sigtest_rotation_new}', :'at') AS new_signed,
       rot_verify('{whsec_sigtest_rotation_old,whsec_sigtest_rotation_new}', :'at') AS both_signed,
       rot_verify('{whsec_sigtest_rotation_new,whsec_sigtest_rotation_old}', :'at') AS both_signed_reversed;
-- the new key is not valid yet an hour and a second earlier; valid_from is inclusive
SELECT rot_verify('{whsec_sigtest_rotation_old,whsec_sigtest_rotation_new}', :'at'::timestamptz - interval '3601 seconds') AS both_signed,
       rot_verify('{whsec_sigtest_rotation_new}', :'at'::timestamptz - interval '3600 seconds') AS at_valid_from;
SELECT rot_verify('{whsec_sigtest_rotation_new}', :'at'::timestamptz - interval '3601 seconds');
\echo :LAST_ERROR_SQLSTATE
-- the old key expires a day later; valid_until is exclusive
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at'::timestamptz + interval '1 day' - interval '1 second') AS before_valid_until,
       rot_verify('{whsec_sigtest_rotation_old,whsec_sigtest_rotation_new}', :'at'::timestamptz + interval '1 day') AS both_signed;
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at'::timestamptz + interval '1 day');
\echo :LAST_ERROR_SQLSTATE
-- before the old key's window, no key is valid: PM402
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at'::timestamptz - interval '31 days');
\echo :LAST_ERROR_SQLSTATE
-- revoking the new key: only the old one verifies
SELECT payments.callback_key_revoke(:rot_new) AS revoked;
SELECT payments.callback_key_revoke(:rot_new) AS revoked_again;
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at') AS old_signed,
       rot_verify('{whsec_sigtest_rotation_new,whsec_sigtest_rotation_old}', :'at') AS both_signed;
SELECT rot_verify('{whsec_sigtest_rotation_new}', :'at');
\echo :LAST_ERROR_SQLSTATE
-- past the old key's window nothing is left
SELECT rot_verify('{whsec_sigtest_rotation_new}', :'at'::timestamptz + interval '1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_rot') AS refusals;
-- all revoked: PM402 at any time
SELECT payments.callback_key_revoke(:rot_old) AS revoked;
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT key_id, revoked_at IS NOT NULL AS revoked FROM payments.callback_keys WHERE provider = 'sig_rot' ORDER BY id;
SELECT new_failures('sig_rot') AS refusals;

-- A key valid only in the future, as for a rotation planned ahead.
SELECT payments.callback_key_add('sig_later', 'stripe', 'whsec_sigtest_later_key_1', key_id => 'later',
                                 valid_from => :'at'::timestamptz + interval '1 hour',
                                 valid_until => :'at'::timestamptz + interval '2 hours') AS later \gset
SELECT new_failures('sig_later') IS NOT NULL AS counted;
SELECT payments.verify_callback('sig_later', stripe_headers('whsec_sigtest_later_key_1', :'at', 'x'), 'x'::bytea, :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.verify_callback('sig_later', stripe_headers('whsec_sigtest_later_key_1', t, 'x'), 'x'::bytea, t) AS key_id
  FROM CAST(:'at'::timestamptz + interval '1 hour' AS timestamptz) AS t;
SELECT payments.verify_callback('sig_later', stripe_headers('whsec_sigtest_later_key_1', t, 'x'), 'x'::bytea, t)
  FROM CAST(:'at'::timestamptz + interval '2 hours' AS timestamptz) AS t;
\echo :LAST_ERROR_SQLSTATE
-- the windows are checked before the headers: no valid key, then nothing to parse
SELECT payments.verify_callback('sig_later', '{}', 'x'::bytea, :'at');
\echo :LAST_ERROR_SQLSTATE
SELECT new_failures('sig_later') AS refusals;

--
-- receive_callback with headers, judged at now(): the key that verified is
-- recorded; a refusal records nothing, not even a delivery of a known event.
-- (Terse errors: their details print the current time.)
--
\set VERBOSITY terse
SELECT count(*) AS recorded FROM payments.callbacks WHERE provider = 'sig_stripe';
SELECT payments.receive_callback('sig_stripe', 'evt_1', 'pi_1', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_one', now(), b), b) AS outcome
  FROM convert_to(:'body', 'UTF8') AS b;
SELECT event_id, key_id, outcome, deliveries FROM payments.callbacks WHERE provider = 'sig_stripe';
-- a retry of the same event, signed anew: a duplicate, one more delivery
SELECT payments.receive_callback('sig_stripe', 'evt_1', 'pi_1', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_one', now(), b), b) AS outcome
  FROM convert_to(:'body', 'UTF8') AS b;
-- forged deliveries of the known event and of new ones
SELECT payments.receive_callback('sig_stripe', 'evt_1', 'pi_1', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_one', now(), b), flip_bit(b, 42))
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('sig_stripe', 'evt_2', 'pi_2', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_one', now(), b), convert_to(:'body'::jsonb::text, 'UTF8'))
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('sig_stripe', 'evt_3', 'pi_3', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_two', now(), b), b)
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('sig_stripe', 'evt_4', 'pi_4', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_one', now() - interval '1 hour', b), b)
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT payments.receive_callback('sig_stripe', 'evt_5', 'pi_5', 'payment_intent.succeeded', :'body'::jsonb,
                                 '{"Content-Type": "application/json"}', convert_to(:'body', 'UTF8'));
\echo :LAST_ERROR_SQLSTATE
SELECT event_id, key_id, outcome, deliveries FROM payments.callbacks
 WHERE provider = 'sig_stripe' ORDER BY event_id;
SELECT new_failures('sig_stripe') AS refusals;
-- standard-webhooks and hmac-sha256 through receive_callback
SELECT payments.receive_callback('sig_sw', 'msg_7', 'pi_7', 'payment_intent.succeeded', :'body'::jsonb,
                                 sw_headers(:'sw_secret', 'msg_7', now(), b), b) AS outcome
  FROM convert_to(:'body', 'UTF8') AS b;
SELECT payments.receive_callback('sig_hub', 'delivery-8', 'pi_8', 'payment_intent.succeeded', :'body'::jsonb,
                                 jsonb_build_object('X-Hub-Signature-256', 'sha256=' || body_hmac('sigtest-hub-secret-01', b, 'hex')), b) AS outcome
  FROM convert_to(:'body', 'UTF8') AS b;
SELECT payments.receive_callback('sig_sw', 'msg_9', 'pi_9', 'payment_intent.succeeded', :'body'::jsonb,
                                 sw_headers(:'sw_secret', 'msg_9', now(), b), substr(b, 2))
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
SELECT provider, event_id, key_id, outcome FROM payments.callbacks
 WHERE provider IN ('sig_sw', 'sig_hub') ORDER BY provider;
SELECT new_failures('sig_sw') AS sig_sw_refusals, new_failures('sig_hub') AS sig_hub_refusals;
-- the body limit applies to receive_callback too, before anything is recorded
SET payments.callback_max_body = 100;
SELECT payments.receive_callback('sig_stripe', 'evt_10', 'pi_10', 'payment_intent.succeeded', :'body'::jsonb,
                                 stripe_headers('whsec_sigtest_stripe_key_one', now(), b), b)
  FROM convert_to(:'body', 'UTF8') AS b;
\echo :LAST_ERROR_SQLSTATE
RESET payments.callback_max_body;
SELECT count(*) AS recorded FROM payments.callbacks WHERE event_id = 'evt_10';
\set VERBOSITY default

-- The view's other counts: only what verified was received.
SELECT provider, received, duplicates FROM payments.callback_stats ORDER BY provider;

--
-- Unfit secrets and schemes: 22023, and nothing added (not even the
-- provider's name).
--
SELECT count(*) AS keys_before FROM payments.callback_keys \gset
SELECT count(*) AS providers_before FROM payments.callback_providers \gset
-- HMAC secrets: at least 16 bytes (bytes, not characters)
SELECT payments.callback_key_add('sig_bad', 'stripe', 'whsec_15_bytes_');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'hmac-sha256', repeat('é', 7) || 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'hmac-sha256:X-Sig', '');
\echo :LAST_ERROR_SQLSTATE
-- standard-webhooks: whsec_ and base64 of at least 16 bytes
SELECT payments.callback_key_add('sig_bad', 'standard-webhooks', encode(convert_to('sixteen byte key', 'UTF8'), 'base64'));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'standard-webhooks', 'whsec_');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'standard-webhooks', 'whsec_not*base64*but*long*enough');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'standard-webhooks', 'whsec_sigtest_stripe_key_one');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'standard-webhooks', 'whsec_' || rtrim(encode(convert_to('sixteen byte ke', 'UTF8'), 'base64'), '='));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'standard-webhooks', 'WHSEC_' || encode(convert_to('sixteen byte key', 'UTF8'), 'base64'));
\echo :LAST_ERROR_SQLSTATE
-- RSA schemes: a PEM RSA public key
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', 'this is not a PEM text at all');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'wechatpay-v3', 'garbage', key_id => 'serial-1');
\echo :LAST_ERROR_SQLSTATE
-- an EC key and an Ed25519 key
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', '-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEDWeUI3XDqlPYzWCiUoibLuKHOxVV
YjJTi/IdQZr5NOBaQnZBXmKFAOZAbUjSTtqRTCySjwMBgkPd05+H1Z/Rlw==
-----END PUBLIC KEY-----');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'wechatpay-v3', '-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAk/1/25efEgC0KQUTsTmJHtWLN4w8ILiHoNV8zlPES4c=
-----END PUBLIC KEY-----', key_id => 'serial-1');
\echo :LAST_ERROR_SQLSTATE
-- a private key, another label, a block that does not decode, text after it
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', E'-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', E'-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----\n');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', E'-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', E'-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'wechatpay-v3', E'-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n', key_id => 'serial-1');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', '-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAk/1/25efEgC0KQUTsTmJHtWLN4w8ILiHoNV8zlPES4c=
-----END PUBLIC KEY-----
and some more text');
\echo :LAST_ERROR_SQLSTATE
-- an HMAC secret given to an RSA scheme
SELECT payments.callback_key_add('sig_bad', 'alipay-rsa2', 'whsec_sigtest_stripe_key_one');
\echo :LAST_ERROR_SQLSTATE
-- schemes: hmac-sha256:<header> needs an HTTP token of 1 to 64 bytes
SELECT payments.callback_key_add('sig_bad', 'hmac-sha256:', 'sigtest-hmac-secret-01');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'hmac-sha256:X Signature', 'sigtest-hmac-secret-01');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'hmac-sha256:X-Signature:', 'sigtest-hmac-secret-01');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'hmac-sha256:' || repeat('X', 65), 'sigtest-hmac-secret-01');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'HMAC-SHA256', 'sigtest-hmac-secret-01');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_bad', 'stripe ', 'sigtest-hmac-secret-01');
\echo :LAST_ERROR_SQLSTATE
-- The secret passed in the scheme's place: the message does not repeat it.
SELECT payments.callback_key_add('sig_bad', 'whsec_SWAPPED_SECRET_0123', 'stripe');
\echo :LAST_ERROR_SQLSTATE
-- One scheme per provider: a key of another scheme is refused while a key
-- of the first is not revoked.
SELECT payments.callback_key_add('sig_stripe', 'hmac-sha256', 'sigtest-hmac-secret-01', key_id => 'st-hmac');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_sw', 'stripe', 'whsec_sigtest_stripe_key_one', key_id => 'sw-stripe');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.callback_key_add('sig_hub', 'hmac-sha256', 'sigtest-hub-secret-02', key_id => 'hub-k2');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) - :keys_before AS keys_added,
       (SELECT count(*) FROM payments.callback_providers) - :providers_before AS providers_added
  FROM payments.callback_keys;
-- the limits themselves are accepted: 16 bytes, and whsec_ with 16 bytes unpadded
SELECT payments.callback_key_add('sig_min', 'hmac-sha256', 'sixteen byte key', key_id => 'min') > 0 AS added;
SELECT payments.callback_key_add('sig_min_sw', 'standard-webhooks', 'whsec_' || rtrim(encode(convert_to('sixteen byte key', 'UTF8'), 'base64'), '='),
                                 key_id => 'min', valid_from => :'at'::timestamptz - interval '1 day') > 0 AS added;
SELECT payments.verify_callback('sig_min_sw', sw_headers('whsec_' || encode(convert_to('sixteen byte key', 'UTF8'), 'base64'), 'm', :'at', 'x'), 'x'::bytea, :'at') AS key_id;
-- with every key of the first scheme revoked, the provider may change scheme,
-- and the request is then read by the new one
SELECT payments.callback_key_add('sig_rot', 'hmac-sha256', 'sigtest-rotation-hmac', key_id => 'hmac',
                                 valid_from => :'at'::timestamptz - interval '1 day') > 0 AS added;
SELECT payments.verify_callback('sig_rot', jsonb_build_object('X-Signature', body_hmac('sigtest-rotation-hmac', 'x', 'hex')),
                                'x'::bytea, :'at') AS key_id;
SELECT rot_verify('{whsec_sigtest_rotation_old}', :'at');
\echo :LAST_ERROR_SQLSTATE

DROP FUNCTION rot_verify(text[], timestamptz), new_failures(text), flip_bit(bytea, integer),
    body_hmac(text, bytea, text), sw_headers(text, text, timestamptz, bytea), sw_v1(text, text, text, bytea),
    stripe_headers(text, timestamptz, bytea), stripe_v1(text, text, bytea), unix(timestamptz);
DROP TABLE failures_seen;
DROP EXTENSION pgcrypto;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
