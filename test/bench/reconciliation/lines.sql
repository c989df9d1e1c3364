-- The provider's file for :n payments, in time order, as COPY text for
-- payments.statement_lines (see orders.sql for the classes).
COPY (
SELECT l.external_id, l.payment_ref, l.amount, l.currency, l.status, l.occurred_at
  FROM generate_series(1, :n) AS i,
       bench.payment(i, :n) AS p,
       LATERAL (VALUES
           (i % 100 <> 1, 'e' || i, p.ref, p.amount + (i % 100 = 2)::int,
            CASE i % 100 WHEN 4 THEN 'USD' ELSE 'CNY' END,
            CASE i % 100 WHEN 7 THEN 'REFUND' ELSE 'SUCCESS' END, p.at),
           (i % 100 = 5, 'e' || i || '-2', p.ref, p.amount, 'CNY', 'SUCCESS',
            p.at + interval '1 ms'),
           (i % 100 = 6, 'x' || i, 'x' || i, p.amount, 'CNY', 'SUCCESS', p.at))
           AS l(present, external_id, payment_ref, amount, currency, status, occurred_at)
 WHERE l.present
) TO STDOUT;
