\set k random(1, 9223372036854775807)
INSERT INTO baseline_queue (handler, payload, dedup_key, status, max_attempts, next_attempt_at, enqueued_by, handler_owner)
VALUES ('public.noop(jsonb)', jsonb_build_object('order', 'A-' || :k, 'amount', 4990), 'c' || :k, 'pending', 10,
        now(), current_user::regrole, 'postgres'::regrole)
    ON CONFLICT (handler, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING;
