-- The baseline: what a team writes by hand to classify statement :sid
-- against its orders of the period, with the classes, the order of the
-- tests and the status map of the reconciliation defined in setup.sql,
-- and the same rows written into a table of the same shape as
-- payments.reconciliation_items.  The first line of a payment (by time,
-- then external id) is compared with the order; the order side carries
-- n = 1 so that only that line joins it, and the join stays a hash join
-- on equalities, which a FULL JOIN needs.
INSERT INTO bench.differences
    (run_id, reconciliation_id, statement_id, class, reference, payment_ref, external_id,
     amount, currency, internal_amount, external_amount, internal_currency,
     external_currency, internal_status, external_status, internal_at, occurred_at)
SELECT 1, 1, :sid, c.class, coalesce(c.payment_ref, c.ref, c.external_id),
       coalesce(c.payment_ref, c.ref), c.external_id,
       coalesce(c.line_amount, c.order_amount), coalesce(c.line_currency, c.order_currency),
       c.order_amount, c.line_amount, c.order_currency, c.line_currency,
       c.order_status, c.line_status, c.at, c.occurred_at
  FROM (SELECT CASE
                   WHEN l.external_id IS NULL THEN 'missing_external'
                   WHEN l.payment_ref IS NULL THEN 'missing_internal'
                   WHEN l.n > 1 THEN 'duplicate_external'
                   WHEN o.ref IS NULL THEN 'missing_internal'
                   WHEN o.currency <> l.currency THEN 'currency_mismatch'
                   WHEN o.amount <> l.amount THEN 'amount_mismatch'
                   WHEN CASE o.status WHEN 'paid' THEN 'succeeded' ELSE o.status END
                        <> CASE l.status WHEN 'SUCCESS' THEN 'succeeded'
                                         WHEN 'NOTPAY' THEN 'pending'
                                         WHEN 'REFUND' THEN 'refunded'
                                         ELSE l.status END THEN 'status_mismatch'
                   ELSE 'matched'
               END AS class,
               l.external_id, l.payment_ref, l.amount AS line_amount,
               l.currency AS line_currency, l.status AS line_status, l.occurred_at,
               o.ref, o.amount AS order_amount, o.currency AS order_currency,
               o.status AS order_status, o.at
          FROM (SELECT s.external_id, s.payment_ref, s.amount, s.currency, s.status,
                       s.occurred_at,
                       row_number() OVER (PARTITION BY s.payment_ref
                                          ORDER BY s.occurred_at, s.external_id) AS n
                  FROM payments.statement_lines s
                 WHERE s.statement_id = :sid) l
          FULL JOIN (SELECT r.ref, r.amount, r.currency, r.status, r.at, 1 AS n
                       FROM bench.orders r
                      WHERE r.at >= '2026-03-01 00:00:00+00' AND r.at < '2026-03-02 00:00:00+00') o
            ON o.ref = l.payment_ref AND o.n = l.n) c
 WHERE c.class <> 'matched';
