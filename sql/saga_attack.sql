--
-- Chains of the compensation queue (and so sagas) under attack: what must
-- hold when another session holds a lock on a link, and when a link is
-- settled by a REPEATABLE READ transaction whose snapshot predates an item
-- queued after it.  The worker is off: the worker's step is called here,
-- as payments.run_compensations, and a second session is a dblink
-- connection.
--
-- Each case states what must hold; on the code reviewed (0.3.0 as of
-- commit bd30b6e) each fails:
--   1. the worker's step waits for a lock an application holds on a
--      waiting link (it must not: the worker never waits on an
--      application's lock; here lock_timeout turns the wait into an error);
--   2-5. a link settled under REPEATABLE READ (cancel, cancel of a waiting
--      link, an external executor's completion, the worker's step) leaves
--      the item queued after it since its snapshot waiting for ever (it
--      must be released by the worker's next step at the latest);
--   6. after => 0 is taken for "after nothing".
--
CREATE EXTENSION payments;
CREATE EXTENSION dblink;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE ROLE regress_sa_alice LOGIN;
GRANT payments_app TO regress_sa_alice;
CREATE TABLE public.sa_log (n serial, tag text);
GRANT ALL ON public.sa_log, public.sa_log_n_seq TO regress_sa_alice;
CREATE FUNCTION public.sa_step(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.sa_log (tag) VALUES (p->>'tag') $$;
CREATE FUNCTION public.sa_gateway(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments.register_external_handler('public.sa_gateway(jsonb)');

-- Items that wait for an item that has already settled: they would never
-- run.  Must always be empty.
CREATE VIEW public.sa_stranded AS
    SELECT w.payload->>'tag' AS tag, p.payload->>'tag' AS after_tag, p.status AS after_status
      FROM payments.compensations w
      JOIN payments.compensations p ON p.id = w.after
     WHERE w.status = 'waiting' AND p.status IN ('succeeded', 'cancelled');

-- Run the queue until no item is due.
CREATE FUNCTION public.sa_drain() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..1000 LOOP
        IF payments.run_compensations(100) = 0 THEN
            EXIT WHEN NOT EXISTS (SELECT FROM payments.compensations
                                   WHERE status = 'pending' AND next_attempt_at <= clock_timestamp());
            PERFORM pg_sleep(0.002);
        END IF;
    END LOOP;
END $$;

-- Run a statement; a serialization failure (40001) is an acceptable answer
-- to a stale snapshot, and is swallowed.  Anything else is shown.
CREATE FUNCTION public.sa_try(stmt text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
EXCEPTION WHEN serialization_failure THEN
    NULL;
END $$;

-- The other session, as alice
SELECT dblink_connect('other', format('dbname=%s host=%s port=%s',
    current_database(), split_part(current_setting('unix_socket_directories'), ',', 1),
    current_setting('port')));
SELECT dblink_exec('other', 'SET ROLE regress_sa_alice');

--
-- 1. The worker's step must not wait for a lock an application holds.
--    Alice queues z1 after w1 in a transaction she leaves open (her
--    enqueue locks w1); x1, before w1, is due.  Running x1 must not wait
--    for alice's transaction to release w1: else any member of
--    payments_app stops the worker, and every role's compensations, for as
--    long as it likes (and an application that then waits for x1 deadlocks
--    with the worker).
--
SET ROLE regress_sa_alice;
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "x1"}') AS x1 \gset
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "w1"}', after => :x1) AS w1 \gset
RESET ROLE;
SELECT dblink_exec('other', 'BEGIN');
SELECT * FROM dblink('other', format($$SELECT payments.enqueue_compensation(
    'public.sa_step(jsonb)', '{"tag": "z1"}', after => %s) IS NOT NULL$$, :w1)) AS t(queued boolean);
SET lock_timeout = '1s';
SELECT payments.run_compensations() > 0 AS ran;
RESET lock_timeout;
SELECT dblink_exec('other', 'COMMIT');
SELECT public.sa_drain();
SELECT string_agg(tag, ' ' ORDER BY n) AS ran_in_order FROM public.sa_log;
SELECT * FROM public.sa_stranded WHERE tag IN ('z1', 'w1');
TRUNCATE public.sa_log;

--
-- 2. A cancel under REPEATABLE READ whose snapshot predates the item
--    queued after it must release that item (or fail with 40001).
--
SET ROLE regress_sa_alice;
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "x2"}',
                                     run_at => now() + interval '1 day') AS x2 \gset
RESET ROLE;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) >= 0 AS snapshot_taken FROM public.sa_log;
SELECT * FROM dblink('other', format($$SELECT payments.enqueue_compensation(
    'public.sa_step(jsonb)', '{"tag": "w2"}', after => %s) IS NOT NULL$$, :x2)) AS t(queued boolean);
SELECT public.sa_try(format('SELECT payments.cancel_compensation(%s)', :x2));
COMMIT;
SELECT public.sa_drain();
SELECT * FROM public.sa_stranded WHERE tag IN ('w2');

--
-- 3. The same for a cancelled waiting link, whose place passes to the
--    items queued after it: one queued since the snapshot too.
--
SET ROLE regress_sa_alice;
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "x3"}') AS x3 \gset
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "w3"}', after => :x3) AS w3 \gset
RESET ROLE;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) >= 0 AS snapshot_taken FROM public.sa_log;
SELECT * FROM dblink('other', format($$SELECT payments.enqueue_compensation(
    'public.sa_step(jsonb)', '{"tag": "z3"}', after => %s) IS NOT NULL$$, :w3)) AS t(queued boolean);
SELECT public.sa_try(format('SELECT payments.cancel_compensation(%s)', :w3));
COMMIT;
-- whatever happened to w3, x3 runs, and z3 after it
SELECT public.sa_drain();
SELECT * FROM public.sa_stranded WHERE tag IN ('z3');
SELECT string_agg(tag, ' ' ORDER BY n) AS ran_in_order FROM public.sa_log
 WHERE tag IN ('x3', 'z3');
TRUNCATE public.sa_log;

--
-- 4. An external executor's completion under REPEATABLE READ.
--
SET ROLE regress_sa_alice;
SELECT payments.enqueue_compensation('public.sa_gateway(jsonb)', '{"tag": "x4"}') AS x4 \gset
RESET ROLE;
SELECT claim_token AS token4 FROM payments.claim_compensations('public.sa_gateway(jsonb)', 1, '1 hour') \gset
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) >= 0 AS snapshot_taken FROM public.sa_log;
SELECT * FROM dblink('other', format($$SELECT payments.enqueue_compensation(
    'public.sa_step(jsonb)', '{"tag": "w4"}', after => %s) IS NOT NULL$$, :x4)) AS t(queued boolean);
SELECT public.sa_try(format('SELECT payments.complete_compensation(%s, %s)', :x4, :token4));
COMMIT;
SELECT public.sa_drain();
SELECT * FROM public.sa_stranded WHERE tag IN ('w4');

--
-- 5. The worker's step in a REPEATABLE READ transaction (the worker's
--    transactions are, if default_transaction_isolation says so).
--
SELECT public.sa_drain();
TRUNCATE public.sa_log;
SET ROLE regress_sa_alice;
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "x5"}') AS x5 \gset
RESET ROLE;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) >= 0 AS snapshot_taken FROM public.sa_log;
SELECT * FROM dblink('other', format($$SELECT payments.enqueue_compensation(
    'public.sa_step(jsonb)', '{"tag": "w5"}', after => %s) IS NOT NULL$$, :x5)) AS t(queued boolean);
SELECT public.sa_try('SELECT payments.run_compensations()');
COMMIT;
SELECT public.sa_drain();
SELECT * FROM public.sa_stranded WHERE tag IN ('w5');

--
-- 6. after => 0 names no item: refused like any id that does not exist,
--    and nothing queued.
--
CREATE TEMP TABLE sa_before AS SELECT count(*) AS n FROM payments.compensations;
\set VERBOSITY sqlstate
SELECT payments.enqueue_compensation('public.sa_step(jsonb)', '{"tag": "zero"}', after => 0);
\set VERBOSITY default
SELECT count(*) - (SELECT n FROM sa_before) AS queued_by_errors FROM payments.compensations;

SELECT dblink_disconnect('other');
DROP EXTENSION dblink;
DROP VIEW public.sa_stranded;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;

DROP TABLE public.sa_log;
DROP FUNCTION public.sa_step(jsonb), public.sa_gateway(jsonb), public.sa_drain(), public.sa_try(text);
DROP ROLE regress_sa_alice;
