-- Our side and an open statement for :n payments (a multiple of 100), after
-- emptying what an earlier size left.  Every payment i has a class by
-- i % 100, 1% each (lines.sql writes the provider's side):
--   1  missing_external    an order with no line
--   2  amount_mismatch     the line's amount is one more
--   3  status_mismatch     our order 'pending', the provider's 'SUCCESS'
--   4  currency_mismatch   the line is in USD
--   5  duplicate_external  a second line of the same payment, 1 ms later
--   6  missing_internal    an extra line 'x' || i that matches no order
--   7  matched refund      'refunded' and 'REFUND', equal through the status map
--   other                  matched, 'paid' and 'SUCCESS'
-- So :n orders and :n + :n / 100 lines; each class of difference :n / 100.
TRUNCATE bench.orders, bench.differences, payments.statement_lines, payments.statements,
         payments.reconciliation_runs, payments.reconciliation_items,
         payments.reconciliation_pool, payments.reconciliation_heals;

INSERT INTO bench.orders (ref, amount, status, at, currency)
SELECT p.ref, p.amount,
       CASE i % 100 WHEN 3 THEN 'pending' WHEN 7 THEN 'refunded' ELSE 'paid' END,
       p.at, 'CNY'
  FROM generate_series(1, :n) AS i, bench.payment(i, :n) AS p;

SELECT payments.statement_begin('bench', tstzrange('2026-03-01 00:00:00+00', '2026-03-02 00:00:00+00'),
                                'bench ' || :n, expected_lines => :n + :n / 100);
