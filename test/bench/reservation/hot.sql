\set o random(1, 1000000000)
SELECT payments.reserve('o' || :o, 'hot', 1) AS id \gset
SELECT payments.confirm_reservation(:id);
