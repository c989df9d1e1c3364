\set k random(1, 9223372036854775807)
SELECT payments.enqueue_compensation('public.noop(jsonb)', jsonb_build_object('order', 'A-' || :k, 'amount', 4990), 'c' || :k);
