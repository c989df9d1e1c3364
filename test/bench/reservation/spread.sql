\set o random(1, 1000000000)
\set s random(1, 1000)
SELECT payments.reserve('o' || :o, 'sku-' || :s, 1) AS id \gset
SELECT payments.confirm_reservation(:id);
