-- Callbacks: a provider's signed notification verified, recorded once per
-- event id, and routed to a guarded status column; an expected callback
-- that never comes is chased by a query.  See doc/callbacks.md.
--
-- A provider belongs to the role that first named it (callback_key_add,
-- callback_route or expect_callback): only that role and its members may
-- add its keys, route its events, receive its callbacks or expect them, so
-- no other role can plant an event id or a key in its name.

CREATE TABLE payments.callback_providers (
    provider    text COLLATE "C" PRIMARY KEY,
    owner       regrole     NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE payments.callback_providers IS
    'Callback providers and the role that owns each';

SELECT pg_catalog.pg_extension_config_dump('payments.callback_providers', '');

-- The keyring.  secret is the shared secret of an HMAC scheme or the PEM
-- public key of an RSA scheme, as given; no role but the extension's owner
-- can read the column (payments_operator reads the others).
CREATE TABLE payments.callback_keys (
    id          bigserial   PRIMARY KEY,
    provider    text COLLATE "C" NOT NULL,
    scheme      text COLLATE "C" NOT NULL,
    key_id      text COLLATE "C" NOT NULL,
    secret      text        NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_until timestamptz,
    revoked_at  timestamptz,
    added_by    regrole     NOT NULL,
    added_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT callback_keys_provider_key_id_key UNIQUE (provider, key_id)
);

COMMENT ON TABLE payments.callback_keys IS
    'Keys that verify callbacks: several per provider during a rotation, each valid in its window until revoked';

SELECT pg_catalog.pg_extension_config_dump('payments.callback_keys', '');
SELECT pg_catalog.pg_extension_config_dump('payments.callback_keys_id_seq', '');

-- One row per provider and event id, however often it was delivered.
-- outcome is what the first delivery did: applied, stale, conflict or new.
-- The BRIN index serves the purge (rows arrive in time order) at almost no
-- cost per insert; the other one finds the events of a payment.  No index
-- mentions outcome, deliveries, last_delivered_at or compensation_id, so
-- that correcting the outcome and counting a delivery are HOT updates.
CREATE TABLE payments.callbacks (
    provider           text COLLATE "C" NOT NULL,
    event_id           text COLLATE "C" NOT NULL,
    payment_ref        text COLLATE "C" NOT NULL,
    event_type         text COLLATE "C" NOT NULL,
    payload            jsonb,
    outcome            text        NOT NULL,
    key_id             text COLLATE "C",       -- NULL: the caller verified it
    received_by        regrole     NOT NULL,
    first_delivered_at timestamptz NOT NULL DEFAULT now(),
    last_delivered_at  timestamptz NOT NULL DEFAULT now(),
    deliveries         integer     NOT NULL DEFAULT 1,
    compensation_id    bigint,                 -- the on_conflict item
    CONSTRAINT callbacks_pkey PRIMARY KEY (provider, event_id)
) WITH (fillfactor = 90);   -- room for the HOT updates described above

COMMENT ON TABLE payments.callbacks IS
    'Every callback event received: its first outcome, deliveries, and the key that verified it';

CREATE INDEX callbacks_first_delivered_at_idx
    ON payments.callbacks USING brin (first_delivered_at);
CREATE INDEX callbacks_payment_ref_idx
    ON payments.callbacks (provider, payment_ref);

SELECT pg_catalog.pg_extension_config_dump('payments.callbacks', '');

-- Where a provider's event type moves a guarded status column.  The column
-- names are kept as text and looked up at each use, as a query names them.
CREATE TABLE payments.callback_routes (
    provider          text COLLATE "C" NOT NULL,
    event_type        text COLLATE "C" NOT NULL,
    tbl               regclass    NOT NULL,
    key_col           name        NOT NULL,
    state_col         name        NOT NULL,
    to_state          text        NOT NULL,
    on_conflict       text COLLATE "C",       -- a handler, as compensations.handler
    on_conflict_owner regrole,
    routed_by         regrole     NOT NULL,
    routed_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT callback_routes_pkey PRIMARY KEY (provider, event_type)
);

COMMENT ON TABLE payments.callback_routes IS
    'Which guarded status column each provider event type moves, and to which state';

SELECT pg_catalog.pg_extension_config_dump('payments.callback_routes', '');

-- Callbacks the application waits for.  Past its deadline an unmet one is
-- chased: the worker queues query_handler as expected_by, and
-- compensation_id is that item.  query_error says why it could not be
-- queued (the handler was dropped, or its rights revoked).
CREATE TABLE payments.expected_callbacks (
    id              bigserial   PRIMARY KEY,
    provider        text COLLATE "C" NOT NULL,
    payment_ref     text COLLATE "C" NOT NULL,
    deadline        timestamptz NOT NULL,
    query_handler   text COLLATE "C" NOT NULL,
    handler_owner   regrole     NOT NULL,
    expected_by     regrole     NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    met_at          timestamptz,
    met_by          text COLLATE "C",       -- the event id that met it
    compensation_id bigint,
    queried_at      timestamptz,
    query_error     text
);

COMMENT ON TABLE payments.expected_callbacks IS
    'Callbacks expected for a payment by a deadline, and how each was met or chased';

CREATE INDEX expected_callbacks_waiting_idx
    ON payments.expected_callbacks (provider, payment_ref) WHERE met_at IS NULL;
CREATE INDEX expected_callbacks_due_idx
    ON payments.expected_callbacks (deadline)
    WHERE met_at IS NULL AND compensation_id IS NULL AND query_error IS NULL;

SELECT pg_catalog.pg_extension_config_dump('payments.expected_callbacks', '');
SELECT pg_catalog.pg_extension_config_dump('payments.expected_callbacks_id_seq', '');

-- Signature failures are counted in shared memory (a refused callback
-- rolls back, so no table can count it); NULL without
-- shared_preload_libraries.  The count is the calling database's, since the
-- server started, and only the provider's owner (or a member) sees it.
CREATE FUNCTION payments.callback_signature_failures(provider text)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_callback_signature_failures'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.callback_signature_failures(text) IS
    'Callbacks of a provider refused by verification since the server started';

-- The views show a role only its own providers and expectations (and
-- every one to payments_operator).  security_barrier keeps a caller's own
-- functions in a WHERE clause from seeing rows before the filter.
CREATE VIEW payments.callback_expectations WITH (security_barrier) AS
    SELECT e.id, e.provider, e.payment_ref, e.deadline,
           CASE
               WHEN e.met_at IS NOT NULL THEN 'met'
               WHEN e.query_error IS NOT NULL THEN 'lost'
               WHEN e.compensation_id IS NULL THEN 'waiting'
               WHEN c.status IN ('pending', 'running') THEN 'querying'
               ELSE 'lost'
           END AS status,
           e.query_handler, e.expected_by, e.created_at, e.met_at, e.met_by,
           e.compensation_id, e.queried_at, e.query_error
      FROM payments.expected_callbacks e
     CROSS JOIN LATERAL (SELECT payments.compensation_status(e.compensation_id) AS status) c
     WHERE pg_catalog.pg_has_role(e.expected_by, 'USAGE')
        OR pg_catalog.pg_has_role('payments_operator', 'USAGE');

COMMENT ON VIEW payments.callback_expectations IS
    'Expected callbacks: waiting, met, querying (the query item is queued) or lost (the query failed for good)';

CREATE VIEW payments.callback_stats WITH (security_barrier) AS
    SELECT p.provider,
           coalesce(c.received, 0) AS received,
           coalesce(c.applied, 0) AS applied,
           coalesce(c.new, 0) AS new,
           coalesce(c.duplicates, 0) AS duplicates,
           coalesce(c.stale, 0) AS stale,
           coalesce(c.conflicts, 0) AS conflicts,
           payments.callback_signature_failures(p.provider) AS signature_failures,
           coalesce(e.overdue, 0) AS overdue_expectations
      FROM payments.callback_providers p
      LEFT JOIN LATERAL (
            SELECT count(*) AS received,
                   count(*) FILTER (WHERE x.outcome = 'applied') AS applied,
                   count(*) FILTER (WHERE x.outcome = 'new') AS new,
                   sum(x.deliveries - 1) AS duplicates,
                   count(*) FILTER (WHERE x.outcome = 'stale') AS stale,
                   count(*) FILTER (WHERE x.outcome = 'conflict') AS conflicts
              FROM payments.callbacks x
             WHERE x.provider = p.provider) c ON true
      LEFT JOIN LATERAL (
            SELECT count(*) AS overdue
              FROM payments.expected_callbacks y
             WHERE y.provider = p.provider AND y.met_at IS NULL
               AND y.deadline < pg_catalog.now()) e ON true
     WHERE pg_catalog.pg_has_role(p.owner, 'USAGE')
        OR pg_catalog.pg_has_role('payments_operator', 'USAGE');

COMMENT ON VIEW payments.callback_stats IS
    'Callbacks per provider: events received, their outcomes, repeated deliveries, signature failures, overdue expectations';

-- None of these functions is SECURITY DEFINER: they act for their caller,
-- whose ownership of the provider they check and whose rights the routed
-- UPDATE and the queued handlers use; they write the extension's tables as
-- its owner.  See src/callback.h.

CREATE FUNCTION payments.callback_key_add(
        provider text, scheme text, secret text, key_id text DEFAULT NULL,
        valid_from timestamptz DEFAULT now(),
        valid_until timestamptz DEFAULT NULL)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_callback_key_add'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.callback_key_add(text, text, text, text, timestamptz, timestamptz) IS
    'Add a key that verifies a provider''s callbacks in its validity window; returns its id';

CREATE FUNCTION payments.callback_key_revoke(id bigint)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_callback_key_revoke'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.callback_key_revoke(bigint) IS
    'Revoke a callback key for good; false if it was revoked before';

CREATE FUNCTION payments.verify_callback(
        provider text, headers jsonb, body bytea,
        at timestamptz DEFAULT now())
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_verify_callback'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.verify_callback(text, jsonb, bytea, timestamptz) IS
    'Verify a callback''s signature over its raw body; returns the key_id that verified it';

CREATE FUNCTION payments.verify_callback(
        provider text, headers jsonb, body text,
        at timestamptz DEFAULT now())
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_verify_callback'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.verify_callback(text, jsonb, text, timestamptz) IS
    'Verify a callback''s signature over its body, given as text; returns the key_id that verified it';

CREATE FUNCTION payments.receive_callback(
        provider text, event_id text, payment_ref text, event_type text,
        payload jsonb, headers jsonb DEFAULT NULL, body bytea DEFAULT NULL)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_receive_callback'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.receive_callback(text, text, text, text, jsonb, jsonb, bytea) IS
    'Verify (with headers), record and route a callback event once: applied, duplicate, stale, conflict or new';

CREATE FUNCTION payments.callback_route(
        provider text, event_type text, tbl regclass, key_col name,
        state_col name, to_state text, on_conflict regprocedure DEFAULT NULL)
    RETURNS void
    AS 'MODULE_PATHNAME', 'payments_callback_route'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.callback_route(text, text, regclass, name, name, text, regprocedure) IS
    'Route a provider''s event type to a guarded status column: the row whose key_col is the payment_ref moves to to_state';

CREATE FUNCTION payments.callback_unroute(provider text, event_type text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_callback_unroute'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.callback_unroute(text, text) IS
    'Remove the route of a provider''s event type; false if there was none';

CREATE FUNCTION payments.expect_callback(
        provider text, payment_ref text, within interval,
        query_handler regprocedure)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_expect_callback'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.expect_callback(text, text, interval, regprocedure) IS
    'Expect a routed callback for payment_ref within an interval; past it, the worker queues query_handler';

CREATE FUNCTION payments.record_query_result(
        provider text, payment_ref text, event_type text, payload jsonb)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_record_query_result'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.record_query_result(text, text, text, jsonb) IS
    'Record what the provider''s query API said about a payment; routed like a callback';

-- The worker's tasks.
CREATE FUNCTION payments.chase_callbacks(max_rows integer DEFAULT 1000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_chase_callbacks'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.chase_callbacks(integer) IS
    'Queue the query handler of up to max_rows expected callbacks past their deadline; returns how many';

CREATE FUNCTION payments.purge_callbacks(max_rows integer DEFAULT 10000)
    RETURNS integer
    AS 'MODULE_PATHNAME', 'payments_purge_callbacks'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION payments.purge_callbacks(integer) IS
    'Delete up to max_rows callback events and finished expectations older than payments.callback_retention; returns how many';
