--
-- Outbox and inbox: bad input gets a clear error with its SQLSTATE and
-- changes nothing, and no role reaches a topic or an inbox it was not
-- given.  Each refusal is followed by its SQLSTATE; the tables are
-- compared before and after.
--
-- Roles: shop may send to "orders", relay may relay it, other_relay may
-- relay "refunds" only, deploy is a member of shop, nobody is a login role
-- with nothing, app is a member of payments_app with no grant, operator
-- is a member of payments_operator.
--
CREATE EXTENSION payments;
CREATE ROLE regress_obe_shop LOGIN IN ROLE payments_app;
CREATE ROLE regress_obe_deploy LOGIN IN ROLE regress_obe_shop;
CREATE ROLE regress_obe_relay LOGIN IN ROLE payments_app;
CREATE ROLE regress_obe_other_relay LOGIN IN ROLE payments_app;
CREATE ROLE regress_obe_app LOGIN IN ROLE payments_app;
CREATE ROLE regress_obe_nobody LOGIN;
CREATE ROLE regress_obe_operator LOGIN IN ROLE payments_operator;
SET ROLE regress_obe_operator;
SELECT payments.outbox_grant('orders', 'regress_obe_shop', 'send');
SELECT payments.outbox_grant('orders', 'regress_obe_relay', 'relay');
SELECT payments.outbox_grant('refunds', 'regress_obe_other_relay', 'relay');
RESET ROLE;

-- One pending and one claimed message to aim at.
SET ROLE regress_obe_shop;
SELECT payments.outbox_send('orders', 'k1', '{"n": 1}') AS m1 \gset
SELECT payments.outbox_send('orders', 'k2', '{"n": 2}') AS m2 \gset
SET ROLE regress_obe_relay;
SELECT claim_token AS token FROM payments.outbox_claim('orders', 1, '1 hour') \gset
RESET ROLE;
SELECT nextval('payments.outbox_id_seq') AS missing \gset

CREATE FUNCTION outbox_state() RETURNS text LANGUAGE sql AS $$
    SELECT md5(coalesce(string_agg(o::text, ',' ORDER BY o.id), '')
               || (SELECT coalesce(string_agg(i::text, ',' ORDER BY i.source, i.message_id), '')
                     FROM payments.inbox i)
               || (SELECT string_agg(g.topic || g.grantee::text || g.privilege, ','
                                     ORDER BY g.topic, g.privilege, g.grantee::text)
                     FROM payments.outbox_grants g))
      FROM payments.outbox o $$;
SELECT outbox_state() AS before \gset

SET ROLE regress_obe_shop;
-- NULLs: 22004
SELECT payments.outbox_send(NULL, 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', 'k', NULL);
\echo :LAST_ERROR_SQLSTATE
-- empty and over-long topics and keys (255 bytes): 22023
SELECT payments.outbox_send('', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', '', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send(repeat('t', 256), 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', repeat('é', 128), '{}');
\echo :LAST_ERROR_SQLSTATE
-- headers must be an object: 22023
SELECT payments.outbox_send('orders', 'k', '{}', '[1, 2]');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', 'k', '{}', '"text"');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', 'k', '{}', 'null');
\echo :LAST_ERROR_SQLSTATE
-- payloads and headers over payments.outbox_max_payload_size: 54000
RESET ROLE;
SET payments.outbox_max_payload_size = '1kB';
SET ROLE regress_obe_shop;
SELECT payments.outbox_send('orders', 'k', jsonb_build_object('blob', repeat('x', 1100)));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_send('orders', 'k', jsonb_build_object('blob', repeat('x', 600)),
                            jsonb_build_object('blob', repeat('x', 600)));
\echo :LAST_ERROR_SQLSTATE
-- only superusers set the limit
SET payments.outbox_max_payload_size = '1GB';
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
RESET payments.outbox_max_payload_size;
SET ROLE regress_obe_shop;
-- a topic the role was not granted: 42501, also for a member of a role
-- granted another topic
SELECT payments.outbox_send('refunds', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SET ROLE regress_obe_app;
SELECT payments.outbox_send('orders', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a relay of the topic may not send to it
SET ROLE regress_obe_relay;
SELECT payments.outbox_send('orders', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a role outside payments_app may not call the functions at all
SET ROLE regress_obe_nobody;
SELECT payments.outbox_send('orders', 'k', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_stats;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

SET ROLE regress_obe_relay;
-- claims: NULLs 22004; max_messages 1 to 100000 (22003); leases positive
-- and at most 7 days, measured from now (22023)
SELECT * FROM payments.outbox_claim(NULL, 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', NULL, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 0, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 100001, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 1, '0');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 1, '-1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 1, '-1 month 27 days');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 1, '8 days');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('orders', 1, 'infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.outbox_claim('', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
-- a topic it may not relay: 42501
SELECT * FROM payments.outbox_claim('refunds', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
-- the sender may not relay
SET ROLE regress_obe_shop;
SELECT * FROM payments.outbox_claim('orders', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE

SET ROLE regress_obe_relay;
-- acks and nacks: NULLs 22004; unknown ids 42501, as a message of a topic
-- the relay may not relay (so that ids tell it nothing; PM801 for
-- operators); a token that is not the claim's PM802, also for a pending
-- message; an empty or over-long error 22023
SELECT payments.outbox_ack(NULL, :token);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:m1, NULL);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_nack(:m1, :token, NULL);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:missing, :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_nack(:missing, :token, 'e');
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
-- a superuser (an operator) is told the id is unknown: PM801
RESET ROLE;
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:missing, :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
SET ROLE regress_obe_relay;
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:m1, :token + 1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:m2, :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m2', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_nack(:m2, :token, 'e');
SELECT replace(:'LAST_ERROR_MESSAGE', :'m2', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_nack(:m1, :token, '');
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_nack(:m1, :token, repeat('e', 8193));
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
-- a relay of another topic, even with the right token: 42501
SET ROLE regress_obe_other_relay;
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:m1, :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_nack(:m1, :token, 'e');
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
-- the sender, with the right token: 42501
SET ROLE regress_obe_deploy;
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:m1, :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default

-- the batch ack: NULL ids or an id NULL 22004, a two-dimensional array
-- 2202E, more than 100,000 ids 54000; an id of the batch the claim does
-- not hold gets the error of outbox_ack, and nothing of the batch is
-- acknowledged
SET ROLE regress_obe_relay;
SELECT payments.outbox_ack_batch(NULL, :token);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_ack_batch(ARRAY[:m1], NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_ack_batch(ARRAY[:m1, NULL], :token);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_ack_batch('{{1},{2}}', :token);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_ack_batch(pg_catalog.array_fill(:m1::bigint, ARRAY[100001]), :token);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT payments.outbox_ack_batch(ARRAY[:m1, :m2], :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m2', '<id>') AS error;
SELECT payments.outbox_ack_batch(ARRAY[:m1, :missing], :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SET ROLE regress_obe_other_relay;
SELECT payments.outbox_ack_batch(ARRAY[:m1], :token);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
RESET ROLE;
SELECT status FROM payments.outbox WHERE id = :m1;

-- operator functions: refused to everyone else (42501); NULLs 22004,
-- unknown ids PM801, wrong states PM803, bad grants 22023 and 42704
SET ROLE regress_obe_shop;
SELECT payments.outbox_grant('orders', 'regress_obe_shop', 'relay');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT payments.outbox_retry(:m1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_skip(:m2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m2', '<id>') AS error;
\set VERBOSITY default
SET ROLE regress_obe_operator;
SELECT payments.outbox_retry(NULL);
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT payments.outbox_retry(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_retry(:m2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m2', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_skip(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default
\set VERBOSITY sqlstate
SELECT payments.outbox_skip(:m1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'m1', '<id>') AS error;
\set VERBOSITY default
SELECT payments.outbox_grant(NULL, 'regress_obe_app', 'send');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_grant('orders', NULL, 'send');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_grant('orders', 'regress_obe_app', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_grant('orders', 'regress_obe_app', 'read');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_grant('orders', 'regress_obe_app', 'SEND');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_grant(repeat('t', 256), 'regress_obe_app', 'send');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_grant('orders', 4000000000::oid::regrole, 'send');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.outbox_revoke('orders', 'regress_obe_app', 'write');
\echo :LAST_ERROR_SQLSTATE
-- the operator reads the outbox but does not write its tables directly
DELETE FROM payments.outbox;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- application roles read no table of the outbox
SET ROLE regress_obe_relay;
SELECT count(*) FROM payments.outbox;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM payments.inbox;
\echo :LAST_ERROR_SQLSTATE
UPDATE payments.outbox SET status = 'acked';
\echo :LAST_ERROR_SQLSTATE
INSERT INTO payments.outbox_grants VALUES ('orders', 'regress_obe_app', 'relay', 'regress_obe_app');
\echo :LAST_ERROR_SQLSTATE

-- inbox: NULLs 22004; empty and over-long source and id 22023; retain
-- positive and at most 3660 days 22023
SET ROLE regress_obe_app;
SELECT payments.inbox_receive(NULL, 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', 'm', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('', 'm');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', repeat('m', 256));
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', 'm', '0');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', 'm', '-7 days');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', 'm', '11 years');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.inbox_receive('shop', 'm', 'infinity');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- A DBA's BEFORE ROW INSERT trigger on the outbox, which could skip the
-- message or change its key, is refused (55000) and nothing is stored;
-- before the refusal, a trigger returning NULL made the send return the id
-- of a message that was never stored.
CREATE FUNCTION outbox_discard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RETURN NULL; END $$;
CREATE TRIGGER outbox_discard BEFORE INSERT ON payments.outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_discard();
SET ROLE regress_obe_shop;
SELECT payments.outbox_send('orders', 'k1', '{"n": 9}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP TRIGGER outbox_discard ON payments.outbox;
DROP FUNCTION outbox_discard();

-- outbox_key_idx rebuilt by a DBA: the send probes it for an unsettled
-- message of the key, so an index that leaves some out (another predicate)
-- or that the probe's keys do not fit (other columns) is refused (55000),
-- rather than a second message of k1 made claimable beside the first.
DROP INDEX payments.outbox_key_idx;
CREATE INDEX outbox_key_idx ON payments.outbox (topic, key, id)
    WHERE settled_at IS NULL AND status = 'dead';
SET ROLE regress_obe_shop;
SELECT payments.outbox_send('orders', 'k1', '{"n": 9}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP INDEX payments.outbox_key_idx;
CREATE INDEX outbox_key_idx ON payments.outbox (key, topic, id) WHERE settled_at IS NULL;
SET ROLE regress_obe_shop;
SELECT payments.outbox_send('orders', 'k1', '{"n": 9}');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
DROP INDEX payments.outbox_key_idx;
CREATE INDEX outbox_key_idx ON payments.outbox (topic, key, id) WHERE settled_at IS NULL;

-- Nothing changed.
SELECT outbox_state() = :'before' AS unchanged;

-- Stats show each role only the topics it was granted: shop and relay see
-- "orders", other_relay sees nothing unsettled of "refunds", app sees
-- nothing, the operator sees every topic.
SET ROLE regress_obe_shop;
SELECT topic, pending, in_flight FROM payments.outbox_stats;
SET ROLE regress_obe_other_relay;
SELECT count(*) AS topics FROM payments.outbox_stats;
SET ROLE regress_obe_app;
SELECT count(*) AS topics FROM payments.outbox_stats;
SET ROLE regress_obe_operator;
SELECT topic, pending, in_flight FROM payments.outbox_stats;

-- A member of a granted role has its grants: deploy sends as shop.
SET ROLE regress_obe_deploy;
SELECT payments.outbox_send('orders', 'k3', '{"n": 3}') > :m2 AS deploy_sent;
RESET ROLE;
SELECT sent_by FROM payments.outbox WHERE key = 'k3';

-- A caller's search_path never reaches the statements the functions run as
-- the extension's owner: shop puts functions and operators of its own
-- before pg_catalog, and each would make it a superuser if called.
RESET ROLE;
CREATE SCHEMA regress_obe_evil AUTHORIZATION regress_obe_shop;
SET ROLE regress_obe_shop;
CREATE FUNCTION regress_obe_evil.escalate() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE NOTICE 'hijacked as %', current_user;
    EXECUTE 'ALTER ROLE regress_obe_shop SUPERUSER';
EXCEPTION WHEN insufficient_privilege THEN
    NULL;
END $$;
CREATE FUNCTION regress_obe_evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_obe_evil.escalate(); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION regress_obe_evil.random() RETURNS float8 LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_obe_evil.escalate(); RETURN 0.5; END $$;
CREATE FUNCTION regress_obe_evil.text_eq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_obe_evil.escalate(); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR regress_obe_evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = regress_obe_evil.text_eq);
CREATE FUNCTION regress_obe_evil.int8_lt(bigint, bigint) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM regress_obe_evil.escalate(); RETURN pg_catalog.int8lt($1, $2); END $$;
CREATE OPERATOR regress_obe_evil.< (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = regress_obe_evil.int8_lt);
RESET ROLE;
SELECT payments.outbox_grant('orders', 'regress_obe_shop', 'relay');
SET ROLE regress_obe_shop;
SET search_path = regress_obe_evil, pg_catalog;
SELECT payments.outbox_send('orders', 'k4', '{"n": 4}') > 0 AS sent;
CREATE TEMP TABLE evil_claim AS
    SELECT id, key, claim_token FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT count(*) AS claimed FROM evil_claim;
SELECT payments.outbox_ack(id, claim_token) FROM evil_claim WHERE key OPERATOR(pg_catalog.=) 'k4';
SELECT payments.outbox_nack(id, claim_token, 'e') FROM evil_claim WHERE key OPERATOR(pg_catalog.<>) 'k4';
SELECT payments.inbox_receive('shop', 'm-evil') AS received;
SELECT topic, pending, in_flight FROM payments.outbox_stats;
DROP TABLE evil_claim;
RESET search_path;
RESET ROLE;
SELECT rolsuper AS shop_is_superuser FROM pg_roles WHERE rolname = 'regress_obe_shop';
DROP SCHEMA regress_obe_evil CASCADE;

RESET ROLE;
DROP FUNCTION outbox_state();
DROP EXTENSION payments;
DROP ROLE regress_obe_shop, regress_obe_deploy, regress_obe_relay,
    regress_obe_other_relay, regress_obe_app, regress_obe_nobody,
    regress_obe_operator;
