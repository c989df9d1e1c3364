\set id random(1, 100000)
WITH u AS (
    UPDATE orders_plain SET status = CASE status WHEN 'pending' THEN 'active' ELSE 'pending' END
     WHERE id = :id RETURNING id, status)
INSERT INTO ceiling_history (tbl, col, row_key, from_state, to_state, changed_by)
SELECT 'orders_plain'::regclass, 'status', u.id::text,
       CASE u.status WHEN 'pending' THEN 'active' ELSE 'pending' END, u.status, current_user
  FROM u;
