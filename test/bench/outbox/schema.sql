-- Set-up of the outbox workload (run.sh runs it once in a fresh database).
SET client_min_messages = warning;
-- The senders and the relays are ordinary roles, as in an application: the
-- extension's side checks their per-topic grants at every call, the
-- baseline's their table privileges.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_outbox_sender') THEN
        CREATE ROLE bench_outbox_sender LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'bench_outbox_relay') THEN
        CREATE ROLE bench_outbox_relay LOGIN;
    END IF;
END
$$;
-- The bench's own bookkeeping.  The driver sets stop once every message of
-- a run is acknowledged; an idle relay reads it.
CREATE TABLE public.bench_ctl (stop boolean NOT NULL);
INSERT INTO public.bench_ctl VALUES (false);
GRANT SELECT ON public.bench_ctl TO bench_outbox_relay;

-- What each relay delivered, in its order: written by the relay to a file
-- during the run and loaded here after it.
CREATE TABLE public.relay_log (
    run          integer     NOT NULL,
    relay        integer     NOT NULL,
    id           bigint      NOT NULL,
    key          text        NOT NULL,
    claimed_at   timestamptz NOT NULL,   -- the claim statement's clock_timestamp() for the row
    delivered_ns bigint      NOT NULL    -- the relay's clock (CLOCK_REALTIME, ns) when it delivered it
);

-- One row per run of either side.
CREATE TABLE public.runs (
    run          integer PRIMARY KEY,
    side         text    NOT NULL,       -- ext or base
    variant      text    NOT NULL,
    round        integer NOT NULL,
    cut_off      boolean NOT NULL,       -- stopped at its time limit before every message was acknowledged
    messages     bigint,                 -- rows in the table
    acked        bigint,                 -- rows acknowledged
    delivered    bigint,                 -- relay log entries
    redelivered  bigint,                 -- log entries beyond one per message
    undelivered  bigint,                 -- messages not acknowledged, or acknowledged without a log entry
    reclaimed    bigint,                 -- messages claimed more than once (attempts > 1)
    order_violations bigint,             -- adjacent pairs of a key delivered against id order
    keys_out_of_order bigint,            -- keys with at least one such pair
    settle_violations bigint,            -- the same, by the table's own ack times
    elapsed      float8,                 -- seconds from the first send to the last ack (or to the cut-off)
    p50_ms       float8,                 -- send to claim
    p99_ms       float8,
    max_ms       float8,
    claims       bigint,                 -- claim calls of all relays
    empty_claims bigint,
    conflicts    bigint                  -- acks refused because the lease ran out and another relay took the message
);
