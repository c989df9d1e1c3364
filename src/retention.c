/*-------------------------------------------------------------------------
 *
 * retention.c
 *	  Retention of the rows the extension's capabilities are done with:
 *	  resolved holds, finished compensations and their attempts, finished
 *	  sagas, cleared check results, settled outbox messages, expired inbox
 *	  ids and, if asked for, state history.
 *
 * Each table has a setting (payments.<what>_retention, in seconds; 0 keeps
 * the rows for ever), but for the inbox, whose rows carry their expiry,
 * and one purge statement.  A statement removes at most
 * max_rows rows in its caller's transaction, read in the order of an index
 * that holds only rows that may go, and skips rows another transaction has
 * locked, so a purge never waits for a hot path and never removes a row
 * that is still in use: a held hold, an unfinished or dead compensation, a
 * running saga or one whose undo has not finished, an open check result.
 * The units of a purged confirmed hold stay counted as sold, in
 * stock.sold_purged, so that the stock's ledger still balances.
 * The worker runs purge_retention each round (batches of 1000 rows per
 * table and transaction, again at once while a batch comes back full);
 * payments.purge() runs the same by hand and says what it removed.
 *
 * Idempotency keys, callbacks and TCC fence rows have purges of their own
 * (idempotency.c, callback_expectations.c, tcc_fence.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "retention.h"
#include "args.h"
#include "citus_shards.h"
#include "spi_util.h"

#include <limits.h>

#include "catalog/pg_type.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_purge_retention);
PG_FUNCTION_INFO_V1(payments_purge);

#define DAY_SECS (24 * 3600)

static int	reservation_retention = 30 * DAY_SECS;
static int	compensation_retention = 30 * DAY_SECS;
static int	saga_retention = 30 * DAY_SECS;
static int	check_retention = 30 * DAY_SECS;
static int	history_retention = 0;
static int	outbox_retention = 7 * DAY_SECS;

/*
 * One purge: the table it names in payments.purge()'s result, its setting,
 * and the statement, which takes max_rows ($1) and the retention in
 * seconds ($2) and returns the number of rows removed.
 */
typedef struct RetentionPurge
{
	const char *what;
	int		   *retention;		/* NULL: each row carries its expiry */
	bool		sharded;		/* its tables are distributed by payments.distribute() */
	const char *sql;
	SPIPlanPtr	plan;
} RetentionPurge;

static RetentionPurge purges[] = {
	{"reservations", &reservation_retention, true,
		"WITH gone AS (DELETE FROM @extschema@.reservations WHERE id = ANY (ARRAY("
		"  SELECT id FROM @extschema@.reservations"
		"   WHERE state <> 'held' AND resolved_at < pg_catalog.now() - $2 * interval '1 second'"
		"   ORDER BY resolved_at LIMIT $1 FOR UPDATE SKIP LOCKED))"
		"  AND state <> 'held' RETURNING sku, qty, state),"
		" sold AS (UPDATE @extschema@.stock s SET sold_purged = s.sold_purged + g.qty"
		"  FROM (SELECT sku, sum(qty) AS qty FROM gone WHERE state = 'confirmed'"
		"        GROUP BY sku) g WHERE s.sku = g.sku)"
		" SELECT count(*) FROM gone", NULL},
	{"compensations", &compensation_retention, true,
		"WITH gone AS (DELETE FROM @extschema@.compensations WHERE id = ANY (ARRAY("
		"  SELECT c.id FROM @extschema@.compensations c"
		"   WHERE c.finished_at IS NOT NULL"
		"    AND c.finished_at < pg_catalog.now() - $2 * interval '1 second'"
		"    AND c.status IN ('succeeded', 'cancelled')"
		/* a link that an unfinished or dead one still waits for stays */
		"    AND NOT EXISTS (SELECT FROM @extschema@.compensations n"
		"     WHERE n.after = c.id"
		"      AND n.status NOT IN ('succeeded', 'cancelled'))"
		"   ORDER BY finished_at LIMIT $1 FOR UPDATE SKIP LOCKED))"
		"  AND status IN ('succeeded', 'cancelled') RETURNING id),"
		" attempts AS (DELETE FROM @extschema@.compensation_attempts a"
		"  USING gone WHERE a.compensation_id = gone.id)"
		" SELECT count(*) FROM gone", NULL},
	{"sagas", &saga_retention, false,
		"WITH doomed AS (SELECT g.owner, g.saga_id FROM @extschema@.saga_state g"
		"   WHERE g.status <> 'running'"
		"    AND g.finished_at < pg_catalog.now() - $2 * interval '1 second'"
		"    AND NOT EXISTS (SELECT FROM @extschema@.saga_steps s"
		"     WHERE s.owner = g.owner AND s.saga_id = g.saga_id"
		"      AND @extschema@.compensation_status(s.compensation_id)"
		"       NOT IN ('succeeded', 'cancelled'))"
		"   ORDER BY g.finished_at LIMIT $1 FOR UPDATE SKIP LOCKED),"
		" steps AS (DELETE FROM @extschema@.saga_steps s USING doomed d"
		"  WHERE s.owner = d.owner AND s.saga_id = d.saga_id),"
		" gone AS (DELETE FROM @extschema@.saga_state g USING doomed d"
		"  WHERE g.owner = d.owner AND g.saga_id = d.saga_id RETURNING 1)"
		" SELECT count(*) FROM gone", NULL},
	{"check_results", &check_retention, false,
		"WITH gone AS (DELETE FROM @extschema@.check_results WHERE id = ANY (ARRAY("
		"  SELECT id FROM @extschema@.check_results"
		"   WHERE cleared_at IS NOT NULL"
		"    AND cleared_at < pg_catalog.now() - $2 * interval '1 second'"
		"   ORDER BY cleared_at LIMIT $1 FOR UPDATE SKIP LOCKED)) RETURNING 1)"
		" SELECT count(*) FROM gone", NULL},

	{"outbox", &outbox_retention, false,
		"WITH gone AS (DELETE FROM @extschema@.outbox WHERE id = ANY (ARRAY("
		"  SELECT id FROM @extschema@.outbox"
		"   WHERE settled_at IS NOT NULL"
		"    AND settled_at < pg_catalog.now() - $2 * interval '1 second'"
		"   ORDER BY settled_at LIMIT $1 FOR UPDATE SKIP LOCKED)) RETURNING 1)"
		" SELECT count(*) FROM gone", NULL},
	{"inbox", NULL, false,
		"WITH gone AS (DELETE FROM @extschema@.inbox i"
		"  USING (SELECT receiver, source, message_id FROM @extschema@.inbox"
		"   WHERE expires_at < pg_catalog.now() - $2 * interval '1 second'"
		"   ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED) d"
		"  WHERE (i.receiver, i.source, i.message_id) = (d.receiver, d.source, d.message_id)"
		"  RETURNING 1)"
		" SELECT count(*) FROM gone", NULL},

	/*
	 * History is only ever appended to, so its oldest rows are the first
	 * by id: the statement reads no more than max_rows of them, even when
	 * none is old enough.
	 */
	{"state_history", &history_retention, false,
		"WITH gone AS (DELETE FROM @extschema@.state_history WHERE id = ANY (ARRAY("
		"  SELECT h.id FROM (SELECT id, changed_at FROM @extschema@.state_history"
		"    ORDER BY id LIMIT $1) h"
		"   WHERE h.changed_at < pg_catalog.now() - $2 * interval '1 second')) RETURNING 1)"
		" SELECT count(*) FROM gone", NULL},
};

static void
define_retention(const char *name, const char *short_desc, const char *long_desc,
				 int *variable, int default_value)
{
	DefineCustomIntVariable(name, short_desc, long_desc, variable, default_value,
							0, INT_MAX, PGC_SUSET, GUC_UNIT_S,
							NULL, NULL, NULL);
}

void
retention_init(void)
{
	define_retention("payments.reservation_retention",
					 gettext_noop("How long confirmed, released and expired holds are kept."),
					 gettext_noop("0 keeps them for ever. Held holds are never purged."),
					 &reservation_retention, 30 * DAY_SECS);
	define_retention("payments.compensation_retention",
					 gettext_noop("How long succeeded and cancelled compensations, and their attempts, are kept."),
					 gettext_noop("0 keeps them for ever. Pending, running, waiting and dead items are never purged; a dedup key whose item was purged queues a new item."),
					 &compensation_retention, 30 * DAY_SECS);
	define_retention("payments.saga_retention",
					 gettext_noop("How long completed and aborted sagas are kept."),
					 gettext_noop("0 keeps them for ever. An aborted saga stays while any compensation of its undo is unfinished or dead."),
					 &saga_retention, 30 * DAY_SECS);
	define_retention("payments.check_retention",
					 gettext_noop("How long cleared results of user checks are kept."),
					 gettext_noop("0 keeps them for ever. Open results are never purged."),
					 &check_retention, 30 * DAY_SECS);
	define_retention("payments.outbox_retention",
					 gettext_noop("How long acknowledged and skipped outbox messages are kept."),
					 gettext_noop("0 keeps them for ever. Pending, in-flight and dead messages are never purged."),
					 &outbox_retention, 7 * DAY_SECS);
	define_retention("payments.history_retention",
					 gettext_noop("How long the state guard's history is kept."),
					 gettext_noop("0, the default, keeps it for ever: it is an audit trail."),
					 &history_retention, 0);
}

/* One batch of one purge, on one shard of its tables if they are distributed */
typedef struct PurgeBatch
{
	RetentionPurge *purge;
	int32		max_rows;
	int64		largest;
} PurgeBatch;

static void
purge_batch(void *arg)
{
	PurgeBatch *batch = (PurgeBatch *) arg;
	RetentionPurge *purge = batch->purge;
	Datum		values[2];
	bool		isnull;
	int64		n;

	values[0] = Int32GetDatum(batch->max_rows);
	values[1] = Int32GetDatum(purge->retention ? *purge->retention : 0);
	payments_prepare(&purge->plan, purge->sql, 2, (Oid[]) {INT4OID, INT4OID});
	payments_execute(purge->plan, values, NULL, SPI_OK_SELECT, 0);
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									SPI_tuptable->tupdesc, 1, &isnull));
	batch->largest = Max(batch->largest, n);
}

/*
 * One batch of one purge (one per shard this node holds, if its tables are
 * distributed); the largest batch, 0 if its retention is 0 (keep for
 * ever).
 */
static int64
purge_one(RetentionPurge *purge, int32 max_rows)
{
	PurgeBatch	batch = {purge, max_rows, 0};

	if (purge->retention != NULL && *purge->retention <= 0)
		return 0;
	if (purge->sharded)
		payments_shard_foreach_local(purge_batch, &batch);
	else
		purge_batch(&batch);
	return batch.largest;
}

/*
 * payments.purge_retention(max_rows): the worker's task.  One batch of up
 * to max_rows rows per table; returns the largest batch, so that the
 * worker runs it again at once while any table has a full one.
 */
Datum
payments_purge_retention(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);
	int64		largest = 0;

	payments_check_not_in_recovery();
	SPI_connect();
	for (int i = 0; i < lengthof(purges); i++)
	{
		int64		n = purge_one(&purges[i], max_rows);

		largest = Max(largest, n);
	}
	SPI_finish();
	PG_RETURN_INT32((int32) largest);
}

/*
 * payments.purge(max_rows): every purge by hand, in batches of max_rows
 * until nothing is left to remove, all in the caller's transaction; one
 * row per table with the number of rows removed.
 */
Datum
payments_purge(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	payments_check_not_in_recovery();
	InitMaterializedSRF(fcinfo, 0);
	SPI_connect();
	for (int i = 0; i < lengthof(purges); i++)
	{
		int64		total = 0;
		int64		n;
		Datum		values[3];
		bool		nulls[3] = {false, false, false};

		do
		{
			CHECK_FOR_INTERRUPTS();
			n = purge_one(&purges[i], max_rows);
			total += n;
		} while (n >= max_rows);

		values[0] = CStringGetTextDatum(purges[i].what);
		values[1] = Int64GetDatum(total);
		if (purges[i].retention != NULL && *purges[i].retention > 0)
		{
			Interval   *kept = palloc0(sizeof(Interval));

			kept->time = (int64) *purges[i].retention * USECS_PER_SEC;
			values[2] = DirectFunctionCall1(interval_justify_hours,
											IntervalPGetDatum(kept));
		}
		else
			nulls[2] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	SPI_finish();
	return (Datum) 0;
}
