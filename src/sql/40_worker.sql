-- The background worker: status and wake-up.  See src/worker.h for the
-- lifecycle; the worker itself needs shared_preload_libraries = 'payments'.

CREATE FUNCTION payments.worker_status(
        OUT pid integer, OUT state text, OUT started_at timestamptz,
        OUT last_run timestamptz, OUT items_done bigint,
        OUT items_failed bigint, OUT last_error text)
    RETURNS record
    AS 'MODULE_PATHNAME', 'payments_worker_status'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.worker_status() IS
    'This database''s payments worker: pid, state, last run, items done and failed, last error';

CREATE VIEW payments.worker_activity AS
    SELECT * FROM payments.worker_status();

COMMENT ON VIEW payments.worker_activity IS
    'This database''s payments worker, as payments.worker_status() reports it';

CREATE FUNCTION payments.notify_worker()
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_notify_worker'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.notify_worker() IS
    'Wake this database''s payments worker when the current transaction commits';
