-- Before each run of the notexists baseline: the baseline's table, new, and
-- the index its claim probes for an earlier unacknowledged message of the
-- same key.
\ir fresh_base.sql
CREATE INDEX base_outbox_key_idx ON public.base_outbox (topic, key, id) WHERE acked_at IS NULL;
