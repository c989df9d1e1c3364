\set id random(1, 100000)
UPDATE orders_guard SET status = CASE status WHEN 'pending' THEN 'active' ELSE 'pending' END WHERE id = :id;
