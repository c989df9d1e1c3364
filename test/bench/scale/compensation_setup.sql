-- Compensations for the scale workload: the no-op handler and the plain-SQL
-- queue of test/bench/compensation (a copy of payments.compensations with
-- the same indexes, and its fillfactor), and the flag that tells the
-- baseline's drain loop that no more items come.
CREATE EXTENSION payments;
CREATE FUNCTION public.noop(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE TABLE public.baseline_queue (LIKE payments.compensations INCLUDING ALL)
    WITH (fillfactor = 50);
CREATE TABLE public.drain_stop (stop boolean);
