-- Before each run of the extension's side: a fresh install, as a new
-- deployment has (no rows, no statistics), and the workload's grants.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS payments CASCADE;
CREATE EXTENSION payments;
GRANT payments_app TO bench_outbox_sender, bench_outbox_relay;
SELECT payments.outbox_grant('orders', 'bench_outbox_sender', 'send');
SELECT payments.outbox_grant('orders', 'bench_outbox_relay', 'relay');

