--
-- The extension's schema is the one pg_extension records.  A schema named
-- payments that someone else could own or fill is refused, and the
-- extension never finds its own tables through the schema's name.
--
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS payments CASCADE;
RESET client_min_messages;
CREATE ROLE regress_schema_owner LOGIN;
CREATE ROLE regress_schema_creator LOGIN;

-- A pre-existing schema owned by a role that is not a superuser is
-- refused, and the extension is not created.
CREATE SCHEMA payments AUTHORIZATION regress_schema_owner;
CREATE EXTENSION payments;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'payments';
DROP SCHEMA payments;

-- So is one a superuser owns but another role may create objects in.
CREATE SCHEMA payments;
GRANT CREATE ON SCHEMA payments TO regress_schema_creator;
CREATE EXTENSION payments;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'payments';
REVOKE CREATE ON SCHEMA payments FROM regress_schema_creator;

-- Without that grant, a superuser's empty schema is accepted.
CREATE EXTENSION payments;
SELECT n.nspname, r.rolsuper
  FROM pg_extension e
  JOIN pg_namespace n ON n.oid = e.extnamespace
  JOIN pg_roles r ON r.oid = n.nspowner
 WHERE e.extname = 'payments';
DROP EXTENSION payments;
DROP SCHEMA payments;

-- After a superuser renames the extension's schema, a database owner's new
-- schema of the old name, with look-alike tables, is never written to.
CREATE EXTENSION payments;
ALTER SCHEMA payments RENAME TO payments_real;
CREATE SCHEMA payments AUTHORIZATION regress_schema_owner;
CREATE TABLE payments.compensations (LIKE payments_real.compensations);
CREATE TABLE payments.external_handlers (LIKE payments_real.external_handlers);
CREATE TABLE payments.idempotency_keys (LIKE payments_real.idempotency_keys);
CREATE TABLE payments.stock (LIKE payments_real.stock);
CREATE TABLE payments.stock_slots (LIKE payments_real.stock_slots);
CREATE TABLE payments.reservations (LIKE payments_real.reservations);
CREATE TABLE payments.state_machine_definitions
    (LIKE payments_real.state_machine_definitions);
DO $$
DECLARE
    t regclass;
BEGIN
    FOR t IN SELECT oid FROM pg_class WHERE relnamespace = 'payments'::regnamespace
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO regress_schema_owner', t);
    END LOOP;
END
$$;

CREATE FUNCTION public.regress_noop(p jsonb) RETURNS void LANGUAGE sql AS '';
SELECT payments_real.enqueue_compensation('public.regress_noop(jsonb)', '{}') > 0 AS queued;
SELECT payments_real.run_compensations(10) AS ran;
SELECT (payments_real.idempotency_begin('schema', 'k1', '{}')).outcome;
SELECT payments_real.stock_set('sku-1', 5);
SELECT payments_real.reserve('order-1', 'sku-1', 2, interval '1 hour') > 0 AS reserved;
SELECT payments_real.define_state_machine('schema_machine',
    '{"new": ["paid"], "paid": []}', ARRAY['new']);
-- Every write went to the extension's tables ...
SELECT (SELECT count(*) FROM payments_real.compensations WHERE status = 'succeeded') AS compensations,
       (SELECT count(*) FROM payments_real.idempotency_keys) AS keys,
       (SELECT count(*) FROM payments_real.stock) AS stock,
       (SELECT count(*) FROM payments_real.reservations) AS reservations,
       (SELECT count(*) FROM payments_real.state_machine_definitions
         WHERE name = 'schema_machine') AS machines;
-- ... and none to the look-alikes.
SELECT (SELECT count(*) FROM payments.compensations) AS compensations,
       (SELECT count(*) FROM payments.idempotency_keys) AS keys,
       (SELECT count(*) FROM payments.stock) AS stock,
       (SELECT count(*) FROM payments.stock_slots) AS slots,
       (SELECT count(*) FROM payments.reservations) AS reservations,
       (SELECT count(*) FROM payments.state_machine_definitions) AS machines;

-- A guard trigger calls the extension's trigger function, not one found by
-- the old name.
CREATE TABLE public.schema_orders (id int PRIMARY KEY, status text);
SELECT payments_real.guard_state('public.schema_orders', 'status', 'schema_machine');
SELECT tgfoid::regprocedure FROM pg_trigger
 WHERE tgrelid = 'public.schema_orders'::regclass AND NOT tgisinternal;
INSERT INTO public.schema_orders VALUES (1, 'new');
UPDATE public.schema_orders SET status = 'paid';
UPDATE public.schema_orders SET status = 'new';
\echo :LAST_ERROR_SQLSTATE

DROP TABLE public.schema_orders;
DROP SCHEMA payments CASCADE;
ALTER SCHEMA payments_real RENAME TO payments;
DROP EXTENSION payments;
DROP FUNCTION public.regress_noop(jsonb);
DROP ROLE regress_schema_owner, regress_schema_creator;
