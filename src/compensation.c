/*-------------------------------------------------------------------------
 *
 * compensation.c
 *	  The compensation queue's SQL API: enqueue, retry, cancel, and the
 *	  claim / complete / fail protocol of executors outside the database.
 *
 * An item moves through these statuses:
 *
 *	  pending --claim--> running --success--> succeeded
 *		 ^                  |
 *		 +----failure-------+--last attempt failed--> dead --retry--> pending
 *
 * and any item that has not succeeded can be cancelled.  A claim counts an
 * attempt and is committed before the handler runs, so an attempt cut
 * short by a crash is still counted; a claim whose lease runs out goes back
 * to pending (or dead) with a PM304 attempt row.  compensation_run.c has the
 * worker's side.
 *
 * Rights.  A handler runs as the role that enqueued it, so enqueueing
 * requires EXECUTE on it, checked for the caller's role: current_user at
 * the call, which inside another SECURITY DEFINER function is that
 * function's owner.  That is why enqueue_compensation (like
 * claim_compensations and register_external_handler, which also act for
 * their caller) is not SECURITY DEFINER: a SECURITY DEFINER function cannot
 * see who called it, and the session's role (GetOuterUserId) would be wrong
 * in the other direction: a superuser calling a SECURITY DEFINER function of
 * an unprivileged role would queue that role's handler as the superuser.
 * These functions take their owner's rights themselves, only around their
 * own statements (payments_begin_as_owner; their SET clause pins
 * search_path).
 *
 *-------------------------------------------------------------------------
 */
#include "compensation.h"
#include "worker.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(payments_enqueue_compensation);
PG_FUNCTION_INFO_V1(payments_retry_compensation);
PG_FUNCTION_INFO_V1(payments_cancel_compensation);
PG_FUNCTION_INFO_V1(payments_register_external_handler);
PG_FUNCTION_INFO_V1(payments_claim_compensations);
PG_FUNCTION_INFO_V1(payments_complete_compensation);
PG_FUNCTION_INFO_V1(payments_fail_compensation);

#define DEDUP_KEY_MAX_BYTES		255
#define ERROR_MAX_BYTES			8192
#define LEASE_MAX_USECS			(INT64CONST(7) * USECS_PER_DAY)

/*
 * The next attempt of a failed item: full jitter over an exponential
 * backoff, uniform in [0, min(backoff_max, backoff_base * 2^(attempts-1))]
 * milliseconds; $3 and $4 are backoff_base and backoff_max.  The exponent
 * is capped so that the power cannot overflow.
 */
#define BACKOFF_SQL \
	"clock_timestamp() + random() * least($4::float8," \
	" $3::float8 * power(2::float8, least(attempts - 1, 60)))" \
	" * interval '1 millisecond'"

/* The new status, and the columns that go with it, of an item that failed */
#define FAILED_SET_SQL \
	" status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END," \
	" next_attempt_at = CASE WHEN attempts >= max_attempts THEN next_attempt_at" \
	"  ELSE " BACKOFF_SQL " END," \
	" finished_at = CASE WHEN attempts >= max_attempts THEN clock_timestamp() END," \
	" lease_expires_at = NULL, claim_token = NULL, updated_at = clock_timestamp()"

#define IS_EXTERNAL_SQL(alias) \
	"EXISTS (SELECT FROM @extschema@.external_handlers e WHERE e.handler = " alias ".handler)"

static SPIPlanPtr insert_plan;
static SPIPlanPtr dedup_plan;
static SPIPlanPtr retry_plan;
static SPIPlanPtr cancel_plan;
static SPIPlanPtr status_plan;
static SPIPlanPtr register_plan;
static SPIPlanPtr is_external_plan;
static SPIPlanPtr claim_plan;
static SPIPlanPtr complete_plan;
static SPIPlanPtr fail_plan;
static SPIPlanPtr expire_plan;

/*
 * Check that a function can be a compensation handler and that role may
 * execute it; returns the function's owner.  A handler is a plain function
 * (payload jsonb) RETURNS void.
 */
Oid
compensation_check_handler(Oid handler, Oid role)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	bool		valid;
	Oid			owner;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", handler)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	valid = proc->prokind == PROKIND_FUNCTION && !proc->proretset &&
		proc->pronargs == 1 && proc->proargtypes.values[0] == JSONBOID &&
		proc->prorettype == VOIDOID;
	owner = proc->proowner;
	ReleaseSysCache(tup);

	if (!valid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("function %s cannot be a compensation handler",
						format_procedure(handler)),
				 errdetail("A compensation handler is a function that takes one argument of type jsonb and returns void.")));

	if (pg_proc_aclcheck(handler, role, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(handler)),
				 errdetail("A compensation handler runs as the role that queued it; role \"%s\" may not execute this function.",
						   GetUserNameFromId(role, false))));
	return owner;
}

/* How a handler is stored: its schema-qualified signature. */
char *
compensation_handler_name(Oid handler)
{
	return format_procedure_qualified(handler);
}

/*
 * Record a failed attempt of an item and schedule the next one, or make it
 * dead if that was its last.  worker_token = 0: an external executor's item,
 * which must be running.  Otherwise an item of the worker's claim with that
 * token, which the worker marked succeeded before running it (see
 * compensation_run.c).  Returns false if there was no such item.  The caller
 * is connected to SPI.
 */
bool
compensation_record_failure(int64 id, const char *error, const char *sqlstate,
							int64 worker_token)
{
	static const Oid argtypes[] = {INT8OID, TEXTOID, INT4OID, INT4OID, TEXTOID, INT8OID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};

	payments_prepare(&fail_plan,
					 "WITH failed AS ("
					 " UPDATE @extschema@.compensations c SET last_error = $2," FAILED_SET_SQL
					 " WHERE c.id = $1 AND CASE WHEN $6 = 0"
					 "  THEN c.status = 'running' AND " IS_EXTERNAL_SQL("c")
					 "  ELSE c.status = 'succeeded' AND c.claim_token = $6 END"
					 " RETURNING c.id, c.attempts)"
					 " INSERT INTO @extschema@.compensation_attempts"
					 "  (compensation_id, attempt, failed_at, error, sqlstate)"
					 " SELECT id, attempts, clock_timestamp(), $2, $5 FROM failed",
					 6, argtypes);
	values[0] = Int64GetDatum(id);
	values[1] = CStringGetTextDatum(error);
	values[2] = Int32GetDatum(payments_backoff_base);
	values[3] = Int32GetDatum(payments_backoff_max);
	if (sqlstate != NULL)
		values[4] = CStringGetTextDatum(sqlstate);
	else
		nulls[4] = 'n';
	values[5] = Int64GetDatum(worker_token);
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
	static const Oid argtypes[] = {TEXTOID, INT4OID, INT4OID, INT4OID, TIMESTAMPTZOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

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
					 " RETURNING id, attempts, last_error)"
					 " INSERT INTO @extschema@.compensation_attempts"
					 "  (compensation_id, attempt, failed_at, error, sqlstate)"
					 " SELECT id, attempts, clock_timestamp(), last_error, "
					 "'" COMPENSATION_LEASE_EXPIRED_SQLSTATE "' FROM expired",
					 5, argtypes);
	if (handler != NULL)
		values[0] = CStringGetTextDatum(handler);
	else
		nulls[0] = 'n';
	values[1] = Int32GetDatum(max_items);
	values[2] = Int32GetDatum(payments_backoff_base);
	values[3] = Int32GetDatum(payments_backoff_max);
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	return (int) payments_execute(expire_plan, values, nulls, SPI_OK_INSERT, 0);
}

/* The argument of every function that takes a compensation id */
static int64
arg_id(FunctionCallInfo fcinfo)
{
	payments_arg_not_null(fcinfo, 0, "compensation id");
	return PG_GETARG_INT64(0);
}

static Oid
arg_handler(FunctionCallInfo fcinfo, int argno)
{
	payments_arg_not_null(fcinfo, argno, "compensation handler");
	return PG_GETARG_OID(argno);
}

/*
 * Explain why a change of item id found nothing to change: the item does
 * not exist (PM301), is run by the worker when external_only (PM303), or is
 * in the wrong status (PM302).  Returns without error if its status is
 * "allowed", for the caller to accept as a no-op.
 */
static void
report_state_conflict(int64 id, const char *action, bool external_only,
					  const char *allowed, const char *hint)
{
	Datum		values[1];
	bool		isnull;
	char	   *status;

	payments_prepare(&status_plan,
					 "SELECT c.status, " IS_EXTERNAL_SQL("c")
					 " FROM @extschema@.compensations c WHERE c.id = $1",
					 1, (Oid[]) {INT8OID});
	values[0] = Int64GetDatum(id);
	if (payments_execute(status_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_FOUND),
				 errmsg("compensation %lld does not exist", (long long) id)));

	status = TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
	if (allowed != NULL && strcmp(status, allowed) == 0)
		return;
	if (external_only &&
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
									SPI_tuptable->tupdesc, 2, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_EXTERNAL),
				 errmsg("cannot %s compensation %lld", action, (long long) id),
				 errdetail("Its handler is run by the payments worker, not by an external executor."),
				 errhint("Register the handler with payments.register_external_handler for executors outside the database.")));
	ereport(ERROR,
			(errcode(ERRCODE_PM_COMPENSATION_STATE_CONFLICT),
			 errmsg("cannot %s compensation %lld", action, (long long) id),
			 errdetail("Its status is \"%s\".", status),
			 hint ? errhint("%s", hint) : 0));
}

/*
 * payments.enqueue_compensation(handler, payload, dedup_key, max_attempts,
 * run_at)
 */
Datum
payments_enqueue_compensation(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, JSONBOID, TEXTOID, INT4OID,
	TIMESTAMPTZOID, OIDOID, OIDOID};
	Oid			caller = GetUserId();
	Oid			handler;
	Oid			owner;
	text	   *dedup_key = NULL;
	int32		max_attempts;
	TimestampTz run_at;
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	PaymentsSavedUser saved;
	int64		id = 0;
	bool		isnull;

	handler = arg_handler(fcinfo, 0);
	payments_arg_not_null(fcinfo, 1, "compensation payload");
	if (!PG_ARGISNULL(2))
		dedup_key = payments_arg_text(fcinfo, 2, "dedup key", DEDUP_KEY_MAX_BYTES);
	max_attempts = PG_ARGISNULL(3) ? payments_max_attempts :
		payments_arg_int_range(fcinfo, 3, "max_attempts", 1,
							   COMPENSATION_MAX_ATTEMPTS_LIMIT);
	payments_arg_not_null(fcinfo, 4, "run_at");
	run_at = PG_GETARG_TIMESTAMPTZ(4);
	if (TIMESTAMP_NOT_FINITE(run_at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("run_at must be a finite time")));
	payments_check_writable("enqueue a compensation");
	owner = compensation_check_handler(handler, caller);

	values[0] = CStringGetTextDatum(compensation_handler_name(handler));
	values[1] = PG_GETARG_DATUM(1);
	if (dedup_key != NULL)
		values[2] = PointerGetDatum(dedup_key);
	else
		nulls[2] = 'n';
	values[3] = Int32GetDatum(max_attempts);
	values[4] = TimestampTzGetDatum(run_at);
	values[5] = ObjectIdGetDatum(caller);
	values[6] = ObjectIdGetDatum(owner);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	payments_prepare(&insert_plan,
					 "INSERT INTO @extschema@.compensations"
					 " (handler, payload, dedup_key, max_attempts, next_attempt_at,"
					 "  enqueued_by, handler_owner)"
					 " VALUES ($1, $2, $3, $4, $5, $6::regrole, $7::regrole)"
					 " ON CONFLICT (dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING"
					 " RETURNING id",
					 7, argtypes);
	payments_prepare(&dedup_plan,
					 "SELECT id FROM @extschema@.compensations WHERE dedup_key = $1",
					 1, (Oid[]) {TEXTOID});

	/*
	 * A dedup key already used returns the first item's id.  ON CONFLICT
	 * waits for a concurrent enqueue of the same key to commit or abort;
	 * under READ COMMITTED the SELECT then sees the row that won.  The loop
	 * only repeats if that row is deleted in between.
	 */
	for (int tries = 0; id == 0; tries++)
	{
		if (payments_execute(insert_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0) == 1)
		{
			payments_wake_worker_at_commit();
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		}
		else if (payments_execute(dedup_plan, &values[2], NULL, SPI_OK_SELECT, 0) == 1)
			id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
		else if (tries >= 2)
			elog(ERROR, "compensation with dedup key \"%s\" conflicts but cannot be found",
				 text_to_cstring(dedup_key));
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_INT64(id);
}

/*
 * payments.retry_compensation(id): a dead item goes back to pending, due
 * now, with a fresh attempt budget.  Its attempt rows stay.
 */
Datum
payments_retry_compensation(PG_FUNCTION_ARGS)
{
	Datum		values[1];

	values[0] = Int64GetDatum(arg_id(fcinfo));
	payments_check_writable("retry a compensation");

	SPI_connect();
	payments_prepare(&retry_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'pending', attempts = 0,"
					 "  next_attempt_at = clock_timestamp(), finished_at = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE id = $1 AND status = 'dead'",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(retry_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
		report_state_conflict(DatumGetInt64(values[0]), "retry", false, NULL,
							  "Only a dead compensation can be retried.");
	else
		payments_wake_worker_at_commit();
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * payments.cancel_compensation(id): any item that has not succeeded is
 * taken out of the queue.  An item the worker is running is locked until
 * its attempt ends, so this waits for it and is then refused if it
 * succeeded.  A claim held by an external executor is cancelled: its
 * complete_compensation will be refused.  Cancelling twice is a no-op.
 */
Datum
payments_cancel_compensation(PG_FUNCTION_ARGS)
{
	Datum		values[1];

	values[0] = Int64GetDatum(arg_id(fcinfo));
	payments_check_writable("cancel a compensation");

	SPI_connect();
	payments_prepare(&cancel_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'cancelled', finished_at = clock_timestamp(),"
					 "  lease_expires_at = NULL, claim_token = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE id = $1 AND status IN ('pending', 'running', 'dead')",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(cancel_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
		report_state_conflict(DatumGetInt64(values[0]), "cancel", false,
							  "cancelled", NULL);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * payments.register_external_handler(handler): the worker never runs this
 * handler's items; executors claim them with claim_compensations.
 * Registering twice is a no-op.
 */
Datum
payments_register_external_handler(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, OIDOID};
	Oid			caller = GetUserId();
	Oid			handler = arg_handler(fcinfo, 0);
	Datum		values[2];
	PaymentsSavedUser saved;

	payments_check_writable("register an external compensation handler");
	(void) compensation_check_handler(handler, caller);
	values[0] = CStringGetTextDatum(compensation_handler_name(handler));
	values[1] = ObjectIdGetDatum(caller);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	payments_prepare(&register_plan,
					 "INSERT INTO @extschema@.external_handlers (handler, registered_by)"
					 " VALUES ($1, $2::regrole) ON CONFLICT (handler) DO NOTHING",
					 2, argtypes);
	payments_execute(register_plan, values, NULL, SPI_OK_INSERT, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * payments.claim_compensations(handler, max_items, lease)
 *
 * Hands up to max_items due items of an external handler to the caller,
 * oldest due first, each counted as an attempt and held for the lease.
 * FOR UPDATE SKIP LOCKED makes concurrent claims take disjoint items
 * without waiting for each other.  Claims of this handler whose lease has
 * run out are first given back to the queue, as failed attempts.
 */
Datum
payments_claim_compensations(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, INT4OID, INTERVALOID, INT8OID, TIMESTAMPTZOID};
	Oid			caller = GetUserId();
	Oid			handler = arg_handler(fcinfo, 0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[5];
	char	   *name;
	PaymentsSavedUser saved;
	uint64		n;
	bool		isnull;

	values[1] = Int32GetDatum(payments_arg_int_range(fcinfo, 1, "max_items", 1,
													 COMPENSATION_MAX_ITEMS_LIMIT));
	values[2] = payments_arg_interval(fcinfo, 2, "lease", LEASE_MAX_USECS);
	payments_check_writable("claim compensations");
	(void) compensation_check_handler(handler, caller);
	name = compensation_handler_name(handler);
	values[0] = CStringGetTextDatum(name);
	values[3] = Int64GetDatum((int64) pg_prng_uint64(&pg_global_prng_state));
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());

	InitMaterializedSRF(fcinfo, 0);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();

	payments_prepare(&is_external_plan,
					 "SELECT EXISTS (SELECT FROM @extschema@.external_handlers WHERE handler = $1)",
					 1, (Oid[]) {TEXTOID});
	payments_execute(is_external_plan, values, NULL, SPI_OK_SELECT, 0);
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									1, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_EXTERNAL),
				 errmsg("compensation handler %s is not registered for external executors",
						format_procedure(handler)),
				 errdetail("Its compensations are run by the payments worker."),
				 errhint("Call payments.register_external_handler first.")));

	(void) compensation_expire_leases(name, DatumGetInt32(values[1]));

	payments_prepare(&claim_plan,
					 "WITH claimed AS ("
					 " UPDATE @extschema@.compensations c"
					 " SET status = 'running', attempts = c.attempts + 1,"
					 "  lease_expires_at = clock_timestamp() + $3, claim_token = $4,"
					 "  updated_at = clock_timestamp()"
					 " WHERE c.id = ANY (ARRAY("
					 "  SELECT id FROM @extschema@.compensations"
					 "  WHERE finished_at IS NULL AND next_attempt_at <= $5"
					 "   AND status = 'pending' AND handler = $1"
					 "  ORDER BY next_attempt_at LIMIT $2"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND c.status = 'pending'"
					 " RETURNING c.*)"
					 " SELECT * FROM claimed ORDER BY next_attempt_at, id",
					 5, argtypes);
	n = payments_execute(claim_plan, values, NULL, SPI_OK_SELECT, 0);
	for (uint64 i = 0; i < n; i++)
		tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);

	SPI_finish();
	payments_end_as_owner(&saved);
	return (Datum) 0;
}

/*
 * payments.complete_compensation(id): an external executor did the work of
 * an item it claimed.  Accepted while the item is running, even if the
 * lease has just run out but nobody has taken the item back yet.
 */
Datum
payments_complete_compensation(PG_FUNCTION_ARGS)
{
	Datum		values[1];

	values[0] = Int64GetDatum(arg_id(fcinfo));
	payments_check_writable("complete a compensation");

	SPI_connect();
	payments_prepare(&complete_plan,
					 "UPDATE @extschema@.compensations c"
					 " SET status = 'succeeded', finished_at = clock_timestamp(),"
					 "  lease_expires_at = NULL, claim_token = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE c.id = $1 AND c.status = 'running'"
					 "  AND " IS_EXTERNAL_SQL("c"),
					 1, (Oid[]) {INT8OID});
	if (payments_execute(complete_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
		report_state_conflict(DatumGetInt64(values[0]), "complete", true, NULL,
							  "Only a claimed compensation can be completed; a claim whose lease ran out went back to the queue.");
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * payments.fail_compensation(id, error): an external executor's attempt
 * failed; the item is scheduled again with backoff, or dead.
 */
Datum
payments_fail_compensation(PG_FUNCTION_ARGS)
{
	int64		id = arg_id(fcinfo);
	text	   *error = payments_arg_text(fcinfo, 1, "error", ERROR_MAX_BYTES);

	payments_check_writable("fail a compensation");
	SPI_connect();
	if (!compensation_record_failure(id, text_to_cstring(error), NULL, 0))
		report_state_conflict(id, "fail", true, NULL,
							  "Only a claimed compensation can be failed; a claim whose lease ran out went back to the queue.");
	SPI_finish();
	PG_RETURN_VOID();
}
