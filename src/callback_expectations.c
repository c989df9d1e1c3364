/*-------------------------------------------------------------------------
 *
 * callback_expectations.c
 *	  expect_callback, and the worker's side of callbacks: chasing the
 *	  expected callbacks that did not come, and purging old events.
 *
 * An expectation is met by any routed event for its payment (applied,
 * stale or conflict), received or recorded from a query, before or after
 * its deadline.  Past the deadline the worker queues the expectation's
 * query handler once, as the role that expected the callback, with the
 * rights that role has then; the handler (usually an external one: the
 * application's executor asks the provider's query API) reports what it
 * learnt with record_query_result, which routes like a callback and meets
 * the expectation.
 *
 * Event ids are kept for payments.callback_retention, longer than any
 * provider retries an event, so that a late retry is still a duplicate.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback.h"
#include "citus_shards.h"
#include "compensation.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "worker.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_expect_callback);
PG_FUNCTION_INFO_V1(payments_chase_callbacks);
PG_FUNCTION_INFO_V1(payments_purge_callbacks);

/* The longest wait expect_callback accepts */
#define EXPECT_MAX_USECS	(INT64CONST(366) * USECS_PER_DAY)

static int	callback_retention = 35 * 24 * 3600;

static SPIPlanPtr expect_plan;
static SPIPlanPtr meet_plan;
static SPIPlanPtr due_plan;
static SPIPlanPtr queried_plan;
static SPIPlanPtr purge_events_plan;
static SPIPlanPtr purge_expectations_plan;

void
callback_expectations_init(void)
{
	DefineCustomIntVariable("payments.callback_retention",
							gettext_noop("How long callback event ids and finished expectations are kept."),
							gettext_noop("Longer than any provider retries an event, so that a late retry is still recognized as a duplicate."),
							&callback_retention,
							35 * 24 * 3600,
							1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

/*
 * Mark the expectations of a payment met by event_id; SPI is connected.
 * A query item of theirs that no executor has claimed yet is cancelled:
 * the provider need not be asked any more.  One already claimed runs on,
 * and its result is recorded as a stale or duplicate event; one that the
 * worker holds is skipped rather than waited for.
 */
void
callback_expectations_meet(const char *provider, const char *payment_ref,
						   const char *event_id, Oid tables_owner)
{
	Datum		values[3];
	PaymentsSavedUser saved;
	SPITupleTable *met;
	uint64		n;

	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(payment_ref);
	values[2] = CStringGetTextDatum(event_id);
	payments_begin_as_owner(tables_owner, true, &saved);
	payments_prepare(&meet_plan,
					 "UPDATE @extschema@.expected_callbacks"
					 " SET met_at = now(), met_by = $3"
					 " WHERE provider = $1 AND payment_ref = $2 AND met_at IS NULL"
					 " RETURNING compensation_id",
					 3, (Oid[]) {TEXTOID, TEXTOID, TEXTOID});
	n = payments_execute(meet_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	met = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		item = SPI_getbinval(met->vals[i], met->tupdesc, 1, &isnull);

		if (isnull)
			continue;
		(void) compensation_change(COMPENSATION_CANCEL_PENDING, DatumGetInt64(item),
								   0, NULL, InvalidOid, tables_owner);
	}
	payments_end_as_owner(&saved);
}

/*
 * payments.expect_callback(provider, payment_ref, within, query_handler)
 *
 * A routed event that came before the expectation meets it at once: the
 * provider may call back before the transaction that expects it commits.
 */
Datum
payments_expect_callback(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, INTERVALOID, TEXTOID,
	OIDOID, OIDOID};
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	const char *provider = callback_arg_provider(fcinfo, 0);
	text	   *payment_ref;
	Datum		within;
	Oid			handler;
	Oid			handler_owner;
	Datum		values[6];
	PaymentsSavedUser saved;
	bool		isnull;
	int64		id;

	/* The query would be an item of the queue, run on another node. */
	if (payments_shards_distributed())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot expect a callback while the tables of extension \"payments\" are distributed"),
				 errdetail("The query of an expected callback runs as an item of the compensation queue, on the node of the item's shard, away from the expectations of the node that recorded it."),
				 errhint("See \"Scaling out with Citus\" in the extension's README.")));

	payment_ref = payments_arg_text(fcinfo, 1, "payment_ref", CALLBACK_PAYMENT_REF_MAX_BYTES);
	within = payments_arg_interval(fcinfo, 2, "within", EXPECT_MAX_USECS);
	handler = compensation_arg_handler(fcinfo, 3);
	handler_owner = compensation_check_handler(handler, GetUserId());
	payments_check_not_in_recovery();
	(void) callback_provider_owner(provider, true, tables_owner);

	values[0] = CStringGetTextDatum(provider);
	values[1] = PointerGetDatum(payment_ref);
	values[2] = within;
	values[3] = CStringGetTextDatum(compensation_handler_name(handler));
	values[4] = ObjectIdGetDatum(handler_owner);
	values[5] = ObjectIdGetDatum(GetUserId());

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&expect_plan,
					 "INSERT INTO @extschema@.expected_callbacks"
					 " (provider, payment_ref, deadline, query_handler, handler_owner,"
					 "  expected_by, met_at, met_by)"
					 " SELECT $1, $2, now() + $3, $4, $5::regrole, $6::regrole,"
					 "  CASE WHEN m.event_id IS NOT NULL THEN now() END, m.event_id"
					 " FROM (SELECT NULL::text) AS d"
					 " LEFT JOIN LATERAL (SELECT c.event_id FROM @extschema@.callbacks c"
					 "   WHERE c.provider = $1 AND c.payment_ref = $2 AND c.outcome <> 'new'"
					 "   ORDER BY c.first_delivered_at LIMIT 1) AS m ON true"
					 " RETURNING id",
					 6, argtypes);
	payments_execute(expect_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
	payments_worker_due_at_commit(DatumGetTimestampTz(
		DirectFunctionCall2(timestamptz_pl_interval,
							TimestampTzGetDatum(GetCurrentTransactionStartTimestamp()),
							within)));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_INT64(id);
}

/*
 * Queue the query of one overdue expectation in a subtransaction, so that
 * a handler dropped or no longer callable by its role marks that
 * expectation lost and stops no other.  The expectation is locked and gets
 * the item's id in the same transaction, so it is queued once, without a
 * dedup key (which another role able to call the handler could take
 * first).  Returns the item's id, 0 with *error set, or -1 to leave the
 * expectation for the next round.
 */
typedef struct QueueQuery
{
	const char *handler_name;
	Oid			handler_owner;
	Oid			expected_by;
	Datum		payload;
	Oid			tables_owner;
	int64		item;
} QueueQuery;

static void
queue_query_now(void *arg)
{
	QueueQuery *q = arg;
	Oid			handler;

	handler = compensation_resolve_handler(q->handler_name, q->handler_owner);
	q->item = compensation_enqueue(handler, q->payload, NULL, 0,
								   GetCurrentTransactionStartTimestamp(), 0,
								   q->expected_by, q->tables_owner);
}

static int64
queue_query(int64 id, const char *handler_name, Oid handler_owner,
			Oid expected_by, Datum payload, Oid tables_owner, char **error)
{
	QueueQuery	q = {handler_name, handler_owner, expected_by, payload, tables_owner, 0};
	ErrorData  *edata = payments_run_in_subtransaction(queue_query_now, &q);

	if (edata == NULL)
		return q.item;

	/*
	 * A lock or serialization failure passes, so the expectation is left
	 * for the next round.  Anything else is the expectation's own: it is
	 * lost.
	 */
	if (edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED)
		q.item = -1;
	else
		*error = pstrdup(edata->message);
	FreeErrorData(edata);
	return q.item;
}

/*
 * payments.chase_callbacks(max_rows): the worker's task.  Expectations
 * locked by a session that is meeting them are skipped until next time.
 */
Datum
payments_chase_callbacks(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);
	Datum		values[1];
	SPITupleTable *due;
	uint64		n;

	payments_check_not_in_recovery();
	/* their queries would be items on other nodes (see expect_callback): none */
	if (payments_shards_distributed())
		PG_RETURN_INT32(0);
	values[0] = Int32GetDatum(max_rows);

	SPI_connect();
	payments_prepare(&due_plan,
					 "SELECT id, query_handler, handler_owner::oid, expected_by::oid,"
					 " jsonb_build_object('provider', provider, 'payment_ref', payment_ref,"
					 "   'expectation_id', id)"
					 " FROM @extschema@.expected_callbacks"
					 " WHERE met_at IS NULL AND compensation_id IS NULL AND query_error IS NULL"
					 "   AND deadline <= now()"
					 " ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED",
					 1, (Oid[]) {INT4OID});
	n = payments_execute(due_plan, values, NULL, SPI_OK_SELECT, 0);
	due = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = due->vals[i];
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tup, due->tupdesc, 1, &isnull));
		char	   *error = NULL;
		int64		item;
		Datum		upd[3];
		char		updnulls[3] = {' ', ' ', ' '};

		item = queue_query(id, SPI_getvalue(tup, due->tupdesc, 2),
						   DatumGetObjectId(SPI_getbinval(tup, due->tupdesc, 3, &isnull)),
						   DatumGetObjectId(SPI_getbinval(tup, due->tupdesc, 4, &isnull)),
						   SPI_getbinval(tup, due->tupdesc, 5, &isnull),
						   tables_owner, &error);
		if (item < 0)
			continue;
		upd[0] = Int64GetDatum(id);
		upd[1] = Int64GetDatum(item);
		if (item == 0)
			updnulls[1] = 'n';
		if (error != NULL)
			upd[2] = CStringGetTextDatum(error);
		else
			updnulls[2] = 'n';
		payments_prepare(&queried_plan,
						 "UPDATE @extschema@.expected_callbacks"
						 " SET compensation_id = $2, query_error = $3, queried_at = now()"
						 " WHERE id = $1",
						 3, (Oid[]) {INT8OID, INT8OID, TEXTOID});
		payments_execute(queried_plan, upd, updnulls, SPI_OK_UPDATE, 0);
	}
	SPI_finish();
	PG_RETURN_INT32((int32) n);
}

/*
 * payments.purge_callbacks(max_rows): the worker's task.  Deletes events
 * first delivered longer ago than payments.callback_retention, and
 * expectations as old that are met or whose query is over.
 */
Datum
payments_purge_callbacks(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);
	Datum		values[2];
	uint64		n;

	payments_check_not_in_recovery();
	values[0] = Int32GetDatum(max_rows);
	values[1] = Int32GetDatum(callback_retention);

	SPI_connect();
	payments_prepare(&purge_events_plan,
					 "DELETE FROM @extschema@.callbacks WHERE ctid = ANY (ARRAY("
					 " SELECT ctid FROM @extschema@.callbacks"
					 " WHERE first_delivered_at < now() - $2 * interval '1 second'"
					 " LIMIT $1 FOR UPDATE SKIP LOCKED))",
					 2, (Oid[]) {INT4OID, INT4OID});
	n = payments_execute(purge_events_plan, values, NULL, SPI_OK_DELETE, 0);
	values[0] = Int32GetDatum(max_rows - (int32) n);
	if (n < (uint64) max_rows)
	{
		payments_prepare(&purge_expectations_plan,
						 "DELETE FROM @extschema@.expected_callbacks WHERE id = ANY (ARRAY("
						 " SELECT e.id FROM @extschema@.expected_callbacks e"
						 " WHERE e.created_at < now() - $2 * interval '1 second'"
						 "   AND (e.met_at IS NOT NULL OR e.query_error IS NOT NULL"
						 "        OR coalesce(@extschema@.compensation_status(e.compensation_id), '')"
						 "           NOT IN ('pending', 'running'))"
						 "   AND (e.compensation_id IS NOT NULL OR e.met_at IS NOT NULL"
						 "        OR e.query_error IS NOT NULL)"
						 " LIMIT $1 FOR UPDATE SKIP LOCKED))",
						 2, (Oid[]) {INT4OID, INT4OID});
		n += payments_execute(purge_expectations_plan, values, NULL, SPI_OK_DELETE, 0);
	}
	SPI_finish();
	PG_RETURN_INT32((int32) Min(n, (uint64) PG_INT32_MAX));
}
