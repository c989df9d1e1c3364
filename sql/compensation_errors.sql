--
-- Compensations: bad input gets a clear error with a standard SQLSTATE at
-- enqueue time, and nothing is queued.
--
CREATE EXTENSION payments;

CREATE FUNCTION comp_ok(p jsonb) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION comp_text(p text) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION comp_returns_int(p jsonb) RETURNS integer LANGUAGE sql AS 'SELECT 1';
CREATE FUNCTION comp_two_args(p jsonb, q integer) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION comp_default(p jsonb, q integer DEFAULT 0) RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE FUNCTION comp_setof(p jsonb) RETURNS SETOF void LANGUAGE sql AS 'SELECT';
CREATE PROCEDURE comp_proc(p jsonb) LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE AGGREGATE comp_agg(jsonb) (sfunc = jsonb_concat, stype = jsonb);

-- NULLs: 22004
SELECT payments.enqueue_compensation(NULL, '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_ok(jsonb)', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', run_at => NULL);
\echo :LAST_ERROR_SQLSTATE

-- Wrong signatures: 22023
SELECT payments.enqueue_compensation('comp_text(text)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_returns_int(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_two_args(jsonb, integer)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_default(jsonb, integer)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_setof(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_proc(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_agg(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE
-- a regprocedure can hold the OID of no function: 42883
SELECT payments.enqueue_compensation(4000000000::oid::regprocedure, '{}');
\echo :LAST_ERROR_SQLSTATE
-- and a name that does not resolve fails in the cast, before the call
SELECT payments.enqueue_compensation('comp_missing(jsonb)', '{}');
\echo :LAST_ERROR_SQLSTATE

-- Dedup keys: 1 to 255 bytes (22023)
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', repeat('k', 256));
\echo :LAST_ERROR_SQLSTATE
-- limits are in bytes: 128 two-byte characters are 256 bytes
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', repeat('é', 128));
\echo :LAST_ERROR_SQLSTATE

-- max_attempts: 1 to 1000 (22003); run_at must be finite (22023)
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', max_attempts => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', max_attempts => 1001);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}', run_at => 'infinity');
\echo :LAST_ERROR_SQLSTATE

-- Payloads over payments.max_payload_size: 54000
SET payments.max_payload_size = '1kB';
SELECT payments.enqueue_compensation('comp_ok(jsonb)', jsonb_build_object('blob', repeat('x', 1100)));
\echo :LAST_ERROR_SQLSTATE
RESET payments.max_payload_size;

-- Nothing was queued.
SELECT count(*) AS queued FROM payments.compensations;

-- Ids and claim tokens: NULL (22004); unknown ids (PM301), whatever the
-- token.  (The id is one the sequence handed out and nobody used.)
SELECT nextval('payments.compensations_id_seq') AS missing \gset
SELECT payments.retry_compensation(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.cancel_compensation(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.complete_compensation(NULL, 1);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.complete_compensation(:missing, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fail_compensation(NULL, 1, 'x');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fail_compensation(:missing, NULL, 'x');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY sqlstate
SELECT payments.retry_compensation(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SELECT payments.cancel_compensation(:missing);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SELECT payments.complete_compensation(:missing, 1);
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
SELECT payments.fail_compensation(:missing, 1, 'x');
SELECT replace(:'LAST_ERROR_MESSAGE', :'missing', '<id>') AS error;
\set VERBOSITY default

-- External executors' arguments
SELECT payments.register_external_handler(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.register_external_handler('comp_text(text)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.register_external_handler(4000000000::oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unregister_external_handler(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unregister_external_handler('comp_text(text)');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.unregister_external_handler(4000000000::oid::regprocedure);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.register_external_handler('comp_ok(jsonb)');
SELECT * FROM payments.claim_compensations(NULL, 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', NULL, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 0, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 100001, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 1, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 1, '0 seconds');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 1, '-1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_ok(jsonb)', 1, '8 days');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM payments.claim_compensations('comp_text(text)', 1, '1 minute');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.enqueue_compensation('comp_ok(jsonb)', '{}') AS id \gset
SELECT id = :id AS claimed, claim_token AS token
  FROM payments.claim_compensations('comp_ok(jsonb)', 1, '1 hour') \gset
\echo :claimed
SELECT payments.fail_compensation(:id, :token, NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fail_compensation(:id, :token, '');
\echo :LAST_ERROR_SQLSTATE
SELECT payments.fail_compensation(:id, :token, repeat('e', 8193));
\echo :LAST_ERROR_SQLSTATE
SELECT status, attempts FROM payments.compensations WHERE id = :id;
SELECT payments.run_compensations(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT payments.run_compensations(0);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS attempt_rows FROM payments.compensation_attempts;

DROP FUNCTION comp_ok(jsonb), comp_text(text), comp_returns_int(jsonb),
    comp_two_args(jsonb, integer), comp_default(jsonb, integer), comp_setof(jsonb);
DROP PROCEDURE comp_proc(jsonb);
DROP AGGREGATE comp_agg(jsonb);
-- What payments.check() finds in what this file leaves behind
RESET ROLE;
SELECT check_name, severity, count(*) FROM payments.check() GROUP BY 1, 2 ORDER BY 1, 2;
DROP EXTENSION payments CASCADE;
