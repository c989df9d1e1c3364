\set k random(1, 1000)
\set amount random(100, 100000)
-- The key's lock, held to the commit, before the id is drawn: a key's ids
-- are then in commit order, so a claim that sees a message sees every
-- earlier one of its key.
WITH key_lock AS (SELECT pg_advisory_xact_lock(hashtext('orders'), hashtext('k' || :k::integer)))
INSERT INTO public.base_outbox (topic, key, payload)
SELECT 'orders', 'k' || :k::integer,
    jsonb_build_object('event', 'order.paid', 'order', :k::integer, 'amount', :amount::integer, 'currency', 'EUR')
  FROM key_lock;
