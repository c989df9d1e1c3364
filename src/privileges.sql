-- Privileges, applied last so they cover every object above.
--
-- The tables are reachable only through the extension's functions.
-- Applications get EXECUTE through one role, payments_app, so a DBA grants
-- access with a single statement:  GRANT payments_app TO my_app;
-- The role is cluster-wide: it is created by the first database that
-- installs the extension and shared by every other one.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'payments_app') THEN
        CREATE ROLE payments_app NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;

GRANT USAGE ON SCHEMA payments TO payments_app;
GRANT EXECUTE ON FUNCTION
    payments.idempotency_begin(text, text, jsonb, interval),
    payments.idempotency_checkpoint(text, text, text),
    payments.idempotency_complete(text, text, jsonb, integer),
    payments.idempotency_abandon(text, text),
    payments.stock_set(text, bigint, integer),
    payments.stock_adjust(text, bigint),
    payments.reserve(text, text, bigint, interval),
    payments.reserve(text, jsonb, interval),
    payments.confirm_reservation(bigint),
    payments.confirm_order(text),
    payments.release_reservation(bigint),
    payments.release_order(text),
    payments.notify_worker(),
    payments.define_state_machine(text, jsonb, text[]),
    payments.guard_state(regclass, name, text),
    payments.unguard_state(regclass, name),
    payments.state_guard(),
    payments.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz),
    payments.retry_compensation(bigint),
    payments.cancel_compensation(bigint),
    payments.register_external_handler(regprocedure),
    payments.claim_compensations(regprocedure, integer, interval),
    payments.complete_compensation(bigint),
    payments.fail_compensation(bigint, text)
    TO payments_app;
-- Applications may read stock levels, not the tables behind them.
GRANT SELECT ON payments.stock_levels TO payments_app;
GRANT SELECT ON payments.state_machines TO payments_app;
GRANT SELECT ON payments.compensation_stats TO payments_app;
