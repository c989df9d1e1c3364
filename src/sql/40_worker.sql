-- The background worker: status and wake-up.  See src/worker.h for the
-- lifecycle; the worker itself needs shared_preload_libraries = 'payments'.
-- The update from 0.2.0 runs this file again (OR REPLACE), after dropping
-- worker_status(), whose columns changed.

CREATE OR REPLACE FUNCTION payments.worker_status(
        OUT pid integer, OUT state text, OUT started_at timestamptz,
        OUT last_run timestamptz, OUT items_done bigint,
        OUT items_failed bigint, OUT last_error text,
        OUT next_run timestamptz, OUT waiting_since timestamptz,
        OUT last_wait interval, OUT max_wait interval,
        OUT unserved_reason text)
    RETURNS record
    AS 'MODULE_PATHNAME', 'payments_worker_status'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.worker_status() IS
    'This database''s payments worker: pid, state, last and next run, how long due work waited, items done and failed, last error, why no worker can start';

CREATE OR REPLACE VIEW payments.worker_activity AS
    SELECT * FROM payments.worker_status();

COMMENT ON VIEW payments.worker_activity IS
    'This database''s payments worker, as payments.worker_status() reports it';

CREATE OR REPLACE FUNCTION payments.notify_worker()
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_notify_worker'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.notify_worker() IS
    'Wake this database''s payments worker when the current transaction commits';
