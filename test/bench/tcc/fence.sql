\set g random(1, 9223372036854775807)
BEGIN;
SELECT payments.tcc_try('gid-' || :g, 'stock', 'reserve');
COMMIT;
BEGIN;
SELECT payments.tcc_confirm('gid-' || :g, 'stock');
COMMIT;
