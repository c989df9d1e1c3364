-- Before each run of the ready baseline: the extension's way of keeping
-- per-key order, written in plain SQL and PL/pgSQL.  Each key's first
-- unacknowledged message is marked ready, the claim takes only ready
-- messages, and the ack marks the next message of each key it settled.
-- A key's senders and its acks serialize on an advisory lock of the key,
-- held to their commit, so that neither decides on a snapshot that misses
-- the other.
\ir fresh_base.sql
ALTER TABLE public.base_outbox ADD COLUMN ready boolean NOT NULL DEFAULT false;
DROP INDEX public.base_outbox_unacked_idx;
CREATE INDEX base_outbox_ready_idx ON public.base_outbox (topic, id) WHERE ready AND acked_at IS NULL;
CREATE INDEX base_outbox_key_idx ON public.base_outbox (topic, key, id) WHERE acked_at IS NULL;

-- The send: the key's lock first, then, on a snapshot taken after it (the
-- INSERT is a statement of its own), ready when the key has no
-- unacknowledged message.
CREATE OR REPLACE FUNCTION public.base_send(p_topic text, p_key text, p_payload jsonb)
    RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    new_id bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext(p_topic), hashtext(p_key));
    INSERT INTO public.base_outbox (topic, key, payload, ready)
    VALUES (p_topic, p_key, p_payload,
            NOT EXISTS (SELECT FROM public.base_outbox e
                         WHERE e.topic = p_topic AND e.key = p_key AND e.acked_at IS NULL))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;
GRANT EXECUTE ON FUNCTION public.base_send(text, text, jsonb) TO bench_outbox_sender;

-- The ack of a claimed batch: the keys' locks in one order (two acks of
-- overlapping keys cannot deadlock), the batch marked acknowledged, then
-- the next message of each key it settled marked ready.  Returns how many
-- of the ids it acknowledged (the others' lease ran out and another relay
-- took them).
CREATE OR REPLACE FUNCTION public.base_ack(p_ids bigint[], p_token bigint)
    RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    topics text[];
    keys   text[];
BEGIN
    PERFORM pg_advisory_xact_lock(l.topic_hash, l.key_hash)
       FROM (SELECT DISTINCT hashtext(topic) AS topic_hash, hashtext(key) AS key_hash
               FROM public.base_outbox WHERE id = ANY (p_ids)
              ORDER BY 1, 2) l;
    WITH acked AS (
        UPDATE public.base_outbox
           SET status = 'acked', acked_at = clock_timestamp(), lease_expires_at = NULL
         WHERE id = ANY (p_ids) AND claim_token = p_token AND status = 'in_flight'
        RETURNING topic, key)
    SELECT array_agg(topic), array_agg(key) INTO topics, keys FROM acked;
    UPDATE public.base_outbox o
       SET ready = true
     WHERE o.id IN (SELECT (SELECT min(e.id) FROM public.base_outbox e
                             WHERE e.topic = s.topic AND e.key = s.key AND e.acked_at IS NULL)
                      FROM unnest(topics, keys) AS s(topic, key))
       AND NOT o.ready;
    RETURN coalesce(cardinality(keys), 0);
END
$$;
GRANT EXECUTE ON FUNCTION public.base_ack(bigint[], bigint) TO bench_outbox_relay;
