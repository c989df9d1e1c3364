--
-- Transactional outbox and inbox: a message exists exactly when the
-- transaction that sent it commits; a relay gets the messages of a key one
-- at a time, in send order, and the next one only once the earlier one is
-- acknowledged or skipped; a nack or a lapsed lease hands the message out
-- again; a dead message holds its key back until an operator retries or
-- skips it; the inbox answers true once per message id and role.
--
-- Roles: shop sends, relay relays, operator grants, retries and skips,
-- consumer and consumer2 receive.  Ids are never printed: they are kept
-- with \gset and compared.  Notifications are shown by the isolation spec
-- outbox_notify.
--
CREATE EXTENSION payments;
CREATE ROLE regress_ob_shop LOGIN IN ROLE payments_app;
CREATE ROLE regress_ob_relay LOGIN IN ROLE payments_app;
CREATE ROLE regress_ob_operator LOGIN IN ROLE payments_operator;
CREATE ROLE regress_ob_consumer LOGIN IN ROLE payments_app;
CREATE ROLE regress_ob_consumer2 LOGIN IN ROLE payments_app;

SET ROLE regress_ob_operator;
SELECT payments.outbox_grant('orders', 'regress_ob_shop', 'send');
SELECT payments.outbox_grant('orders', 'regress_ob_relay', 'relay');
-- granting twice is a no-op
SELECT payments.outbox_grant('orders', 'regress_ob_relay', 'relay');
SELECT topic, grantee, privilege, granted_by FROM payments.outbox_grants ORDER BY privilege;
RESET ROLE;

-- A message of a transaction that rolls back is never seen, not even by
-- its own id.
SET ROLE regress_ob_shop;
BEGIN;
SELECT payments.outbox_send('orders', 'order-1', '{"event": "created"}') AS rolled_back \gset
ROLLBACK;
RESET ROLE;
SELECT count(*) AS messages FROM payments.outbox;

-- Three events of order-1, one of order-2, each in its own transaction.
SET ROLE regress_ob_shop;
SELECT payments.outbox_send('orders', 'order-1', '{"event": "paid"}',
                            '{"trace": "t-1"}') AS paid \gset
SELECT payments.outbox_send('orders', 'order-2', '{"event": "paid"}') AS paid2 \gset
SELECT payments.outbox_send('orders', 'order-1', '{"event": "shipped"}') AS shipped \gset
SELECT payments.outbox_send('orders', 'order-1', '{"event": "delivered"}') AS delivered \gset
SELECT :paid < :paid2 AND :paid2 < :shipped AND :shipped < :delivered AS send_order;
RESET ROLE;
SELECT key, payload, headers, status, attempts, sent_by, message_id IS NOT NULL AS has_message_id
  FROM payments.outbox ORDER BY id;
SELECT count(DISTINCT message_id) AS distinct_message_ids FROM payments.outbox;

-- The first claim gets the first message of each key, in send order;
-- order-1's later messages are held back.
SET ROLE regress_ob_relay;
CREATE TEMP TABLE claim1 AS SELECT * FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT key, payload, status, attempts, claimed_by,
       lease_expires_at > now() AS leased
  FROM claim1 ORDER BY id;
SELECT array_agg(id ORDER BY id) = ARRAY[:paid, :paid2]::bigint[] AS first_of_each_key,
       count(DISTINCT claim_token) AS tokens
  FROM claim1;
SELECT claim_token AS token1 FROM claim1 LIMIT 1 \gset
-- nothing more while they are in flight
SELECT count(*) AS claimed FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT topic, pending, in_flight, dead, held_back, longest_held_key,
       oldest_age >= longest_held_for AS oldest_first
  FROM payments.outbox_stats;

-- Acknowledging order-1's "paid" makes "shipped" claimable, and only it.
SELECT payments.outbox_ack(:paid, :token1);
-- an ack sent again by the same claim (its answer was lost) is no error
SELECT payments.outbox_ack(:paid, :token1);
CREATE TEMP TABLE claim2 AS SELECT * FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT id = :shipped AS shipped_next, key, payload FROM claim2;
SELECT claim_token AS token2 FROM claim2 \gset

-- A nack schedules the message again with the queue's backoff; the later
-- message of its key still waits.
SET payments.backoff_base = '1ms';
SET payments.backoff_max = '1ms';
SELECT payments.outbox_nack(:shipped, :token2, 'broker unavailable');
RESET ROLE;
SELECT status, attempts, last_error, claim_token IS NULL AS no_claim
  FROM payments.outbox WHERE id = :shipped;
SET ROLE regress_ob_relay;
SELECT pg_sleep(0.01);
CREATE TEMP TABLE claim3 AS SELECT * FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT id = :shipped AS shipped_again, attempts, claim_token <> :token2 AS new_token FROM claim3;
SELECT claim_token AS token3 FROM claim3 \gset
-- the token of the failed claim acknowledges nothing
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:shipped, :token2);
SELECT replace(:'LAST_ERROR_MESSAGE', :'shipped', '<id>') AS error;
\set VERBOSITY default
SELECT payments.outbox_ack(:shipped, :token3);

-- A lease that runs out hands the message out again, counted as an
-- attempt; the lapsed claim's token then acknowledges nothing.
CREATE TEMP TABLE claim4 AS SELECT * FROM payments.outbox_claim('orders', 10, '10 milliseconds');
SELECT id = :delivered AS delivered_next FROM claim4;
SELECT claim_token AS token4 FROM claim4 \gset
SELECT pg_sleep(0.05);
CREATE TEMP TABLE claim5 AS SELECT * FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT id = :delivered AS same_message, attempts, last_error FROM claim5 ORDER BY id;
SELECT claim_token AS token5 FROM claim5 WHERE id = :delivered \gset
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:delivered, :token4);
SELECT replace(:'LAST_ERROR_MESSAGE', :'delivered', '<id>') AS error;
\set VERBOSITY default
SELECT payments.outbox_ack(:delivered, :token5);
-- order-2's "paid" is still held by the first claim
SELECT payments.outbox_ack(:paid2, :token1);
RESET ROLE;
SELECT key, payload->>'event' AS event, status, attempts, settled_at IS NOT NULL AS settled
  FROM payments.outbox ORDER BY id;
-- per key, acknowledged in send order
SELECT key, array_agg(payload->>'event' ORDER BY settled_at) AS acked_in_order
  FROM payments.outbox GROUP BY key ORDER BY key;

-- A dead message holds its key back.  order-3 gets two attempts
-- (payments.max_attempts when sent); its second message waits.
SET ROLE regress_ob_shop;
SET payments.max_attempts = 2;
SELECT payments.outbox_send('orders', 'order-3', '{"event": "paid"}') AS paid3 \gset
RESET payments.max_attempts;
SELECT payments.outbox_send('orders', 'order-3', '{"event": "refunded"}') AS refunded3 \gset
SET ROLE regress_ob_relay;
SELECT claim_token AS t FROM payments.outbox_claim('orders', 10, '1 minute') \gset
SELECT payments.outbox_nack(:paid3, :t, 'rejected');
SELECT pg_sleep(0.01);
SELECT claim_token AS t FROM payments.outbox_claim('orders', 10, '1 minute') \gset
SELECT payments.outbox_nack(:paid3, :t, 'rejected again');
SELECT pg_sleep(0.01);
SELECT count(*) AS claimed_while_dead FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT topic, pending, in_flight, dead, held_back, longest_held_key FROM payments.outbox_stats;
RESET ROLE;
SELECT status, attempts, last_error FROM payments.outbox WHERE id = :paid3;

-- The operator retries it: its attempts start again.
SET ROLE regress_ob_operator;
SELECT payments.outbox_retry(:paid3);
SELECT status, attempts FROM payments.outbox WHERE id = :paid3;
SET ROLE regress_ob_relay;
SELECT id = :paid3 AS retried_claimed, attempts FROM payments.outbox_claim('orders', 10, '10 milliseconds');
SELECT pg_sleep(0.05);
-- a claim that lapses at the last attempt makes the message dead
SELECT count(*) AS claimed FROM payments.outbox_claim('orders', 10, '10 milliseconds');
SELECT pg_sleep(0.05);
SELECT count(*) AS claimed FROM payments.outbox_claim('orders', 10, '1 minute');
RESET ROLE;
SELECT status, attempts, last_error FROM payments.outbox WHERE id = :paid3;

-- The operator skips it: the key goes on with "refunded".
SET ROLE regress_ob_operator;
SELECT payments.outbox_skip(:paid3);
SET ROLE regress_ob_relay;
SELECT id = :refunded3 AS refunded_next, claim_token AS t
  FROM payments.outbox_claim('orders', 10, '1 minute') \gset
\echo refunded next: :refunded_next
SELECT payments.outbox_ack(:refunded3, :t);
RESET ROLE;
SELECT payload->>'event' AS event, status, settled_at IS NOT NULL AS settled
  FROM payments.outbox WHERE key = 'order-3' ORDER BY id;
SELECT count(*) AS unsettled_topics FROM payments.outbox_stats;

-- A message goes out as sent: any key text, nested JSON, big numbers.
SET ROLE regress_ob_shop;
SELECT payments.outbox_send('orders', E'o''r%d\ner "x"', '{"n": 12345678901234567890, "a": [1, {"b": null}]}',
                            '{"content-type": "application/json"}') AS odd \gset
SET ROLE regress_ob_relay;
SELECT key, payload, headers, claim_token AS t FROM payments.outbox_claim('orders', 1, '1 minute') \gset
SELECT :'key' AS key, :'payload' AS payload, :'headers' AS headers;
SELECT payments.outbox_ack(:odd, :t);
RESET ROLE;

-- A relay acknowledges its batch in one call: the next message of each
-- key becomes claimable, as with one ack per message; the same batch sent
-- again is no error, and an empty one does nothing.
SET ROLE regress_ob_shop;
SELECT payments.outbox_send('orders', 'batch-a', '{"n": 1}') AS a1 \gset
SELECT payments.outbox_send('orders', 'batch-a', '{"n": 2}') AS a2 \gset
SELECT payments.outbox_send('orders', 'batch-b', '{"n": 1}') AS b1 \gset
SET ROLE regress_ob_relay;
CREATE TEMP TABLE claim_batch AS SELECT * FROM payments.outbox_claim('orders', 10, '1 minute');
SELECT array_agg(id ORDER BY id) = ARRAY[:a1, :b1]::bigint[] AS first_of_each_key FROM claim_batch;
SELECT claim_token AS tb FROM claim_batch LIMIT 1 \gset
SELECT payments.outbox_ack_batch(ARRAY[:a1, :b1], :tb);
SELECT payments.outbox_ack_batch(ARRAY[:b1, :a1, :a1], :tb);
SELECT payments.outbox_ack_batch('{}', :tb);
SELECT id = :a2 AS a2_next, claim_token AS tb FROM payments.outbox_claim('orders', 10, '1 minute') \gset
\echo a2 next: :a2_next
SELECT payments.outbox_ack_batch(ARRAY[:a2], :tb);
DROP TABLE claim_batch;
RESET ROLE;
SELECT key, payload->>'n' AS n, status FROM payments.outbox
 WHERE key LIKE 'batch-%' ORDER BY settled_at, id;

-- The inbox: true the first time a role receives an id, false after.
SET ROLE regress_ob_consumer;
SELECT payments.inbox_receive('shop', 'm-1') AS first;
SELECT payments.inbox_receive('shop', 'm-1') AS again;
-- another source is another id
SELECT payments.inbox_receive('warehouse', 'm-1') AS other_source;
-- a receive that rolls back leaves the id new
BEGIN;
SELECT payments.inbox_receive('shop', 'm-2') AS in_rolled_back;
ROLLBACK;
SELECT payments.inbox_receive('shop', 'm-2') AS after_rollback;
-- another role's inbox is its own: consumer2 neither sees nor spends
-- consumer's ids
SET ROLE regress_ob_consumer2;
SELECT payments.inbox_receive('shop', 'm-1') AS other_role;
SET ROLE regress_ob_consumer;
SELECT payments.inbox_receive('shop', 'm-1') AS still_received;
RESET ROLE;
SELECT receiver, source, message_id, expires_at > now() + interval '6 days' AS kept_a_week
  FROM payments.inbox ORDER BY receiver::text, source, message_id;
SET ROLE regress_ob_consumer;
SELECT payments.inbox_receive('shop', 'm-3', '1 hour') AS short_retain;
RESET ROLE;
SELECT expires_at < now() + interval '2 hours' AS kept_an_hour
  FROM payments.inbox WHERE message_id = 'm-3';

-- Retention: acknowledged and skipped messages past
-- payments.outbox_retention and inbox ids past their expiry are purged;
-- unsettled messages and live ids stay.
UPDATE payments.outbox SET settled_at = now() - interval '8 days' WHERE settled_at IS NOT NULL;
UPDATE payments.inbox SET expires_at = now() - interval '1 second' WHERE message_id = 'm-2';
SELECT capability, rows, active, failed, purge_backlog FROM payments.stats
 WHERE capability IN ('outbox', 'inbox') ORDER BY capability;
SELECT table_name, purged, retention FROM payments.purge()
 WHERE table_name IN ('outbox', 'inbox') ORDER BY table_name;
SELECT key, status FROM payments.outbox ORDER BY id;
SELECT source, message_id FROM payments.inbox ORDER BY receiver::text, source, message_id;

-- Revoking: the relay can no longer claim, acknowledge or fail.
SET ROLE regress_ob_shop;
SELECT payments.outbox_send('orders', 'order-9', '{"event": "paid"}') AS paid9 \gset
SET ROLE regress_ob_relay;
SELECT claim_token AS t FROM payments.outbox_claim('orders', 1, '1 minute') \gset
SET ROLE regress_ob_operator;
SELECT payments.outbox_revoke('orders', 'regress_ob_relay', 'relay');
-- revoking what is not granted is a no-op
SELECT payments.outbox_revoke('orders', 'regress_ob_relay', 'relay');
SET ROLE regress_ob_relay;
\set VERBOSITY sqlstate
SELECT payments.outbox_ack(:paid9, :t);
SELECT replace(:'LAST_ERROR_MESSAGE', :'paid9', '<id>') AS error;
\set VERBOSITY default
SELECT count(*) FROM payments.outbox_claim('orders', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS visible_topics FROM payments.outbox_stats;
DROP TABLE claim1, claim2, claim3, claim4, claim5;
RESET ROLE;

-- The worker's notification of the relays, run here by hand: one per
-- topic with a message a claim would take now, none for a topic whose
-- messages are all in flight or waiting for a retry.  The application
-- roles cannot run it.
SELECT payments.outbox_send('refunds', 'r-1', '{}') IS NOT NULL AS sent;
SELECT payments.outbox_send('payouts', 'p-1', '{}') IS NOT NULL AS sent;
SET payments.backoff_base = '1h';
SET payments.backoff_max = '1h';
SELECT count(payments.outbox_nack(id, claim_token, 'broker down')) AS failed
  FROM payments.outbox_claim('payouts', 1, '1 minute');
RESET payments.backoff_base;
RESET payments.backoff_max;
SELECT status, next_attempt_at > now() AS later FROM payments.outbox WHERE topic = 'payouts';
SELECT payments.notify_outbox_relays() AS topics_notified;
-- a retry that is due, and a lease that ran out, make their topics claimable
UPDATE payments.outbox SET next_attempt_at = now() - interval '1 second' WHERE topic = 'payouts';
UPDATE payments.outbox SET lease_expires_at = now() - interval '1 second' WHERE id = :paid9;
SELECT payments.notify_outbox_relays() AS topics_notified;
SELECT payments.notify_outbox_relays(2) AS topics_notified;
SELECT payments.notify_outbox_relays(0);
SET ROLE regress_ob_relay;
SELECT payments.notify_outbox_relays();
RESET ROLE;

DROP EXTENSION payments;
DROP ROLE regress_ob_shop, regress_ob_relay, regress_ob_operator,
    regress_ob_consumer, regress_ob_consumer2;
