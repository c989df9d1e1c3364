--
-- The worker's SQL interface.  The pg_regress cluster preloads the library
-- with payments.worker_enabled = off (test/regress.conf), so no worker runs
-- here; the worker itself is tested by the TAP tests in test/t/.
--
CREATE EXTENSION payments;
CREATE ROLE regress_worker_app LOGIN;
GRANT payments_app TO regress_worker_app;

-- Preloaded but disabled: no worker for this database.
SELECT pid, state, started_at, last_run, items_done, items_failed, last_error
  FROM payments.worker_status();
SELECT state FROM payments.worker_activity;

-- notify_worker() only asks for a wake-up at commit: harmless with no
-- worker, and a no-op on rollback.
BEGIN;
SELECT payments.notify_worker();
COMMIT;
BEGIN;
SELECT payments.notify_worker();
ROLLBACK;

-- Applications may wake the worker, not read its status.
SET ROLE regress_worker_app;
SELECT payments.notify_worker();
SELECT state FROM payments.worker_status();
SELECT state FROM payments.worker_activity;
RESET ROLE;

-- The worker's settings, their defaults and who may change them.
SELECT name, setting, unit, context FROM pg_settings
 WHERE name IN ('payments.worker_enabled', 'payments.launcher_naptime',
                'payments.worker_naptime', 'payments.max_workers', 'payments.max_databases',
                'payments.worker_role')
 ORDER BY name;
SET payments.worker_naptime = '5s';
SET payments.max_workers = 2;
SET payments.worker_enabled = on;

-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP ROLE regress_worker_app;
