--
-- Chains in the compensation queue: an item queued after another waits,
-- never due, until that one succeeds (run by the worker's step or
-- completed by an external executor) or is cancelled; a cancelled waiting
-- link passes its place to the next; the errors.  The worker is off: this
-- file runs the queue with payments.run_compensations.
--
CREATE EXTENSION payments;
\set SHOW_CONTEXT never
SET timezone = 'UTC';
CREATE ROLE regress_chain_alice LOGIN;
CREATE ROLE regress_chain_bob LOGIN;
GRANT payments_app TO regress_chain_alice, regress_chain_bob;
CREATE TABLE public.chain_log (n serial, tag text);
GRANT ALL ON public.chain_log, public.chain_log_n_seq TO regress_chain_alice, regress_chain_bob;
CREATE FUNCTION public.chain_step(p jsonb) RETURNS void LANGUAGE sql
    AS $$ INSERT INTO public.chain_log (tag) VALUES (p->>'tag') $$;
CREATE FUNCTION public.chain_gateway(p jsonb) RETURNS void LANGUAGE sql AS '';
-- The queue as a chain sees it: tag, status, and the tag it comes after
CREATE VIEW public.chain_items AS
    SELECT c.payload->>'tag' AS tag, c.status, p.payload->>'tag' AS after_tag,
           c.status = 'waiting' AND c.next_attempt_at = 'infinity' AS never_due
      FROM payments.compensations c
      LEFT JOIN payments.compensations p ON p.id = c.after;
GRANT SELECT ON public.chain_items TO regress_chain_alice;

SET ROLE regress_chain_alice;

-- a, then b after a, then c after b: only a is due
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "a"}') AS a \gset
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "b"}', after => :a) AS b \gset
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "c"}', after => :b) AS c \gset
RESET ROLE;
SELECT * FROM public.chain_items ORDER BY tag;
SELECT pending, waiting FROM payments.compensation_stats;
-- each call runs the one link that is due and releases the next
SELECT payments.run_compensations() AS ran;
SELECT * FROM public.chain_items ORDER BY tag;
SELECT payments.run_compensations() AS ran;
SELECT payments.run_compensations() AS ran;
SELECT payments.run_compensations() AS ran;
SELECT string_agg(tag, ' ' ORDER BY n) AS ran_in_order FROM public.chain_log;

-- After an item that already succeeded, an item is due at once
SET ROLE regress_chain_alice;
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "d"}', after => :c) AS d \gset
SELECT tag, status FROM public.chain_items WHERE tag = 'd';

-- A cancelled waiting link passes its place: f waits for what e waited for
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "e"}', run_at => now() + interval '1 hour') AS e \gset
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "f"}', after => :e) AS f \gset
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "g"}', after => :f) AS g \gset
SELECT payments.cancel_compensation(:f);
SELECT payments.cancel_compensation(:f);
SELECT tag, status, after_tag, never_due FROM public.chain_items WHERE tag IN ('e', 'f', 'g') ORDER BY tag;
-- a cancelled link whose turn had come releases the next
SELECT payments.cancel_compensation(:e);
SELECT tag, status, after_tag, never_due FROM public.chain_items WHERE tag IN ('e', 'f', 'g') ORDER BY tag;

-- An external executor's completion releases the next link
RESET ROLE;
SELECT payments.register_external_handler('public.chain_gateway(jsonb)');
SET ROLE regress_chain_alice;
SELECT payments.enqueue_compensation('public.chain_gateway(jsonb)', '{"tag": "h"}') AS h \gset
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "i"}', after => :h) AS i \gset
SELECT claim_token AS token FROM payments.claim_compensations('public.chain_gateway(jsonb)', 1, '1 hour') \gset
SELECT tag, status FROM public.chain_items WHERE tag IN ('h', 'i') ORDER BY tag;
SELECT payments.complete_compensation(:h, :token);
SELECT tag, status FROM public.chain_items WHERE tag IN ('h', 'i') ORDER BY tag;

-- After a cancelled item whose turn had come, an item is due at once
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "j"}', after => :e) AS j \gset
SELECT tag, status FROM public.chain_items WHERE tag = 'j';

-- Errors, and nothing queued by them
-- (the messages name ids, so only their SQLSTATEs are shown)
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "k"}', run_at => now() + interval '1 hour') AS k \gset
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{"tag": "l"}', after => :k) AS l \gset
CREATE TEMP TABLE before AS SELECT count(*) AS n FROM public.chain_items;
\set VERBOSITY sqlstate
-- a waiting item cannot be retried
SELECT payments.retry_compensation(:l);
-- an item that does not exist
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{}', after => -1);
-- a later run_at cannot delay an item that comes after another
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{}', run_at => now() + interval '1 day', after => :k);
-- another role's item: bob cannot chain after it, nor learn that it exists
SET ROLE regress_chain_bob;
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{}', after => :k);
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{}', after => -1);
SET ROLE regress_chain_alice;
\set VERBOSITY default
SELECT count(*) - (SELECT n FROM before) AS queued_by_errors FROM public.chain_items;
DROP TABLE before;
RESET ROLE;
-- an operator sees an unknown id as such
SELECT payments.enqueue_compensation('public.chain_step(jsonb)', '{}', after => -1);

DROP VIEW public.chain_items;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP TABLE public.chain_log;
DROP FUNCTION public.chain_step(jsonb), public.chain_gateway(jsonb);
DROP ROLE regress_chain_alice, regress_chain_bob;
