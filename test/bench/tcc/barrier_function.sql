\set g random(1, 9223372036854775807)
BEGIN;
SELECT barrier_try('gid-' || :g);
COMMIT;
BEGIN;
SELECT barrier_confirm('gid-' || :g);
COMMIT;
