-- Privileges, applied last so they cover every object above.
--
-- The tables are reachable only through the extension's functions.
-- Applications get EXECUTE through one role, payments_app, so a DBA grants
-- access with a single statement:  GRANT payments_app TO my_app;
-- Members of payments_operator may read the compensation queue and cancel,
-- retry, complete or fail any role's items (an application role only its
-- own): GRANT payments_operator TO on_call;
-- The roles are cluster-wide: each is created by the first database that
-- installs the extension and shared by every other one.  Neither can log
-- in; neither is granted to anyone.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'payments_app') THEN
        CREATE ROLE payments_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'payments_operator') THEN
        CREATE ROLE payments_operator NOLOGIN;
    END IF;
END
$$;

REVOKE ALL ON ALL TABLES IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;

-- Default privileges (ALTER DEFAULT PRIVILEGES) may have granted rights on
-- the objects above to other roles: only the owner, payments_app and
-- payments_operator keep any.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT a.grantee::pg_catalog.regrole AS grantee
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.relnamespace = '@extschema@'::pg_catalog.regnamespace
           AND a.grantee <> 0 AND a.grantee <> c.relowner
        UNION
        SELECT a.grantee::pg_catalog.regrole
          FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
         WHERE p.pronamespace = '@extschema@'::pg_catalog.regnamespace
           AND a.grantee <> 0 AND a.grantee <> p.proowner
    LOOP
        CONTINUE WHEN r.grantee::text IN ('payments_app', 'payments_operator');
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA @extschema@ FROM %s', r.grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA @extschema@ FROM %s', r.grantee);
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA @extschema@ FROM %s', r.grantee);
    END LOOP;
END
$$;

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
    payments.confirm_reservation(bigint, text),
    payments.confirm_order(text),
    payments.release_reservation(bigint),
    payments.release_reservation(bigint, text),
    payments.release_order(text),
    payments.notify_worker(),
    payments.define_state_machine(text, jsonb, text[]),
    payments.guard_state(regclass, name, text),
    payments.unguard_state(regclass, name),
    payments.state_guard(),
    payments.enqueue_compensation(regprocedure, jsonb, text, integer, timestamptz, bigint),
    payments.retry_compensation(bigint),
    payments.cancel_compensation(bigint),
    payments.register_external_handler(regprocedure),
    payments.unregister_external_handler(regprocedure),
    payments.claim_compensations(regprocedure, integer, interval),
    payments.complete_compensation(bigint, bigint),
    payments.fail_compensation(bigint, bigint, text),
    payments.callback_key_add(text, text, text, text, timestamptz, timestamptz),
    payments.callback_key_revoke(bigint),
    payments.verify_callback(text, jsonb, bytea, timestamptz),
    payments.verify_callback(text, jsonb, text, timestamptz),
    payments.receive_callback(text, text, text, text, jsonb, jsonb, bytea),
    payments.callback_route(text, text, regclass, name, name, text, regprocedure),
    payments.callback_unroute(text, text),
    payments.expect_callback(text, text, interval, regprocedure),
    payments.record_query_result(text, text, text, jsonb),
    payments.callback_signature_failures(text),
    payments.define_reconciliation(text, regclass, name, name, name, name, name, jsonb, interval, numeric),
    payments.reconciliation_policy(text, text, regprocedure),
    payments.statement_begin(text, tstzrange, text, bigint, numeric),
    payments.statement_add(bigint, jsonb),
    payments.statement_close(bigint),
    payments.reconcile(text, bigint),
    payments.accept_difference(bigint, text),
    payments.statement_for_copy(),
    payments.tcc_try(text, text, text),
    payments.tcc_confirm(text, text),
    payments.tcc_cancel(text, text),
    payments.saga_begin(text, interval),
    payments.saga_step(text, text, regprocedure, jsonb),
    payments.saga_complete(text),
    payments.saga_abort(text, text),
    payments.define_check(text, text, regprocedure, interval),
    payments.drop_check(text),
    payments.run_check(jsonb),
    payments.compensation_status(bigint),
    payments.outbox_send(text, text, jsonb, jsonb),
    payments.outbox_claim(text, integer, interval),
    payments.outbox_ack(bigint, bigint),
    payments.outbox_ack_batch(bigint[], bigint),
    payments.outbox_nack(bigint, bigint, text),
    payments.inbox_receive(text, text, interval)
    TO payments_app;
-- Statement lines are loaded by COPY: INSERT, and nothing else, on the
-- table; its trigger checks that each line goes to an open statement of
-- the inserting role (src/provider_statement.c).
GRANT INSERT ON payments.statement_lines TO payments_app;
-- Applications may read stock levels, not the tables behind them.
GRANT SELECT ON payments.stock_levels TO payments_app;
GRANT SELECT ON payments.state_machines TO payments_app;
GRANT SELECT ON payments.compensation_stats TO payments_app;
GRANT SELECT ON payments.callback_stats, payments.callback_expectations TO payments_app;
GRANT SELECT ON payments.reconciliation_summary, payments.reconciliation_open TO payments_app;
GRANT SELECT ON payments.tcc_branches, payments.sagas, payments.check_status TO payments_app;
GRANT SELECT ON payments.outbox_stats TO payments_app;

-- The operator: the compensation queue, read and steered (the functions
-- check who may change which item, see src/compensation.c).
GRANT USAGE ON SCHEMA payments TO payments_operator;
GRANT EXECUTE ON FUNCTION
    payments.retry_compensation(bigint),
    payments.cancel_compensation(bigint),
    payments.complete_compensation(bigint, bigint),
    payments.fail_compensation(bigint, bigint, text),
    payments.compensation_status(bigint)
    TO payments_operator;
GRANT SELECT ON payments.compensations, payments.compensation_attempts,
    payments.external_handlers, payments.compensation_stats TO payments_operator;
-- The operator also decides which roles share an idempotency scope: an
-- application that could would lock another out of its own scope.
GRANT EXECUTE ON FUNCTION
    payments.outbox_grant(text, regrole, text),
    payments.outbox_revoke(text, regrole, text),
    payments.outbox_retry(bigint),
    payments.outbox_skip(bigint)
    TO payments_operator;
GRANT SELECT ON payments.outbox, payments.outbox_grants, payments.outbox_stats
    TO payments_operator;
GRANT EXECUTE ON FUNCTION
    payments.restrict_scope(text, regrole[]),
    payments.unrestrict_scope(text)
    TO payments_operator;
GRANT SELECT ON payments.idempotency_scopes TO payments_operator;
-- And reads the callbacks of every provider, and the keyring without its
-- secrets.
GRANT EXECUTE ON FUNCTION payments.callback_signature_failures(text) TO payments_operator;
GRANT SELECT ON payments.callback_providers, payments.callbacks,
    payments.callback_routes, payments.expected_callbacks,
    payments.callback_stats, payments.callback_expectations TO payments_operator;
GRANT SELECT (id, provider, scheme, key_id, valid_from, valid_until, revoked_at,
              added_by, added_at)
    ON payments.callback_keys TO payments_operator;
-- And reads every reconciliation, statement and difference.
GRANT SELECT ON payments.reconciliations, payments.reconciliation_policies,
    payments.statements, payments.statement_lines, payments.reconciliation_runs,
    payments.reconciliation_items, payments.reconciliation_pool,
    payments.reconciliation_heals, payments.reconciliation_summary,
    payments.reconciliation_open TO payments_operator;
-- And every role's TCC branches.
GRANT SELECT ON payments.tcc_fence, payments.tcc_branches TO payments_operator;
GRANT SELECT ON payments.saga_state, payments.saga_steps, payments.sagas TO payments_operator;
GRANT SELECT ON payments.fault_points TO payments_operator;
GRANT EXECUTE ON FUNCTION payments.fault_point_states() TO payments_operator;
GRANT EXECUTE ON FUNCTION payments.check() TO payments_operator;
GRANT SELECT ON payments.checks, payments.check_results, payments.check_status TO payments_operator;
-- What an operator graphs (postgres_exporter connects as a member).
GRANT SELECT ON payments.stats TO payments_operator;
GRANT EXECUTE ON FUNCTION payments.worker_status(), payments.retention_of(text)
    TO payments_operator;
