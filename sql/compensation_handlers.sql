--
-- How run_compensations runs handlers: one call takes and runs the due
-- items, a handler's own error of any SQLSTATE fails only its item, a
-- handler past payments.handler_timeout fails whatever it catches, and an
-- error text is stored clipped.  The worker is off in this cluster
-- (test/regress.conf); test/t/ tests what only the worker does.
--
CREATE EXTENSION payments;
CREATE ROLE regress_handler_a LOGIN;
CREATE ROLE regress_handler_b LOGIN;
GRANT payments_app TO regress_handler_a, regress_handler_b;
CREATE SCHEMA handlers;
GRANT USAGE ON SCHEMA handlers TO PUBLIC;
CREATE TABLE handlers.log (who text, what text);
GRANT INSERT ON handlers.log TO PUBLIC;

CREATE FUNCTION handlers.noop(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO handlers.log VALUES (current_user, p->>'what');
END
$$;
-- Raises the SQLSTATE of a cancel itself.
CREATE FUNCTION handlers.fake_cancel(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO handlers.log VALUES (current_user, 'fake_cancel');
    RAISE SQLSTATE '57014' USING MESSAGE = 'not really a cancel';
END
$$;
-- Swallows the cancel of its timeout and returns.
CREATE FUNCTION handlers.stubborn(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO handlers.log VALUES (current_user, 'stubborn');
    BEGIN
        PERFORM pg_sleep(30);
    EXCEPTION WHEN query_canceled THEN
        NULL;
    END;
END
$$;
CREATE FUNCTION handlers.verbose(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', repeat('x', 2000000);
END
$$;
CREATE FUNCTION handlers.slow(p jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO handlers.log VALUES (current_user, 'slow');
    PERFORM pg_sleep(30);
END
$$;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA handlers TO PUBLIC;

CREATE VIEW handlers.items AS
    SELECT c.id, c.handler, c.status, c.attempts, c.enqueued_by,
           (SELECT string_agg(a.sqlstate || ' ' || a.error, '; ' ORDER BY a.attempt)
              FROM payments.compensation_attempts a
             WHERE a.compensation_id = c.id) AS failures
      FROM payments.compensations c;

-- One call takes and runs every due item: nothing is left claimed for a
-- later call, so a call behind a transaction-mode pooler is complete.
SET ROLE regress_handler_a;
SELECT payments.enqueue_compensation('handlers.noop(jsonb)', '{"what": "one"}') AS one \gset
SELECT payments.enqueue_compensation('handlers.noop(jsonb)', '{"what": "two"}') AS two \gset
RESET ROLE;
SELECT payments.run_compensations(10) AS finished;
SELECT handler, status, attempts, failures FROM handlers.items
 WHERE id IN (:one, :two) ORDER BY id;
SELECT who, what FROM handlers.log ORDER BY what;
SELECT payments.run_compensations(10) AS finished_again;
TRUNCATE handlers.log;

-- A handler that raises SQLSTATE 57014 itself fails only its own attempt;
-- another role's item in the same call still runs.
SET ROLE regress_handler_a;
SELECT payments.enqueue_compensation('handlers.fake_cancel(jsonb)', '{}') AS fake \gset
RESET ROLE;
SET ROLE regress_handler_b;
SELECT payments.enqueue_compensation('handlers.noop(jsonb)', '{"what": "after fake"}') AS after_fake \gset
RESET ROLE;
SELECT payments.run_compensations(10) AS finished;
SELECT handler, status, attempts, enqueued_by, failures FROM handlers.items
 WHERE id IN (:fake, :after_fake) ORDER BY id;
SELECT who, what FROM handlers.log ORDER BY what;
SELECT payments.cancel_compensation(:fake);
TRUNCATE handlers.log;

-- A handler past payments.handler_timeout fails even though it caught the
-- cancel and returned; its effects are rolled back.
SET payments.handler_timeout = '200ms';
SET ROLE regress_handler_a;
SELECT payments.enqueue_compensation('handlers.stubborn(jsonb)', '{}') AS stubborn \gset
RESET ROLE;
SELECT payments.run_compensations(10) AS finished;
SELECT handler, status, attempts, failures FROM handlers.items WHERE id = :stubborn;
SELECT count(*) AS stubborn_effects FROM handlers.log;
SELECT payments.cancel_compensation(:stubborn);
RESET payments.handler_timeout;

-- The caller's own statement_timeout is a real cancel: the call fails, and
-- in a session (not the worker) the attempt is not counted.
SET ROLE regress_handler_a;
SELECT payments.enqueue_compensation('handlers.slow(jsonb)', '{}') AS slow \gset
RESET ROLE;
SET statement_timeout = '200ms';
\set VERBOSITY terse
SELECT payments.run_compensations(10);
\set VERBOSITY default
\echo :LAST_ERROR_SQLSTATE
RESET statement_timeout;
SELECT handler, status, attempts, failures FROM handlers.items WHERE id = :slow;
SELECT count(*) AS slow_effects FROM handlers.log;
SELECT payments.cancel_compensation(:slow);

-- A handler's error text is stored and logged clipped, not whole.
SET client_min_messages = warning;
SET ROLE regress_handler_a;
SELECT payments.enqueue_compensation('handlers.verbose(jsonb)', '{}') AS verbose \gset
RESET ROLE;
SELECT payments.run_compensations(10) AS finished;
SELECT status, attempts, octet_length(last_error) AS last_error_bytes
  FROM payments.compensations WHERE id = :verbose;
SELECT octet_length(error) AS attempt_error_bytes, sqlstate
  FROM payments.compensation_attempts WHERE compensation_id = :verbose;
RESET client_min_messages;

DROP SCHEMA handlers CASCADE;
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments;
DROP ROLE regress_handler_a, regress_handler_b;
