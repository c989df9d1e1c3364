-- Idempotency keys against the plain-SQL equivalents an application would
-- write itself.
CREATE EXTENSION payments;

-- Baseline for begin + complete: claim the key with INSERT ... ON CONFLICT
-- DO NOTHING, then store the answer with an UPDATE of the same row.
CREATE TABLE baseline_keys (
    scope text COLLATE "C" NOT NULL,
    key text COLLATE "C" NOT NULL,
    request_hash bytea NOT NULL,
    state text NOT NULL DEFAULT 'started',
    response jsonb,
    response_code integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (scope, key)
) WITH (fillfactor = 80);
CREATE INDEX ON baseline_keys (expires_at);

-- 100,000 completed keys for the replay path, in both tables.  Each key
-- begun holds a lock until its transaction ends, so commit in batches.
DO $$
BEGIN
    FOR b IN 0..99 LOOP
        PERFORM payments.idempotency_begin('replay', 'r' || i, jsonb_build_object('order', i, 'amount', 4990)),
                payments.idempotency_complete('replay', 'r' || i, jsonb_build_object('charge', i), 201)
           FROM generate_series(b * 1000 + 1, b * 1000 + 1000) AS i;
        COMMIT;
    END LOOP;
END
$$;
-- The baseline's keys go through the same history as the extension's: each
-- one inserted as started and then updated to completed, as
-- baseline_upsert.sql does, in batches of 1,000 a transaction.  Inserted as
-- completed in one go they would fill each page with twice as many rows as
-- the begin -> complete history leaves (a HOT update, then the pruned old
-- version's space), and a replay would read a table half the size of the
-- extension's.
DO $$
BEGIN
    FOR b IN 0..99 LOOP
        FOR i IN b * 1000 + 1 .. b * 1000 + 1000 LOOP
            INSERT INTO baseline_keys (scope, key, request_hash, expires_at)
            VALUES ('replay', 'r' || i,
                    sha256(convert_to(jsonb_build_object('order', i, 'amount', 4990)::text, 'UTF8')),
                    now() + interval '1 day')
            ON CONFLICT DO NOTHING;
            UPDATE baseline_keys SET state = 'completed', response = jsonb_build_object('charge', i),
                   response_code = 201
             WHERE scope = 'replay' AND key = 'r' || i;
        END LOOP;
        COMMIT;
    END LOOP;
END
$$;
VACUUM ANALYZE;
