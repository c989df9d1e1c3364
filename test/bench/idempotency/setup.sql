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
INSERT INTO baseline_keys (scope, key, request_hash, state, response, response_code, expires_at)
SELECT 'replay', 'r' || i, sha256(convert_to(jsonb_build_object('order', i, 'amount', 4990)::text, 'UTF8')),
       'completed', jsonb_build_object('charge', i), 201, now() + interval '1 day'
  FROM generate_series(1, 100000) AS i;
VACUUM ANALYZE;
