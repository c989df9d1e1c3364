-- Scale-out on Citus: the layout payments.distribute() makes, and the calls
-- by key that run on it.  See src/citus_shards.c, doc/citus.md and the
-- README, "Scaling out with Citus".

-- Confirm or release a hold named by its id and its SKU: the SKU tells
-- Citus which node holds it once the tables are distributed.  Without
-- Citus they are the one-argument forms, refusing a hold of another SKU.
CREATE FUNCTION @extschema@.confirm_reservation(id bigint, sku text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_confirm_reservation'
    LANGUAGE C VOLATILE;

COMMENT ON FUNCTION @extschema@.confirm_reservation(bigint, text) IS
    'Turn a hold of the SKU into a sale; false if it was already confirmed';

CREATE FUNCTION @extschema@.release_reservation(id bigint, sku text)
    RETURNS boolean
    AS 'MODULE_PATHNAME', 'payments_release_reservation'
    LANGUAGE C VOLATILE SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.release_reservation(bigint, text) IS
    'Give the stock of a hold of the SKU back; false if it was already released or expired';

-- A call on the compensation queue made on a node without the shard of the
-- item's flow runs on that shard's node through these, which distribute()
-- makes distributed functions by the flow (src/compensation_citus.c).  They
-- act for the role they name, so only the extension's owner calls them: no
-- role is granted EXECUTE (src/sql/90_privileges.sql), and they check their
-- caller.
CREATE FUNCTION @extschema@.enqueue_compensation_on_shard(
        flow text, id bigint, handler text, handler_owner regrole, payload jsonb,
        dedup_key text, max_attempts integer, run_at timestamptz, after bigint,
        enqueued_by regrole, dead_error text)
    RETURNS bigint
    AS 'MODULE_PATHNAME', 'payments_enqueue_compensation_on_shard'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.change_compensation_on_shard(
        change text, flow text, id bigint, claim_token bigint, error text,
        caller regrole)
    RETURNS text
    AS 'MODULE_PATHNAME', 'payments_change_compensation_on_shard'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

CREATE FUNCTION @extschema@.claim_compensations_on_shard(
        flow text, handler text, max_items integer, lease interval,
        claim_token bigint, caller regrole)
    RETURNS jsonb
    AS 'MODULE_PATHNAME', 'payments_claim_compensations_on_shard'
    LANGUAGE C VOLATILE
    SET search_path = pg_catalog, pg_temp;

COMMENT ON FUNCTION @extschema@.enqueue_compensation_on_shard(text, bigint, text, regrole, jsonb, text, integer, timestamptz, bigint, regrole, text) IS
    'Internal: queue a compensation on the node of its flow''s shard for the role named';
COMMENT ON FUNCTION @extschema@.change_compensation_on_shard(text, text, bigint, bigint, text, regrole) IS
    'Internal: change a compensation on the node of its flow''s shard for the role named (retry, cancel, complete, fail) or the extension (cancel pending, accept)';
COMMENT ON FUNCTION @extschema@.claim_compensations_on_shard(text, text, integer, interval, bigint, regrole) IS
    'Internal: claim compensations of an external handler on one shard for the role named';

-- Distribute the reservation, idempotency and TCC tables by their key, in one
-- co-location group, make the scope restrictions and the state machines
-- reference tables, and make every call by key a distributed function
-- that Citus sends to the node holding the key's shard, also inside a
-- transaction (force_delegation).  Every other table stays local to the
-- node it is on (a guarded table's history: on the node of its row).  Run once, on the coordinator, by a superuser; the rows
-- already in the tables move to the shards.
CREATE FUNCTION @extschema@.distribute(shard_count integer DEFAULT NULL)
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    shards integer;
    fn text;
    key text;
    busy text;
    whens text;
    col record;
    role_oids oid[];
    role_names name[];
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'extension "citus" is not installed in this database'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Run CREATE EXTENSION citus and add the worker nodes first.';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'payments.distribute() must run on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                WHERE logicalrelid = '@extschema@.stock'::regclass) THEN
        RAISE EXCEPTION 'the tables of extension "payments" are already distributed'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Only the coordinator's rows move to the shards: rows a worker kept in
    -- its own tables would be lost.
    SELECT string_agg(r.nodename || ':' || r.nodeport, ', ') INTO busy
      FROM pg_catalog.run_command_on_workers($q$SELECT
               (SELECT count(*) FROM @extschema@.stock) + (SELECT count(*) FROM @extschema@.stock_slots)
             + (SELECT count(*) FROM @extschema@.reservations) + (SELECT count(*) FROM @extschema@.idempotency_keys)
             + (SELECT count(*) FROM @extschema@.tcc_fence) + (SELECT count(*) FROM @extschema@.idempotency_scopes)
             + (SELECT count(*) FROM @extschema@.state_machine_definitions)
             + (SELECT count(*) FROM @extschema@.compensations)
             + (SELECT count(*) FROM @extschema@.compensation_attempts)
             + (SELECT count(*) FROM @extschema@.external_handlers)$q$) AS r
     WHERE NOT r.success OR r.result <> '0';
    IF busy IS NOT NULL THEN
        RAISE EXCEPTION 'worker nodes hold rows of the tables payments.distribute() distributes'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('Rows are on %s (or the node could not be asked); only the coordinator''s rows move to the shards.', busy),
                  HINT = 'Move those rows to the coordinator, or delete them, then distribute.';
    END IF;
    -- A dedup key is unique across shards because it is its item's flow;
    -- an item queued after another has the other's flow.
    IF EXISTS (SELECT FROM @extschema@.compensations
                WHERE dedup_key IS NOT NULL AND after IS NOT NULL) THEN
        RAISE EXCEPTION 'compensations queued after another have a dedup key'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = 'Once distributed, a dedup key stays unique only on the shard of its first item.',
                  HINT = 'Let those compensations finish, or cancel them, then distribute.';
    END IF;
    -- Citus copies the rows to the shards in binary, so a role column would
    -- keep the coordinator's OID of a role, which is another role, or none,
    -- on a worker: each role the rows name is written again below by its
    -- name, which Citus sends as text, and the OID of a role that is gone
    -- becomes none.
    SELECT pg_catalog.array_agg(r.oid), pg_catalog.array_agg(r.rolname)
      INTO role_oids, role_names
      FROM pg_catalog.pg_roles r
     WHERE r.oid IN (SELECT enqueued_by FROM @extschema@.compensations
                     UNION SELECT handler_owner FROM @extschema@.compensations
                     UNION SELECT claimed_by FROM @extschema@.compensations
                     UNION SELECT owner FROM @extschema@.tcc_fence
                     UNION SELECT registered_by FROM @extschema@.external_handlers
                     UNION SELECT pg_catalog.unnest(roles) FROM @extschema@.idempotency_scopes);
    shards := coalesce(shard_count, pg_catalog.current_setting('citus.shard_count')::integer);
    IF shards < 1 OR shards > 64000 THEN
        RAISE EXCEPTION 'shard_count must be between 1 and 64000'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Citus keeps a unique key unique per shard only: it must hold the
    -- distribution column.  Holds are still found by id alone (an index).
    ALTER TABLE @extschema@.reservations DROP CONSTRAINT reservations_pkey,
        ADD CONSTRAINT reservations_pkey PRIMARY KEY (sku, id);
    CREATE INDEX reservations_id_idx ON @extschema@.reservations (id);
    -- A compensation goes with its flow (src/sql/50_compensation.sql): a
    -- dedup key is its unchained item's flow, so the key stays unique
    -- across shards with the flow in its index.
    ALTER TABLE @extschema@.compensations DROP CONSTRAINT compensations_pkey,
        ADD CONSTRAINT compensations_pkey PRIMARY KEY (flow, id);
    CREATE INDEX compensations_id_idx ON @extschema@.compensations (id);
    DROP INDEX @extschema@.compensations_dedup_key_idx;
    CREATE UNIQUE INDEX compensations_dedup_key_idx
        ON @extschema@.compensations (handler, dedup_key, flow) WHERE dedup_key IS NOT NULL;
    ALTER TABLE @extschema@.compensation_attempts DROP CONSTRAINT compensation_attempts_pkey,
        ADD CONSTRAINT compensation_attempts_pkey PRIMARY KEY (flow, id);

    PERFORM pg_catalog.create_distributed_table('@extschema@.stock', 'sku',
                                                shard_count => shards);
    PERFORM pg_catalog.create_distributed_table('@extschema@.stock_slots', 'sku',
                                                colocate_with => '@extschema@.stock');
    PERFORM pg_catalog.create_distributed_table('@extschema@.reservations', 'sku',
                                                colocate_with => '@extschema@.stock');
    PERFORM pg_catalog.create_distributed_table('@extschema@.idempotency_keys', 'key',
                                                colocate_with => '@extschema@.stock');
    PERFORM pg_catalog.create_distributed_table('@extschema@.tcc_fence', 'gid',
                                                colocate_with => '@extschema@.stock');
    PERFORM pg_catalog.create_distributed_table('@extschema@.compensations', 'flow',
                                                colocate_with => '@extschema@.stock');
    PERFORM pg_catalog.create_distributed_table('@extschema@.compensation_attempts', 'flow',
                                                colocate_with => '@extschema@.stock');

    -- The scope restrictions and the state machines are read on every
    -- node; a statement trigger on each placement tells that node's
    -- sessions to read them again (the scopes' trigger function only
    -- invalidates the relation it fires on).
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    CREATE TRIGGER state_machine_definitions_changed
        AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.state_machine_definitions
        FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.idempotency_scopes_changed();
    PERFORM pg_catalog.create_reference_table('@extschema@.idempotency_scopes');
    PERFORM pg_catalog.create_reference_table('@extschema@.state_machine_definitions');
    PERFORM pg_catalog.create_reference_table('@extschema@.external_handlers');

    FOR col IN VALUES ('@extschema@.compensations'::regclass, 'enqueued_by'),
                      ('@extschema@.compensations', 'handler_owner'),
                      ('@extschema@.compensations', 'claimed_by'),
                      ('@extschema@.tcc_fence', 'owner'),
                      ('@extschema@.external_handlers', 'registered_by'),
                      ('@extschema@.idempotency_scopes', 'x.r')
    LOOP
        SELECT 'CASE WHEN false THEN NULL::regrole ' || coalesce(pg_catalog.string_agg(pg_catalog.format(
                   'WHEN %s::oid = %s THEN %L::regrole',
                   CASE WHEN col.column2 = 'x.r' THEN 'x.r' ELSE pg_catalog.quote_ident(col.column2) END,
                   o.oid, pg_catalog.quote_ident(o.name)), ' '), '')
               || ' ELSE ''-''::regrole END'
          INTO whens
          FROM ROWS FROM (pg_catalog.unnest(role_oids), pg_catalog.unnest(role_names)) AS o(oid, name);
        IF col.column2 = 'x.r' THEN
            EXECUTE 'UPDATE @extschema@.idempotency_scopes SET roles = ARRAY('
                    'SELECT ' || whens || ' FROM pg_catalog.unnest(roles)'
                    ' WITH ORDINALITY AS x(r, i) ORDER BY x.i)';
        ELSE
            EXECUTE pg_catalog.format('UPDATE %s SET %I = %s WHERE %I IS NOT NULL',
                                      col.column1, col.column2, whens, col.column2);
        END IF;
    END LOOP;

    -- The rows were copied to the shards; none stays behind in a shell.
    PERFORM pg_catalog.truncate_local_data_after_distributing_table(t)
       FROM unnest(ARRAY['@extschema@.stock', '@extschema@.stock_slots',
                         '@extschema@.reservations', '@extschema@.idempotency_keys',
                         '@extschema@.tcc_fence', '@extschema@.compensations',
                         '@extschema@.compensation_attempts', '@extschema@.idempotency_scopes',
                         '@extschema@.state_machine_definitions',
                         '@extschema@.external_handlers']::regclass[]) AS t;

    FOR fn, key IN VALUES
        ('stock_set(text, bigint, integer)', 'sku'), ('stock_adjust(text, bigint)', 'sku'),
        ('reserve(text, text, bigint, interval)', 'sku'),
        ('confirm_reservation(bigint, text)', 'sku'), ('release_reservation(bigint, text)', 'sku'),
        ('idempotency_begin(text, text, jsonb, interval)', 'key'),
        ('idempotency_checkpoint(text, text, text)', 'key'),
        ('idempotency_complete(text, text, jsonb, integer)', 'key'),
        ('idempotency_abandon(text, text)', 'key'),
        ('tcc_try(text, text, text)', 'gid'), ('tcc_confirm(text, text)', 'gid'),
        ('tcc_cancel(text, text)', 'gid'),
        ('enqueue_compensation_on_shard(text, bigint, text, regrole, jsonb, text, integer, timestamptz, bigint, regrole, text)', 'flow'),
        ('change_compensation_on_shard(text, text, bigint, bigint, text, regrole)', 'flow'),
        ('claim_compensations_on_shard(text, text, integer, interval, bigint, regrole)', 'flow')
    LOOP
        PERFORM pg_catalog.create_distributed_function(
            ('@extschema@.' || fn)::regprocedure, key,
            colocate_with => '@extschema@.stock', force_delegation => true);
    END LOOP;
END
$$;

COMMENT ON FUNCTION @extschema@.distribute(integer) IS
    'Distribute the reservation, idempotency and TCC tables by key on Citus, and send each call by key to the node of its shard';

-- The way back: every table of the layout returns to a local table on the
-- coordinator with its rows (copied through it), and the calls by key to
-- plain functions.  Refused while a guard watches a distributed table:
-- the guard on its shards needs the machines on every node.
CREATE FUNCTION @extschema@.undistribute()
    RETURNS void
    LANGUAGE plpgsql
    SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    t regclass;
    fn regprocedure;
    guarded text;
BEGIN
    -- (two tests: without Citus there is no pg_dist_partition to name)
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'the tables of extension "payments" are not distributed'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition
                    WHERE logicalrelid = '@extschema@.stock'::regclass) THEN
        RAISE EXCEPTION 'the tables of extension "payments" are not distributed'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'payments.undistribute() must run on the Citus coordinator'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT string_agg(DISTINCT tg.tgrelid::regclass::text, ', ') INTO guarded
      FROM pg_catalog.pg_trigger tg
      JOIN pg_catalog.pg_dist_partition p ON p.logicalrelid = tg.tgrelid
     WHERE tg.tgfoid = '@extschema@.state_guard()'::regprocedure;
    IF guarded IS NOT NULL THEN
        RAISE EXCEPTION 'cannot undistribute the tables of extension "payments" while it guards distributed tables'
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  DETAIL = format('The state guard watches %s.', guarded),
                  HINT = 'Remove those guards with payments.unguard_state first.';
    END IF;

    -- The rows come back as text, so that a role column names the role the
    -- worker's OID stood for (see distribute()).
    PERFORM pg_catalog.set_config('citus.enable_binary_protocol', 'off', true);

    -- No call is sent to a worker any more.
    FOR fn IN SELECT o.objid::regprocedure FROM pg_catalog.pg_dist_object o
               JOIN pg_catalog.pg_depend d
                 ON d.classid = o.classid AND d.objid = o.objid AND d.deptype = 'e'
              WHERE o.classid = 'pg_catalog.pg_proc'::regclass
                AND d.refclassid = 'pg_catalog.pg_extension'::regclass
                AND d.refobjid = (SELECT oid FROM pg_catalog.pg_extension
                                   WHERE extname = 'payments')
    LOOP
        PERFORM pg_catalog.citus_unmark_object_distributed(
            'pg_catalog.pg_proc'::regclass, fn, 0, false);
        PERFORM pg_catalog.run_command_on_workers(format(
            'SELECT pg_catalog.citus_unmark_object_distributed(%L::regclass, %L::regprocedure, 0, false)',
            'pg_catalog.pg_proc', fn::text));
    END LOOP;

    -- Each table as Citus's own drop does it, the rows kept (Citus's
    -- undistribute_table refuses a table that belongs to an extension).
    FOR t IN SELECT unnest(ARRAY['@extschema@.stock', '@extschema@.stock_slots',
                                 '@extschema@.reservations', '@extschema@.idempotency_keys',
                                 '@extschema@.tcc_fence', '@extschema@.compensations',
                                 '@extschema@.compensation_attempts',
                                 '@extschema@.idempotency_scopes',
                                 '@extschema@.state_machine_definitions',
                                 '@extschema@.external_handlers']::regclass[])
    LOOP
        EXECUTE format('CREATE TEMP TABLE payments_undistribute ON COMMIT DROP AS TABLE %s', t);
        PERFORM pg_catalog.master_remove_distributed_table_metadata_from_workers(
            t, '@extschema@', (SELECT relname FROM pg_catalog.pg_class WHERE oid = t));
        PERFORM pg_catalog.citus_drop_all_shards(
            t, '@extschema@', (SELECT relname FROM pg_catalog.pg_class WHERE oid = t));
        PERFORM pg_catalog.master_remove_partition_metadata(
            t, '@extschema@', (SELECT relname FROM pg_catalog.pg_class WHERE oid = t));
        EXECUTE format('DELETE FROM %s', t);
        EXECUTE format('INSERT INTO %s OVERRIDING SYSTEM VALUE TABLE payments_undistribute', t);
        DROP TABLE payments_undistribute;
    END LOOP;

    DROP TRIGGER state_machine_definitions_changed ON @extschema@.state_machine_definitions;
    DROP INDEX @extschema@.reservations_id_idx;
    ALTER TABLE @extschema@.reservations DROP CONSTRAINT reservations_pkey,
        ADD CONSTRAINT reservations_pkey PRIMARY KEY (id);
    DROP INDEX @extschema@.compensations_id_idx;
    ALTER TABLE @extschema@.compensations DROP CONSTRAINT compensations_pkey,
        ADD CONSTRAINT compensations_pkey PRIMARY KEY (id);
    DROP INDEX @extschema@.compensations_dedup_key_idx;
    CREATE UNIQUE INDEX compensations_dedup_key_idx
        ON @extschema@.compensations (handler, dedup_key) WHERE dedup_key IS NOT NULL;
    ALTER TABLE @extschema@.compensation_attempts DROP CONSTRAINT compensation_attempts_pkey,
        ADD CONSTRAINT compensation_attempts_pkey PRIMARY KEY (id);
END
$$;

COMMENT ON FUNCTION @extschema@.undistribute() IS
    'Return the tables payments.distribute() distributed to local tables on the coordinator, rows kept';
