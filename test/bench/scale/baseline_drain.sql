-- The baseline's drain, as in test/bench/compensation: batches of 1,000 due
-- items marked succeeded, one transaction each, FOR UPDATE SKIP LOCKED; an
-- empty batch sleeps 10 ms (the worker is woken by each enqueue's commit
-- instead) and ends the loop once drain_stop says pgbench is done.
DO $$
DECLARE
    n integer;
BEGIN
    LOOP
        UPDATE public.baseline_queue
           SET status = 'succeeded', attempts = attempts + 1,
               finished_at = clock_timestamp(), updated_at = clock_timestamp()
         WHERE id = ANY (ARRAY(
               SELECT id FROM public.baseline_queue
                WHERE finished_at IS NULL AND status = 'pending'
                  AND next_attempt_at <= clock_timestamp()
                ORDER BY next_attempt_at LIMIT 1000
                  FOR UPDATE SKIP LOCKED));
        GET DIAGNOSTICS n = ROW_COUNT;
        COMMIT;
        IF n = 0 THEN
            EXIT WHEN EXISTS (SELECT FROM public.drain_stop);
            PERFORM pg_sleep(0.01);
        END IF;
    END LOOP;
END
$$;
