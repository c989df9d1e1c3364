-- Transactional outbox and inbox: a message to another service exists
-- exactly when the business transaction that sent it commits; relays hand
-- the messages of a topic to a broker in order per key, and consumers drop
-- the redeliveries.  See src/outbox.c for the sender's and the relay's
-- calls, src/outbox_operator.c for grants, retries and skips, src/inbox.c
-- for the consumer's, and doc/outbox.md for why per-key order holds.
--
-- As with the other queues, the tables carry no CHECK constraints: the
-- functions validate every value before it reaches them.

CREATE TABLE @extschema@.outbox (
    id               bigserial   PRIMARY KEY,
    topic            text COLLATE "C" NOT NULL,
    key              text COLLATE "C" NOT NULL,
    message_id       uuid        NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
    payload          jsonb       NOT NULL,
    headers          jsonb,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL,
    next_attempt_at  timestamptz NOT NULL,
    lease_expires_at timestamptz,           -- while in flight: when the claim lapses
    claim_token      bigint,                -- the claim that holds it
    claimed_by       regrole,               -- the role of the last claim
    last_error       text,
    sent_by          regrole     NOT NULL,
    sent_at          timestamptz NOT NULL,
    settled_at       timestamptz,           -- set exactly when acked or skipped
    ready            boolean     NOT NULL   -- the first unsettled message of its key
) WITH (fillfactor = 70);   -- room for the claim's HOT update

COMMENT ON TABLE @extschema@.outbox IS
    'One row per message sent: its topic, key, payload and delivery state (pending, in_flight, dead, acked, skipped)';

-- Both indexes hold only unsettled messages (pending, in flight or dead)
-- and mention no column a claim or a nack changes, so those stay HOT
-- updates.  The first holds the first unsettled message of each key, the
-- only ones a claim may take, in send order; the second finds a key's
-- unsettled messages (at a send, and to make the next one ready).
CREATE INDEX outbox_ready_idx
    ON @extschema@.outbox (topic, id) WHERE ready AND settled_at IS NULL;
CREATE INDEX outbox_key_idx
    ON @extschema@.outbox (topic, key, id) WHERE settled_at IS NULL;

SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox', '');
SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_id_seq', '');

-- Keys whose first unsettled message may not be marked ready yet: an ack
-- (or a skip) that settled a key's first message while a transaction was
-- sending to that key leaves the key here, and the next claim of the
-- topic marks its next message ready once that transaction has ended
-- (src/outbox.c).
CREATE TABLE @extschema@.outbox_unready_keys (
    topic       text COLLATE "C" NOT NULL,
    key         text COLLATE "C" NOT NULL,
    PRIMARY KEY (topic, key)
);

COMMENT ON TABLE @extschema@.outbox_unready_keys IS
    'Keys of the outbox whose next message a claim must still mark ready';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_unready_keys', '');

-- Who may send to a topic, and who may relay it: granted per topic and
-- role by an operator (payments.outbox_grant).  A member of a granted role
-- has its grants.
CREATE TABLE @extschema@.outbox_grants (
    topic       text COLLATE "C" NOT NULL,
    grantee     regrole     NOT NULL,
    privilege   text        NOT NULL,   -- 'send' or 'relay'
    granted_by  regrole     NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (topic, privilege, grantee)
);

COMMENT ON TABLE @extschema@.outbox_grants IS
    'Which roles may send messages to a topic of the outbox, and which may relay them';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.outbox_grants', '');

-- The inbox: one row per message a consumer role has received, kept until
-- expires_at.  Deduplication is per receiving role, so that one role can
-- neither see nor spend another's message ids.
CREATE TABLE @extschema@.inbox (
    receiver     regrole     NOT NULL,
    source       text COLLATE "C" NOT NULL,
    message_id   text COLLATE "C" NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT pg_catalog.now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (receiver, source, message_id)
);

COMMENT ON TABLE @extschema@.inbox IS
    'One row per message id a consumer role received from a source, kept until it expires';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.inbox', '');

CREATE FUNCTION @extschema@.outbox_send(topic text, key text, payload jsonb,
                                         headers jsonb DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_outbox_send'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_send(text, text, jsonb, jsonb) IS
    'Send a message with the caller''s transaction: it exists exactly when that transaction commits';

CREATE FUNCTION @extschema@.outbox_claim(topic text, max_messages integer,
                                          lease interval)
    RETURNS SETOF @extschema@.outbox
    AS 'MODULE_PATHNAME', 'payments_outbox_claim'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_claim(text, integer, interval) IS
    'Claim up to max_messages due messages of a topic in send order, none while an earlier message of its key is unacknowledged';

CREATE FUNCTION @extschema@.outbox_ack(id bigint, claim_token bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_ack'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_ack(bigint, bigint) IS
    'Record that a claimed message was delivered; the next message of its key can then be claimed';

CREATE FUNCTION @extschema@.outbox_ack_batch(ids bigint[], claim_token bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_ack_batch'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_ack_batch(bigint[], bigint) IS
    'Record that the claimed messages ids were delivered, as outbox_ack on each, in one statement';

CREATE FUNCTION @extschema@.outbox_nack(id bigint, claim_token bigint, error text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_nack'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_nack(bigint, bigint, text) IS
    'Record that delivering a claimed message failed: it is retried with backoff, or dead after its last attempt';

CREATE FUNCTION @extschema@.outbox_retry(id bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_retry'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_retry(bigint) IS
    'Give a dead message its attempts again (operators)';

CREATE FUNCTION @extschema@.outbox_skip(id bigint)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_skip'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_skip(bigint) IS
    'Settle a dead or pending message without delivering it, so that the later messages of its key go on (operators)';

CREATE FUNCTION @extschema@.outbox_grant(topic text, grantee regrole, privilege text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_grant'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_grant(text, regrole, text) IS
    'Let a role send to a topic (privilege send) or relay it (privilege relay) (operators)';

CREATE FUNCTION @extschema@.outbox_revoke(topic text, grantee regrole, privilege text)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_outbox_revoke'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.outbox_revoke(text, regrole, text) IS
    'Take back a grant of payments.outbox_grant (operators)';

CREATE FUNCTION @extschema@.notify_outbox_relays(max_topics integer DEFAULT 1000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_notify_outbox_relays'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.notify_outbox_relays(integer) IS
    'The worker''s task: notify the channel payments_outbox of each topic that has a message to claim, when the transaction commits; returns how many topics';

CREATE FUNCTION @extschema@.inbox_receive(source text, message_id text,
                                           retain interval DEFAULT '7 days')
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_inbox_receive'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.inbox_receive(text, text, interval) IS
    'True the first time the caller''s role receives this message id from this source, false for a redelivery';

-- Per topic the caller may send to or relay (every topic for operators):
-- messages pending, in flight, dead, held back behind an earlier
-- unacknowledged message of their key, the age of the oldest unsettled
-- one, and the key held back longest, with how long its first held-back
-- message has waited.
CREATE VIEW @extschema@.outbox_stats WITH (security_barrier) AS
    WITH unsettled AS (
        SELECT o.topic, o.key, o.status, o.sent_at, o.ready
          FROM @extschema@.outbox o
         WHERE o.settled_at IS NULL
           AND (pg_catalog.pg_has_role('payments_operator', 'USAGE')
                OR EXISTS (SELECT FROM @extschema@.outbox_grants g
                            WHERE g.topic = o.topic
                              AND pg_catalog.pg_has_role(g.grantee, 'USAGE')))),
    held AS (
        SELECT DISTINCT ON (u.topic) u.topic, u.key, pg_catalog.now() - u.sent_at AS held_for
          FROM unsettled u
         WHERE NOT u.ready
         ORDER BY u.topic, u.sent_at)
    SELECT u.topic,
           count(*) FILTER (WHERE u.status = 'pending') AS pending,
           count(*) FILTER (WHERE u.status = 'in_flight') AS in_flight,
           count(*) FILTER (WHERE u.status = 'dead') AS dead,
           count(*) FILTER (WHERE NOT u.ready) AS held_back,
           pg_catalog.now() - min(u.sent_at) AS oldest_age,
           h.key AS longest_held_key,
           h.held_for AS longest_held_for
      FROM unsettled u LEFT JOIN held h ON h.topic = u.topic
     GROUP BY u.topic, h.key, h.held_for;

COMMENT ON VIEW @extschema@.outbox_stats IS
    'Outbox messages per topic: pending, in flight, dead, held back, the oldest age and the key held back longest';
