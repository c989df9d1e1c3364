\set g random(1, 9223372036854775807)
BEGIN;
INSERT INTO tcc_barrier (gid, branch_id, action, state)
VALUES ('gid-' || :g, 'stock', 'reserve', 'tried') ON CONFLICT DO NOTHING;
COMMIT;
BEGIN;
UPDATE tcc_barrier SET state = 'confirmed', updated_at = now()
 WHERE gid = 'gid-' || :g AND branch_id = 'stock' AND state = 'tried';
COMMIT;
