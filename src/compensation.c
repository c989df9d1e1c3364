/*-------------------------------------------------------------------------
 *
 * compensation.c
 *	  The compensation queue: enqueue, retry and cancel, and how an item's
 *	  status moves when an attempt fails or a claim's lease runs out.
 *
 * An item moves through these statuses:
 *
 *	  pending --claim--> running --success--> succeeded
 *		 ^                  |
 *		 +----failure-------+--last attempt failed--> dead --retry--> pending
 *
 * and any item that has not succeeded can be cancelled.  An item queued
 * after another (a chain, as a saga's undo is) starts as waiting, never
 * due, and becomes pending once the item it comes after has settled: has
 * succeeded, or was cancelled when its own turn had come.  A dead item
 * therefore halts its chain where it stands, and retrying it resumes the
 * chain.  Cancelling a waiting item passes its place to the items after
 * it: they wait for what it waited for.
 *
 * The transaction that settles an item releases the items after it, but
 * it never waits for one that another transaction has locked, and its
 * snapshot (under REPEATABLE READ) may not show one queued since: the
 * worker's step must never wait on a lock an application holds.  So
 * run_compensations also sweeps, once a second, the waiting items whose
 * item has settled, and releases them (or passes them the place of a
 * cancelled waiting item).  A waiting item is thus released at once in
 * the usual case, and at the latest by the next sweep.  A claim counts an
 * attempt and is committed before the handler runs, so an attempt cut
 * short by a crash is still counted; a claim whose lease runs out goes back
 * to pending (or dead) with a PM304 attempt row.  compensation_run.c has the
 * worker's side, compensation_external.c the executors' outside the
 * database, and compensation_rights.c who may do what.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "compensation.h"
#include "payments.h"
#include "args.h"
#include "citus_shards.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "worker.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "commands/sequence.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_enqueue_compensation);
PG_FUNCTION_INFO_V1(payments_retry_compensation);
PG_FUNCTION_INFO_V1(payments_cancel_compensation);
PG_FUNCTION_INFO_V1(payments_compensation_status);

#define DEDUP_KEY_MAX_BYTES		255

/* The next attempt of a failed item; $3 and $4 are backoff_base and backoff_max */
#define BACKOFF_SQL PAYMENTS_BACKOFF_SQL("$3", "$4")

/* The new status, and the columns that go with it, of an item that failed */
#define FAILED_SET_SQL \
	" status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END," \
	" next_attempt_at = CASE WHEN attempts >= max_attempts THEN next_attempt_at" \
	"  ELSE " BACKOFF_SQL " END," \
	" finished_at = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END," \
	" lease_expires_at = NULL, claim_token = NULL, updated_at = clock_timestamp()"

static int	backoff_base = 1000;
static int	backoff_max = 3600 * 1000;
static int	default_max_attempts = 10;
static int	max_payload_size = 1024 * 1024;

/* The backoff settings and default attempts, for the outbox's retries */
void
compensation_retry_settings(int *base_ms, int *max_ms, int *max_attempts)
{
	*base_ms = backoff_base;
	*max_ms = backoff_max;
	*max_attempts = default_max_attempts;
}

static SPIPlanPtr insert_plan;
static SPIPlanPtr dedup_plan;
static SPIPlanPtr retry_plan;
static SPIPlanPtr cancel_plan;
static SPIPlanPtr status_plan;
static SPIPlanPtr fail_plan;
static SPIPlanPtr expire_plan;
static SPIPlanPtr after_settled_plan;
static SPIPlanPtr sweep_plan;
static SPIPlanPtr dead_insert_plan;
static SPIPlanPtr release_plan;
static SPIPlanPtr pass_place_plan;
static SPIPlanPtr cancel_pending_plan;
static SPIPlanPtr accept_plan;
static SPIPlanPtr status_of_plan;

void
compensation_init(void)
{
	DefineCustomIntVariable("payments.backoff_base",
							gettext_noop("The first retry delay of a failed compensation; each later one doubles it."),
							gettext_noop("The delay is drawn uniformly between zero and "
										 "min(backoff_max, backoff_base * 2^(attempts - 1)) (full jitter)."),
							&backoff_base,
							1000,
							1,
							3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.backoff_max",
							gettext_noop("The longest retry delay of a failed compensation."),
							NULL,
							&backoff_max,
							3600 * 1000,
							1,
							7 * 24 * 3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.max_attempts",
							gettext_noop("How many attempts a compensation gets before it is dead, unless enqueued with its own."),
							NULL,
							&default_max_attempts,
							10,
							1,
							COMPENSATION_MAX_ATTEMPTS_LIMIT,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.max_payload_size",
							gettext_noop("The largest compensation payload that can be queued."),
							gettext_noop("Measured in bytes of the jsonb value as stored, before compression."),
							&max_payload_size,
							1024 * 1024,
							1,
							0x3fffffff,	/* MaxAllocSize: no value is larger */
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}

/*
 * Record a failed attempt of the item that claim token holds and schedule
 * the next one, or make the item dead if that was its last.  external:
 * an external executor's claim, which must be running; otherwise an item of
 * the worker's claim, which the worker marked succeeded before running it
 * (see compensation_run.c).  The error is at most
 * COMPENSATION_ERROR_MAX_BYTES long: fail_compensation refuses a longer
 * one and the worker clips a handler's.  Returns false if the token holds
 * no such item.  The caller is connected to SPI.
 */
bool
compensation_record_failure(int64 id, const char *error, const char *sqlstate,
							int64 token, bool external)
{
	static const Oid argtypes[] = {INT8OID, TEXTOID, INT4OID, INT4OID, TEXTOID,
	INT8OID, BOOLOID, INT8OID};
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	payments_prepare(&fail_plan,
					 "WITH failed AS ("
					 " UPDATE @extschema@.compensations c SET last_error = $2," FAILED_SET_SQL
					 " WHERE c.id = $1 AND c.claim_token = $6 AND CASE WHEN $7"
					 "  THEN c.status = 'running' AND " IS_EXTERNAL_SQL("c")
					 "  ELSE c.status = 'succeeded' END"
					 " RETURNING c.id, c.attempts, c.flow)"
					 " INSERT INTO @extschema@.compensation_attempts"
					 "  (id, compensation_id, attempt, failed_at, error, sqlstate, flow)"
					 " SELECT $8 + nextval('@extschema@.compensation_attempts_id_seq'),"
					 "  id, attempts, clock_timestamp(), $2, $5, flow FROM failed",
					 8, argtypes);
	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error);
	values[2] = Int32GetDatum(backoff_base);
	values[3] = Int32GetDatum(backoff_max);
	if (sqlstate != NULL)
		values[4] = CStringGetTextDatum(sqlstate);
	else
		nulls[4] = 'n';
	values[5] = Int64GetDatum(token);
	values[6] = BoolGetDatum(external);
	values[7] = Int64GetDatum(payments_shard_id_base());
	return payments_execute(fail_plan, values, nulls, SPI_OK_INSERT, 0) == 1;
}

/*
 * Give claims whose lease has run out back to the queue (or make them dead)
 * as failed attempts, at most max_items of them; handler NULL means every
 * handler.  Items being run right now are locked and skipped.  The caller
 * is connected to SPI.
 */
int
compensation_expire_leases(const char *handler, int max_items)
{
	static const Oid argtypes[] = {TEXTOID, INT4OID, INT4OID, INT4OID, TIMESTAMPTZOID,
	INT8OID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	/*
	 * Running items were due when claimed, so the due index finds them; $5,
	 * the current time, bounds its scan (see claim_due).
	 */
	payments_prepare(&expire_plan,
					 "WITH expired AS ("
					 " UPDATE @extschema@.compensations SET"
					 "  last_error = 'the claim''s lease expired before the attempt finished',"
					 FAILED_SET_SQL
					 " WHERE id = ANY (ARRAY("
					 "  SELECT id FROM @extschema@.compensations"
					 "  WHERE finished_at IS NULL AND next_attempt_at <= $5"
					 "   AND status = 'running' AND lease_expires_at <= $5"
					 "   AND ($1::text IS NULL OR handler = $1)"
					 "  ORDER BY next_attempt_at LIMIT $2"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND status = 'running' AND lease_expires_at <= $5"
					 " RETURNING id, attempts, last_error, flow)"
					 " INSERT INTO @extschema@.compensation_attempts"
					 "  (id, compensation_id, attempt, failed_at, error, sqlstate, flow)"
					 " SELECT $6 + nextval('@extschema@.compensation_attempts_id_seq'),"
					 "  id, attempts, clock_timestamp(), last_error, "
					 "'" COMPENSATION_LEASE_EXPIRED_SQLSTATE "', flow FROM expired",
					 6, argtypes);
	if (handler != NULL)
		values[0] = CStringGetTextDatum(handler);
	else
		nulls[0] = 'n';
	values[1] = Int32GetDatum(max_items);
	values[2] = Int32GetDatum(backoff_base);
	values[3] = Int32GetDatum(backoff_max);
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[5] = Int64GetDatum(payments_shard_id_base());
	return (int) payments_execute(expire_plan, values, nulls, SPI_OK_INSERT, 0);
}

/* payments.max_payload_size */
int
compensation_max_payload_size(void)
{
	return max_payload_size;
}

/* The argument of every function that takes a compensation id */
int64
compensation_arg_id(FunctionCallInfo fcinfo)
{
	payments_arg_not_null(fcinfo, 0, "compensation id");
	return PG_GETARG_INT64(0);
}

Oid
compensation_arg_handler(FunctionCallInfo fcinfo, int argno)
{
	payments_arg_not_null(fcinfo, argno, "compensation handler");
	return PG_GETARG_OID(argno);
}

/*
 * An item's status, its claim token (0 if none) and whether its handler is
 * external, read to explain why a change found nothing to change; an item
 * that no longer exists (deleted by hand since the rights check) is PM301.
 */
char *
compensation_item_state(int64 id, int64 *token, bool *external)
{
	Datum		values[1];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Datum		d;

	payments_prepare(&status_plan,
					 "SELECT c.status, c.claim_token, " IS_EXTERNAL_SQL("c")
					 " FROM @extschema@.compensations c WHERE c.id = $1",
					 1, (Oid[]) {INT8OID});
	values[0] = Int64GetDatum(id);
	if (payments_execute(status_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_FOUND),
				 errmsg("compensation %lld does not exist", (long long) id)));
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	d = SPI_getbinval(tup, desc, 2, &isnull);
	*token = isnull ? 0 : DatumGetInt64(d);
	*external = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
	return TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
}

/*
 * payments.enqueue_compensation(handler, payload, dedup_key, max_attempts,
 * run_at, after).  Version 0.2.0 declared it without after, and its
 * declaration calls this function until the update.
 */
Datum
payments_enqueue_compensation(PG_FUNCTION_ARGS)
{
	Oid			handler;
	text	   *dedup_key = NULL;
	int32		max_attempts;
	TimestampTz run_at;
	int64		after = 0;

	handler = compensation_arg_handler(fcinfo, 0);
	payments_arg_not_null(fcinfo, 1, "compensation payload");
	if (!PG_ARGISNULL(2))
		dedup_key = payments_arg_text(fcinfo, 2, "dedup key", DEDUP_KEY_MAX_BYTES);
	max_attempts = PG_ARGISNULL(3) ? default_max_attempts :
		payments_arg_int_range(fcinfo, 3, "max_attempts", 1,
							   COMPENSATION_MAX_ATTEMPTS_LIMIT);
	payments_arg_not_null(fcinfo, 4, "run_at");
	run_at = PG_GETARG_TIMESTAMPTZ(4);
	if (TIMESTAMP_NOT_FINITE(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be a finite time")));
	if (PG_NARGS() > 5 && !PG_ARGISNULL(5))
	{
		after = PG_GETARG_INT64(5);
		if (after <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_PM_COMPENSATION_NOT_FOUND),
					 errmsg("compensation %lld does not exist", (long long) after)));
		if (run_at > GetCurrentTimestamp())
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a compensation queued after another cannot have a later run_at"),
					 errdetail("It runs as soon as compensation %lld has succeeded or been cancelled.",
							   (long long) after)));
	}

	PG_RETURN_INT64(compensation_enqueue(handler, PG_GETARG_DATUM(1), dedup_key,
										 max_attempts, run_at, after, GetUserId(),
										 payments_function_owner(fcinfo->flinfo->fn_oid)));
}

/*
 * Refuse a payload larger than payments.max_payload_size.  The raw size
 * (uncompressed, header included) is measured without detoasting: the
 * worker holds every payload of a batch in memory.
 */
void
compensation_check_payload(Datum payload)
{
	Size		payload_size = toast_raw_datum_size(payload);

	if (payload_size > (Size) max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("compensation payload is too large"),
				 errdetail("The payload takes %zu bytes; the limit, payments.max_payload_size, is %d bytes.",
						   payload_size, max_payload_size),
				 errhint("Store large data in a table of your own and queue its key.")));
}

/*
 * Whether an item has settled, for the items queued after it: succeeded
 * (not merely marked so by the worker's batch that is running it now, whose
 * handler may still fail), or cancelled when its turn had come (a waiting
 * item keeps its infinite next_attempt_at when cancelled).
 */
#define SETTLED_SQL(alias, token) \
	"((" alias ".status = 'succeeded' AND (" token " IS NULL" \
	"   OR " alias ".claim_token IS DISTINCT FROM " token "))" \
	" OR (" alias ".status = 'cancelled' AND " alias ".next_attempt_at <> 'infinity'))"

/*
 * Whether the item an item comes after has settled, and its flow, which
 * the new item joins (palloc'd in the caller's context).  No lock is
 * taken: an item queued while it settles may be left waiting, and the
 * sweep releases it.  PM301 if it does not exist.  The caller is connected
 * to SPI.
 */
static bool
after_settled(int64 after, text **flow)
{
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	bool		isnull;

	payments_prepare(&after_settled_plan,
					 "SELECT " SETTLED_SQL("c", "$2::bigint") ", c.flow"
					 " FROM @extschema@.compensations c WHERE c.id = $1",
					 2, (Oid[]) {INT8OID, INT8OID});
	values[0] = Int64GetDatum(after);
	values[1] = Int64GetDatum(compensation_batch_token);
	if (compensation_batch_token == 0)
		nulls[1] = 'n';
	if (payments_execute(after_settled_plan, values, nulls, SPI_OK_SELECT, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_FOUND),
				 errmsg("compensation %lld does not exist", (long long) after)));
	*flow = (text *) SPI_datumTransfer(SPI_getbinval(SPI_tuptable->vals[0],
													 SPI_tuptable->tupdesc, 2, &isnull),
									   false, -1);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									  SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * The id of a new item, from the queue's sequence (unique across nodes
 * once distributed, see citus_shards.c), and its flow: the flow of the
 * item it comes after (after_flow, NULL if none), else its dedup key, else
 * its id.  The caller acts as the tables' owner.
 */
int64
compensation_new_item(text *after_flow, text *dedup_key, text **flow)
{
	int64		id;

	id = payments_shard_unique_id(nextval_internal(payments_relation(PAYMENTS_REL_COMPENSATIONS_ID_SEQ),
												   false));
	if (after_flow != NULL)
		*flow = after_flow;
	else if (dedup_key != NULL)
		*flow = dedup_key;
	else
		*flow = cstring_to_text(psprintf(INT64_FORMAT, id));
	return id;
}

/*
 * Queue handler(payload) to run as caller, which must be able to call the
 * handler directly; the extension's tables are written as tables_owner.
 * max_attempts 0 means payments.max_attempts.  after, unless 0, is an item
 * the caller may change (see compensation_rights.c) that this one waits
 * for.  Returns the item's id, or the id of the item queued before with
 * the same handler and dedup key.  Other components queue their items here
 * too (a callback's on_conflict handler, an expected callback's query, a
 * saga's undo).
 */
int64
compensation_enqueue(Oid handler, Datum payload, text *dedup_key,
					 int32 max_attempts, TimestampTz run_at, int64 after,
					 Oid caller, Oid tables_owner)
{
	Oid			owner;
	text	   *flow;
	int64		id;
	PaymentsShardContext previous;

	compensation_check_payload(payload);
	if (max_attempts == 0)
		max_attempts = default_max_attempts;
	payments_check_not_in_recovery();

	/* Before the dedup lookup: a key is only looked up by its handler's users. */
	owner = compensation_check_handler(handler, caller);
	if (!payments_shards_distributed())
		return compensation_enqueue_here(handler, payload, dedup_key, max_attempts,
										 run_at, after, caller, tables_owner,
										 0, NULL);

	id = compensation_route(after, dedup_key, caller, tables_owner, &flow);
	if (!payments_shard_local(flow))
		return compensation_enqueue_routed(flow, id, compensation_handler_name(handler),
										   owner, payload, dedup_key, max_attempts,
										   run_at, after, caller, tables_owner, NULL);
	previous = payments_shard_enter(flow, "compensation flow");
	id = compensation_enqueue_here(handler, payload, dedup_key, max_attempts,
								   run_at, after, caller, tables_owner, id, flow);
	payments_shard_leave(previous);
	return id;
}

/*
 * compensation_enqueue on this node (on the shard of the flow entered
 * once the queue is distributed), with the item's id and flow if the
 * caller chose them (id 0 otherwise).
 */
int64
compensation_enqueue_here(Oid handler, Datum payload, text *dedup_key,
						  int32 max_attempts, TimestampTz run_at, int64 after,
						  Oid caller, Oid tables_owner, int64 id, text *flow)
{
	static const Oid argtypes[] = {TEXTOID, JSONBOID, TEXTOID, INT4OID,
	TIMESTAMPTZOID, OIDOID, OIDOID, INT8OID, INT8OID, TEXTOID};
	Oid			owner;
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', 'n', ' ', ' '};
	text	   *after_flow = NULL;
	Datum		dedup_values[2];
	PaymentsSavedUser saved;
	bool		isnull;

	owner = compensation_check_handler(handler, caller);

	values[0] = CStringGetTextDatum(compensation_handler_name(handler));
	values[1] = payload;
	if (dedup_key != NULL)
		values[2] = PointerGetDatum(dedup_key);
	else
		nulls[2] = 'n';
	values[3] = Int32GetDatum(max_attempts);
	values[4] = TimestampTzGetDatum(run_at);
	values[5] = ObjectIdGetDatum(caller);
	values[6] = ObjectIdGetDatum(owner);
	dedup_values[0] = values[0];
	dedup_values[1] = values[2];

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	if (after != 0)
	{
		compensation_check_item_rights(after, caller, false);
		values[7] = Int64GetDatum(after);
		nulls[7] = ' ';
		if (!after_settled(after, &after_flow))
			values[4] = TimestampTzGetDatum(DT_NOEND);
	}
	if (id == 0)
		id = compensation_new_item(after_flow, dedup_key, &flow);
	values[8] = Int64GetDatum(id);
	values[9] = PointerGetDatum(flow);
	id = 0;

	/*
	 * A waiting item, whose next attempt is at infinity, is never due.  The
	 * only conflict an insert can meet is on the dedup key: its id is new.
	 */
	payments_prepare(&insert_plan,
					 "INSERT INTO @extschema@.compensations"
					 " (handler, payload, dedup_key, max_attempts, next_attempt_at,"
					 "  enqueued_by, handler_owner, after, status, id, flow)"
					 " VALUES ($1, $2, $3, $4, $5, $6::regrole, $7::regrole, $8,"
					 "  CASE WHEN $5 = 'infinity' THEN 'waiting' ELSE 'pending' END,"
					 "  $9, $10)"
					 " ON CONFLICT DO NOTHING"
					 " RETURNING id",
					 10, argtypes);
	payments_prepare(&dedup_plan,
					 "SELECT id, enqueued_by::oid FROM @extschema@.compensations"
					 " WHERE handler = $1 AND dedup_key = $2",
					 2, (Oid[]) {TEXTOID, TEXTOID});

	/*
	 * A dedup key already used with this handler returns the first item's
	 * id.  ON CONFLICT waits for a concurrent enqueue of the same key to
	 * commit or abort; under READ COMMITTED the SELECT then sees the row
	 * that won.  The loop only repeats if that row is deleted in between.
	 */
	for (int tries = 0; id == 0; tries++)
	{
		if (payments_execute(insert_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0) == 1)
		{
			payments_wake_worker_at_commit();
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		}
		else if (dedup_key == NULL)
			elog(ERROR, "compensation insert returned no row");
		else if (payments_execute(dedup_plan, dedup_values, NULL, SPI_OK_SELECT, 0) == 1)
		{
			HeapTuple	tup = SPI_tuptable->vals[0];
			Oid			first_by;

			first_by = DatumGetObjectId(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull));

			/*
			 * Another role's item: returning its id would tell the caller
			 * about it, and silently adding nothing would let that role
			 * squat the caller's key.
			 */
			if (!has_privs_of_role(caller, first_by))
				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errmsg("dedup key \"%s\" of compensation handler %s is taken by another role",
								text_to_cstring(dedup_key), format_procedure(handler)),
						 errdetail("A compensation with this handler and dedup key was queued by a role whose privileges role \"%s\" does not have.",
								   GetUserNameFromId(caller, false)),
						 errhint("Every role that may execute a handler shares its dedup keys; use keys that cannot collide, or a handler that only your role may execute.")));
			id = DatumGetInt64(SPI_getbinval(tup, SPI_tuptable->tupdesc, 1, &isnull));
		}
		else if (tries >= 2)
			elog(ERROR, "compensation with dedup key \"%s\" conflicts but cannot be found",
				 text_to_cstring(dedup_key));
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	return id;
}

/*
 * payments.retry_compensation(id): a dead item goes back to pending, due
 * now, with a fresh attempt budget.  Its attempt rows stay.
 */
Datum
payments_retry_compensation(PG_FUNCTION_ARGS)
{
	int64		id = compensation_arg_id(fcinfo);

	payments_check_not_in_recovery();
	compensation_change(COMPENSATION_RETRY, id, 0, NULL, GetUserId(),
						payments_function_owner(fcinfo->flinfo->fn_oid));
	PG_RETURN_VOID();
}

/* retry_compensation on the node of the item's flow */
void
compensation_retry_here(int64 id, Oid caller, Oid tables_owner)
{
	Datum		values[1];
	PaymentsSavedUser saved;

	values[0] = Int64GetDatum(id);
	compensation_begin_item_change(caller, tables_owner, id, false, &saved);
	/*
	 * A link of a chain that was queued dead (see compensation_enqueue_dead)
	 * waits for its turn if it has not come yet.
	 */
	payments_prepare(&retry_plan,
					 "UPDATE @extschema@.compensations c"
					 " SET status = CASE WHEN t.due THEN 'pending' ELSE 'waiting' END,"
					 "  attempts = 0, finished_at = NULL, updated_at = clock_timestamp(),"
					 "  next_attempt_at = CASE WHEN t.due THEN clock_timestamp()"
					 "   ELSE 'infinity' END"
					 " FROM (SELECT c2.after IS NULL"
					 "   OR NOT EXISTS (SELECT FROM @extschema@.compensations p WHERE p.id = c2.after)"
					 "   OR EXISTS (SELECT FROM @extschema@.compensations p"
					 "   WHERE p.id = c2.after AND " SETTLED_SQL("p", "NULL::bigint") ") AS due"
					 "  FROM @extschema@.compensations c2 WHERE c2.id = $1) t"
					 " WHERE c.id = $1 AND c.status = 'dead'",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(retry_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
	{
		int64		token;
		bool		external;
		char	   *status = compensation_item_state(id, &token, &external);

		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_STATE_CONFLICT),
				 errmsg("cannot retry compensation %lld", (long long) id),
				 errdetail("Its status is \"%s\".", status),
				 errhint("Only a dead compensation can be retried.")));
	}
	payments_wake_worker_at_commit();
	compensation_end_item_change(&saved);
}

/*
 * The items queued after the ones in ids (an int8[] datum) are due now: the
 * items they waited for have settled.  One that another transaction holds
 * is skipped, not waited for, and left to the sweep.  The caller is
 * connected to SPI.
 */
void
compensation_release_next(Datum ids)
{
	payments_prepare(&release_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'pending', next_attempt_at = clock_timestamp(),"
					 "  updated_at = clock_timestamp()"
					 " WHERE id = ANY (ARRAY("
					 "  SELECT id FROM @extschema@.compensations"
					 "  WHERE after = ANY ($1) AND status = 'waiting'"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND status = 'waiting'",
					 1, (Oid[]) {INT8ARRAYOID});
	if (payments_execute(release_plan, &ids, NULL, SPI_OK_UPDATE, 0) > 0)
		payments_wake_worker_at_commit();
}

/*
 * The sweep: up to max_items waiting items whose item has settled become
 * pending; those after a cancelled waiting item now wait for what it waited
 * for.  Waiting items are the end of the due index (next_attempt_at is
 * infinity), so the scan reads nothing else.  Items that other
 * transactions hold are skipped.  Returns how many items changed.  The
 * caller is connected to SPI.
 */
int
compensation_release_stranded(int max_items)
{
	Datum		values[1];
	int			n;

	payments_prepare(&sweep_plan,
					 "UPDATE @extschema@.compensations w SET"
					 " status = CASE WHEN p.status = 'succeeded' OR p.next_attempt_at <> 'infinity'"
					 "  THEN 'pending' ELSE 'waiting' END,"
					 " next_attempt_at = CASE WHEN p.status = 'succeeded' OR p.next_attempt_at <> 'infinity'"
					 "  THEN clock_timestamp() ELSE w.next_attempt_at END,"
					 " after = CASE WHEN p.status = 'succeeded' OR p.next_attempt_at <> 'infinity'"
					 "  THEN w.after ELSE p.after END,"
					 " updated_at = clock_timestamp()"
					 " FROM @extschema@.compensations p"
					 " WHERE w.id = ANY (ARRAY("
					 "  SELECT s.id FROM @extschema@.compensations s"
					 "  JOIN @extschema@.compensations a ON a.id = s.after"
					 "  WHERE s.finished_at IS NULL AND s.next_attempt_at = 'infinity'"
					 "   AND s.status = 'waiting' AND a.status IN ('succeeded', 'cancelled')"
					 "  LIMIT $1 FOR UPDATE OF s SKIP LOCKED))"
					 "  AND w.status = 'waiting' AND p.id = w.after"
					 "  AND p.status IN ('succeeded', 'cancelled')",
					 1, (Oid[]) {INT4OID});
	values[0] = Int32GetDatum(max_items);
	n = (int) payments_execute(sweep_plan, values, NULL, SPI_OK_UPDATE, 0);
	if (n > 0)
		payments_wake_worker_at_commit();
	return n;
}

/*
 * Queue a link of a chain whose handler cannot be queued now (it was
 * dropped, it changed owner, or the role may no longer execute it) as dead
 * from the start, with error as its last error, so that the rest of the
 * chain is queued and halts there; retry_compensation resumes it once the
 * handler is right again, and the worker checks the handler then as for
 * any item.  Until the item it comes after settles, its next attempt is at
 * infinity, as for a waiting item: its turn has not come, so cancelling it
 * passes its place instead of releasing the next link.  Returns its id.
 */
int64
compensation_enqueue_dead(const char *handler, Oid handler_owner, Datum payload,
						  int64 after, Oid caller, Oid tables_owner,
						  const char *error)
{
	text	   *flow;
	int64		id;
	PaymentsShardContext previous;

	if (!payments_shards_distributed())
		return compensation_enqueue_dead_here(handler, handler_owner, payload,
											  after, caller, tables_owner, error,
											  0, NULL);
	id = compensation_route(after, NULL, caller, tables_owner, &flow);
	if (!payments_shard_local(flow))
		return compensation_enqueue_routed(flow, id, handler, handler_owner,
										   payload, NULL, default_max_attempts,
										   0, after, caller, tables_owner, error);
	previous = payments_shard_enter(flow, "compensation flow");
	id = compensation_enqueue_dead_here(handler, handler_owner, payload, after,
										caller, tables_owner, error, id, flow);
	payments_shard_leave(previous);
	return id;
}

/* compensation_enqueue_dead on this node, as compensation_enqueue_here */
int64
compensation_enqueue_dead_here(const char *handler, Oid handler_owner,
							   Datum payload, int64 after, Oid caller,
							   Oid tables_owner, const char *error, int64 id,
							   text *flow)
{
	static const Oid argtypes[] = {TEXTOID, JSONBOID, INT4OID, OIDOID, OIDOID,
	INT8OID, TEXTOID, BOOLOID, INT8OID, TEXTOID};
	Datum		values[10];
	char		nulls[10] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	PaymentsSavedUser saved;
	text	   *after_flow = NULL;

	values[0] = CStringGetTextDatum(handler);
	values[1] = payload;
	values[2] = Int32GetDatum(default_max_attempts);
	values[3] = ObjectIdGetDatum(caller);
	values[4] = ObjectIdGetDatum(handler_owner);
	values[5] = Int64GetDatum(after);
	nulls[5] = after == 0 ? 'n' : ' ';
	values[6] = CStringGetTextDatum(error);

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	values[7] = BoolGetDatum(after == 0 || after_settled(after, &after_flow));
	if (id == 0)
		id = compensation_new_item(after_flow, NULL, &flow);
	values[8] = Int64GetDatum(id);
	values[9] = PointerGetDatum(flow);
	payments_prepare(&dead_insert_plan,
					 "INSERT INTO @extschema@.compensations"
					 " (handler, payload, max_attempts, next_attempt_at, enqueued_by,"
					 "  handler_owner, after, status, finished_at, last_error, id, flow)"
					 " VALUES ($1, $2, $3,"
					 "  CASE WHEN $8 THEN clock_timestamp() ELSE 'infinity' END,"
					 "  $4::regrole, $5::regrole, $6, 'dead', clock_timestamp(), $7,"
					 "  $9, $10)",
					 10, argtypes);
	payments_execute(dead_insert_plan, values, nulls, SPI_OK_INSERT, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	return id;
}

/* An int8[] of ids, for "id = ANY ($1)" */
Datum
compensation_ids_array(const int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * payments.cancel_compensation(id): any item that has not succeeded is
 * taken out of the queue.  An item the worker is running is locked until
 * its attempt ends, so this waits for it and is then refused if it
 * succeeded.  A claim held by an external executor is cancelled: its
 * complete_compensation will be refused.  Cancelling twice is a no-op.
 * The items queued after it are released, or, if it was itself waiting,
 * wait for what it waited for.
 */
Datum
payments_cancel_compensation(PG_FUNCTION_ARGS)
{
	int64		id = compensation_arg_id(fcinfo);

	payments_check_not_in_recovery();
	compensation_change(COMPENSATION_CANCEL, id, 0, NULL, GetUserId(),
						payments_function_owner(fcinfo->flinfo->fn_oid));
	PG_RETURN_VOID();
}

/* cancel_compensation on the node of the item's flow */
void
compensation_cancel_here(int64 id, Oid caller, Oid tables_owner)
{
	Datum		values[2];
	PaymentsSavedUser saved;
	bool		isnull;

	values[0] = Int64GetDatum(id);
	compensation_begin_item_change(caller, tables_owner, id, false, &saved);
	payments_prepare(&cancel_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'cancelled', finished_at = clock_timestamp(),"
					 "  lease_expires_at = NULL, claim_token = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE id = $1 AND status IN ('pending', 'running', 'dead', 'waiting')"
					 " RETURNING next_attempt_at = 'infinity', after",
					 1, (Oid[]) {INT8OID});
	payments_prepare(&pass_place_plan,
					 "UPDATE @extschema@.compensations"
					 " SET after = $2, updated_at = clock_timestamp()"
					 " WHERE after = $1 AND status = 'waiting'",
					 2, (Oid[]) {INT8OID, INT8OID});

	if (payments_execute(cancel_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		/* A waiting item passes its place; one whose turn had come releases. */
		if (DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull)))
		{
			values[1] = SPI_getbinval(tup, desc, 2, &isnull);
			payments_execute(pass_place_plan, values, NULL, SPI_OK_UPDATE, 0);
		}
		else
			compensation_release_next(compensation_ids_array(&id, 1));
	}
	else
	{
		int64		token;
		bool		external;
		char	   *status = compensation_item_state(id, &token, &external);

		if (strcmp(status, "cancelled") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_PM_COMPENSATION_STATE_CONFLICT),
					 errmsg("cannot cancel compensation %lld", (long long) id),
					 errdetail("Its status is \"%s\".", status)));
	}
	compensation_end_item_change(&saved);
}

/*
 * The changes other components make to an item they queued, as the
 * tables' owner, on the node of its flow: a met callback cancels its query
 * if it is still pending (one that runs is skipped, not waited for), and
 * an accepted difference cancels its heal if it is dead.  Returns the
 * item's status afterwards, NULL if there is no such item (or, for the
 * first, if it was not pending).
 */
char *
compensation_settle_here(CompensationChange change, int64 id, Oid tables_owner)
{
	Datum		values[1] = {Int64GetDatum(id)};
	PaymentsSavedUser saved;
	char	   *status;

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	if (change == COMPENSATION_CANCEL_PENDING)
	{
		payments_prepare(&cancel_pending_plan,
						 "UPDATE @extschema@.compensations"
						 " SET status = 'cancelled', finished_at = clock_timestamp(),"
						 "  lease_expires_at = NULL, claim_token = NULL,"
						 "  updated_at = clock_timestamp()"
						 " WHERE id = (SELECT id FROM @extschema@.compensations"
						 "  WHERE id = $1 AND status = 'pending' FOR UPDATE SKIP LOCKED)"
						 " RETURNING status",
						 1, (Oid[]) {INT8OID});
		payments_execute(cancel_pending_plan, values, NULL,
						 SPI_OK_UPDATE_RETURNING, 0);
	}
	else
	{
		Assert(change == COMPENSATION_ACCEPT);
		payments_prepare(&accept_plan,
						 "UPDATE @extschema@.compensations"
						 " SET status = CASE WHEN status = 'dead' THEN 'cancelled' ELSE status END,"
						 "  finished_at = CASE WHEN status = 'dead' THEN pg_catalog.clock_timestamp()"
						 "                ELSE finished_at END"
						 " WHERE id = $1 RETURNING status",
						 1, (Oid[]) {INT8OID});
		payments_execute(accept_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	}
	status = payments_spi_first_text(1);
	SPI_finish();
	payments_end_as_owner(&saved);
	return status;
}

/*
 * payments.compensation_status(id): the status of item id, read over every
 * shard once the queue is distributed; NULL if there is none, or if the
 * caller may not see it (it is no member of the role that queued it, nor
 * of payments_operator).  The views of the other components read their
 * items through it, and so do their purges and checks.
 */
Datum
payments_compensation_status(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Datum		values[1] = {PG_GETARG_DATUM(0)};
	PaymentsSavedUser saved;
	char	   *status = NULL;
	uint64		n;

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	/* the role by name: each node has OIDs of its own (doc/citus.md) */
	if (payments_shards_distributed())
		n = payments_execute_citus("SELECT status, pg_catalog.pg_get_userbyid(enqueued_by)"
								   " FROM @extschema@.compensations WHERE id = $1",
								   1, (Oid[]) {INT8OID}, values, NULL, SPI_OK_SELECT);
	else
	{
		payments_prepare(&status_of_plan,
						 "SELECT status, pg_catalog.pg_get_userbyid(enqueued_by)"
						 " FROM @extschema@.compensations WHERE id = $1",
						 1, (Oid[]) {INT8OID});
		n = payments_execute(status_of_plan, values, NULL, SPI_OK_SELECT, 0);
	}
	if (n > 0)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		Oid			enqueued_by = name != NULL ? get_role_oid(name, true) : InvalidOid;

		if ((OidIsValid(enqueued_by) && has_privs_of_role(caller, enqueued_by)) ||
			payments_is_operator(caller))
			status = payments_spi_first_text(1);
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	if (status == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(status));
}
