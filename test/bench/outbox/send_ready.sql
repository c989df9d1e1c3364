\set k random(1, 1000)
\set amount random(100, 100000)
SELECT public.base_send('orders', 'k' || :k::integer,
    jsonb_build_object('event', 'order.paid', 'order', :k::integer, 'amount', :amount::integer, 'currency', 'EUR'));
