-- Before each run of the baseline: its table, new.
SET client_min_messages = warning;
DROP TABLE IF EXISTS public.base_outbox;
-- The baseline: the outbox table a team writes.  Same delivery states and
-- lease as the extension's (a claim whose lease ran out is claimed again),
-- the same kind of partial index for the claim's scan in id order, no
-- per-key ordering.
CREATE TABLE public.base_outbox (
    id               bigserial   PRIMARY KEY,
    topic            text        NOT NULL,
    key              text        NOT NULL,
    payload          jsonb       NOT NULL,
    headers          jsonb,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    claim_token      bigint,
    lease_expires_at timestamptz,
    sent_at          timestamptz NOT NULL DEFAULT clock_timestamp(),
    claimed_at       timestamptz,
    acked_at         timestamptz
);
CREATE INDEX base_outbox_unacked_idx ON public.base_outbox (topic, id) WHERE acked_at IS NULL;
GRANT SELECT, INSERT ON public.base_outbox TO bench_outbox_sender;
GRANT USAGE ON SEQUENCE public.base_outbox_id_seq TO bench_outbox_sender;
GRANT SELECT, UPDATE ON public.base_outbox TO bench_outbox_relay;

