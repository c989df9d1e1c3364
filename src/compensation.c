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
 * Rights.  A handler runs as the role that queued it, so enqueueing
 * requires what calling it directly would: USAGE on its schema and EXECUTE
 * on it, checked for the caller's role (compensation_check_handler, which
 * the worker calls again before every run).  So none of these functions is
 * SECURITY DEFINER (owner_rights.c says why); they take their owner's
 * rights themselves, only around their own statements (their SET clause
 * pins search_path).
 *
 * Who may do what:
 *	- enqueue: USAGE + EXECUTE on the handler.  A dedup key belongs to its
 *	  handler; a key already used by a role whose privileges the caller does
 *	  not have is refused without its item's id (a role must neither squat
 *	  another's key silently nor learn its items).
 *	- register / unregister an external handler: the function's owner or a
 *	  member of the owning role, with USAGE + EXECUTE.
 *	- claim: USAGE + EXECUTE on the handler (claims hand out payloads).
 *	- cancel / retry: the role that queued the item or its members, and
 *	  members of payments_operator.
 *	- complete / fail: the same roles or members of the role that claimed
 *	  it, and only with the token of the claim that holds it (PM302 else).
 * A refused caller gets 42501 whether or not the id exists, unless it is an
 * operator (or superuser), who may see every item: ids are not secrets, but
 * the queue should not tell one role what another has queued.  Rights are
 * checked on an unlocked read, before any row is locked, so that a role
 * with no rights on an item cannot make anyone wait for it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "compensation.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "worker.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(payments_enqueue_compensation);
PG_FUNCTION_INFO_V1(payments_retry_compensation);
PG_FUNCTION_INFO_V1(payments_cancel_compensation);
PG_FUNCTION_INFO_V1(payments_register_external_handler);
PG_FUNCTION_INFO_V1(payments_unregister_external_handler);
PG_FUNCTION_INFO_V1(payments_claim_compensations);
PG_FUNCTION_INFO_V1(payments_complete_compensation_0_2);
PG_FUNCTION_INFO_V1(payments_fail_compensation_0_2);
PG_FUNCTION_INFO_V1(payments_complete_compensation);
PG_FUNCTION_INFO_V1(payments_fail_compensation);

#define DEDUP_KEY_MAX_BYTES		255
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

static int	backoff_base = 1000;
static int	backoff_max = 3600 * 1000;
static int	default_max_attempts = 10;
static int	max_payload_size = 1024 * 1024;

static SPIPlanPtr insert_plan;
static SPIPlanPtr dedup_plan;
static SPIPlanPtr retry_plan;
static SPIPlanPtr cancel_plan;
static SPIPlanPtr status_plan;
static SPIPlanPtr rights_plan;
static SPIPlanPtr register_plan;
static SPIPlanPtr unregister_plan;
static SPIPlanPtr running_plan;
static SPIPlanPtr is_external_plan;
static SPIPlanPtr claim_plan;
static SPIPlanPtr complete_plan;
static SPIPlanPtr fail_plan;
static SPIPlanPtr expire_plan;

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
 * Check that a function can be a compensation handler and that role could
 * call it directly: USAGE on its schema (a function's OID passed as a
 * regprocedure bypasses the name lookup that would check it) and EXECUTE
 * on it.  Returns the function's owner.  A handler is a plain function
 * (payload jsonb) RETURNS void.
 */
Oid
compensation_check_handler(Oid handler, Oid role)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	bool		valid;
	Oid			owner;
	Oid			nsp;

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
	nsp = proc->pronamespace;
	ReleaseSysCache(tup);

	if (!valid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("function %s cannot be a compensation handler",
						format_procedure(handler)),
				 errdetail("A compensation handler is a function that takes one argument of type jsonb and returns void.")));

	if (pg_namespace_aclcheck(nsp, role, ACL_USAGE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schema %s", get_namespace_name(nsp)),
				 errdetail("A compensation handler runs as the role that queued it; role \"%s\" has no USAGE privilege on the schema of function %s.",
						   GetUserNameFromId(role, false),
						   format_procedure_qualified(handler))));

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
 * Record a failed attempt of the item that claim token holds and schedule
 * the next one, or make the item dead if that was its last.  external:
 * an external executor's claim, which must be running; otherwise an item of
 * the worker's claim, which the worker marked succeeded before running it
 * (see compensation_run.c).  The error is at most
 * COMPENSATION_ERROR_MAX_BYTES long: fail_compensation refuses a longer
 * one and the worker clips a handler's.  Returns false if the token holds
 * no such item.  The caller is connected to SPI.
 */
static bool
record_failure(int64 id, const char *error, const char *sqlstate,
			   int64 token, bool external)
{
	static const Oid argtypes[] = {INT8OID, TEXTOID, INT4OID, INT4OID, TEXTOID,
	INT8OID, BOOLOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};

	payments_prepare(&fail_plan,
					 "WITH failed AS ("
					 " UPDATE @extschema@.compensations c SET last_error = $2," FAILED_SET_SQL
					 " WHERE c.id = $1 AND c.claim_token = $6 AND CASE WHEN $7"
					 "  THEN c.status = 'running' AND " IS_EXTERNAL_SQL("c")
					 "  ELSE c.status = 'succeeded' END"
					 " RETURNING c.id, c.attempts)"
					 " INSERT INTO @extschema@.compensation_attempts"
					 "  (compensation_id, attempt, failed_at, error, sqlstate)"
					 " SELECT id, attempts, clock_timestamp(), $2, $5 FROM failed",
					 7, argtypes);
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
	return payments_execute(fail_plan, values, nulls, SPI_OK_INSERT, 0) == 1;
}

/* The worker's side of record_failure: an item of its claim worker_token */
bool
compensation_record_failure(int64 id, const char *error, const char *sqlstate,
							int64 worker_token)
{
	return record_failure(id, error, sqlstate, worker_token, false);
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
	values[2] = Int32GetDatum(backoff_base);
	values[3] = Int32GetDatum(backoff_max);
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

/* Does role have the privileges of payments_operator (or a superuser's)? */
static bool
is_operator(Oid role)
{
	Oid			operator_role;

	if (superuser_arg(role))
		return true;
	operator_role = get_role_oid(COMPENSATION_OPERATOR_ROLE, true);
	return OidIsValid(operator_role) && has_privs_of_role(role, operator_role);
}

/*
 * Check that caller may change item id: it has the privileges of the role
 * that queued it or of payments_operator, or, for a completion or failure
 * report (executor), of the role that claimed it last; the claim token is
 * checked by the change itself.  The row is read without a lock, so that a
 * caller with no rights on an item can never make anyone wait for it;
 * enqueued_by never changes, and claimed_by only changes with the claim
 * token that the change must match.  A caller who is not an operator gets
 * the same error for an id that does not exist.  The caller is connected to
 * SPI and acts as the owner.
 */
static void
check_item_rights(int64 id, Oid caller, bool executor)
{
	Datum		values[1];
	bool		isnull;

	payments_prepare(&rights_plan,
					 "SELECT enqueued_by::oid, claimed_by::oid"
					 " FROM @extschema@.compensations WHERE id = $1",
					 1, (Oid[]) {INT8OID});
	values[0] = Int64GetDatum(id);
	if (payments_execute(rights_plan, values, NULL, SPI_OK_SELECT, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Oid			enqueued_by = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		Oid			claimed_by = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));

		if (isnull)
			claimed_by = InvalidOid;
		if (has_privs_of_role(caller, enqueued_by) ||
			(executor && OidIsValid(claimed_by) && has_privs_of_role(caller, claimed_by)) ||
			is_operator(caller))
			return;
	}
	else if (is_operator(caller))
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_FOUND),
				 errmsg("compensation %lld does not exist", (long long) id)));

	if (executor)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for compensation %lld", (long long) id),
				 errdetail("Only the role that queued a compensation, the role that claimed it, members of either and members of %s may complete or fail it.",
						   COMPENSATION_OPERATOR_ROLE)));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for compensation %lld", (long long) id),
			 errdetail("Only the role that queued a compensation, its members and members of %s may cancel or retry it.",
					   COMPENSATION_OPERATOR_ROLE)));
}

/*
 * An item's status, its claim token (0 if none) and whether its handler is
 * external, read to explain why a change found nothing to change; an item
 * that no longer exists (deleted by hand since the rights check) is PM301.
 */
static char *
item_state(int64 id, int64 *token, bool *external)
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
 * A completion or failure report matched no claim: the item's handler is
 * run by the worker (PM303), or the token is not the claim that holds the
 * item (PM302): the item was completed, failed or cancelled, or the claim's
 * lease ran out and the item went back to the queue or to another claim.
 */
static void
report_claim_conflict(int64 id, bool completing)
{
	int64		token;
	bool		external;
	char	   *status = item_state(id, &token, &external);

	if (!external)
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_EXTERNAL),
				 completing ?
				 errmsg("cannot complete compensation %lld", (long long) id) :
				 errmsg("cannot fail compensation %lld", (long long) id),
				 errdetail("Its handler is run by the payments worker, not by an external executor."),
				 errhint("Register the handler with payments.register_external_handler for executors outside the database.")));
	ereport(ERROR,
			(errcode(ERRCODE_PM_COMPENSATION_STATE_CONFLICT),
			 completing ?
			 errmsg("cannot complete compensation %lld", (long long) id) :
			 errmsg("cannot fail compensation %lld", (long long) id),
			 strcmp(status, "running") == 0 ?
			 errdetail("It is held by another claim.") :
			 errdetail("Its status is \"%s\"; only a claimed compensation can be completed or failed.", status),
			 errhint("A claim whose lease ran out went back to the queue, where it can be claimed again; choose a lease longer than the work.")));
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
	Size		payload_size;
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	Datum		dedup_values[2];
	PaymentsSavedUser saved;
	int64		id = 0;
	bool		isnull;

	handler = arg_handler(fcinfo, 0);
	payments_arg_not_null(fcinfo, 1, "compensation payload");

	/*
	 * The raw size (uncompressed, header included) without detoasting: the
	 * worker holds every payload of a batch in memory.
	 */
	payload_size = toast_raw_datum_size(PG_GETARG_DATUM(1));
	if (payload_size > (Size) max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("compensation payload is too large"),
				 errdetail("The payload takes %zu bytes; the limit, payments.max_payload_size, is %d bytes.",
						   payload_size, max_payload_size),
				 errhint("Store large data in a table of your own and queue its key.")));
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
	payments_check_writable("enqueue a compensation");

	/* Before the dedup lookup: a key is only looked up by its handler's users. */
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
	dedup_values[0] = values[0];
	dedup_values[1] = values[2];

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	payments_prepare(&insert_plan,
					 "INSERT INTO @extschema@.compensations"
					 " (handler, payload, dedup_key, max_attempts, next_attempt_at,"
					 "  enqueued_by, handler_owner)"
					 " VALUES ($1, $2, $3, $4, $5, $6::regrole, $7::regrole)"
					 " ON CONFLICT (handler, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING"
					 " RETURNING id",
					 7, argtypes);
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
	PG_RETURN_INT64(id);
}

/*
 * payments.retry_compensation(id): a dead item goes back to pending, due
 * now, with a fresh attempt budget.  Its attempt rows stay.
 */
Datum
payments_retry_compensation(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	int64		id = arg_id(fcinfo);
	Datum		values[1];
	PaymentsSavedUser saved;

	payments_check_writable("retry a compensation");
	values[0] = Int64GetDatum(id);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	check_item_rights(id, caller, false);
	payments_prepare(&retry_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'pending', attempts = 0,"
					 "  next_attempt_at = clock_timestamp(), finished_at = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE id = $1 AND status = 'dead'",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(retry_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
	{
		int64		token;
		bool		external;
		char	   *status = item_state(id, &token, &external);

		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_STATE_CONFLICT),
				 errmsg("cannot retry compensation %lld", (long long) id),
				 errdetail("Its status is \"%s\".", status),
				 errhint("Only a dead compensation can be retried.")));
	}
	payments_wake_worker_at_commit();
	SPI_finish();
	payments_end_as_owner(&saved);
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
	Oid			caller = GetUserId();
	int64		id = arg_id(fcinfo);
	Datum		values[1];
	PaymentsSavedUser saved;

	payments_check_writable("cancel a compensation");
	values[0] = Int64GetDatum(id);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	check_item_rights(id, caller, false);
	payments_prepare(&cancel_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'cancelled', finished_at = clock_timestamp(),"
					 "  lease_expires_at = NULL, claim_token = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE id = $1 AND status IN ('pending', 'running', 'dead')",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(cancel_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
	{
		int64		token;
		bool		external;
		char	   *status = item_state(id, &token, &external);

		if (strcmp(status, "cancelled") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_PM_COMPENSATION_STATE_CONFLICT),
					 errmsg("cannot cancel compensation %lld", (long long) id),
					 errdetail("Its status is \"%s\".", status)));
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * The handler argument of register / unregister_external_handler, checked
 * for caller: a valid handler it may call, owned by a role whose
 * privileges it has.  Returns the stored name.
 */
static Datum
external_handler_arg(FunctionCallInfo fcinfo, Oid caller)
{
	Oid			handler = arg_handler(fcinfo, 0);
	Oid			owner = compensation_check_handler(handler, caller);

	if (!has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("must be owner of function %s", format_procedure(handler)),
				 errdetail("Only the owner of a compensation handler, or a member of the owning role, may register it for external executors or unregister it.")));
	return CStringGetTextDatum(compensation_handler_name(handler));
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
	Datum		values[2];
	PaymentsSavedUser saved;

	payments_check_writable("register an external compensation handler");
	values[0] = external_handler_arg(fcinfo, caller);
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
 * payments.unregister_external_handler(handler): the worker runs this
 * handler's items again.  Refused while an executor holds a claim of one of
 * them: its completion would then be refused and the work done twice.  The
 * DELETE waits for a claim in progress, which locks the registration (see
 * claim_compensations), and the count that follows sees what it claimed.
 * Unregistering a handler that is not registered is a no-op.
 */
Datum
payments_unregister_external_handler(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	Datum		values[1];
	PaymentsSavedUser saved;
	bool		isnull;
	int64		running;

	payments_check_writable("unregister an external compensation handler");
	values[0] = external_handler_arg(fcinfo, caller);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	payments_prepare(&unregister_plan,
					 "DELETE FROM @extschema@.external_handlers WHERE handler = $1",
					 1, (Oid[]) {TEXTOID});
	payments_prepare(&running_plan,
					 "SELECT count(*) FROM @extschema@.compensations"
					 " WHERE finished_at IS NULL AND status = 'running' AND handler = $1",
					 1, (Oid[]) {TEXTOID});
	if (payments_execute(unregister_plan, values, NULL, SPI_OK_DELETE, 0) == 1)
	{
		payments_execute(running_plan, values, NULL, SPI_OK_SELECT, 0);
		running = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
		if (running > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("compensation handler %s has claimed compensations",
							TextDatumGetCString(values[0])),
					 errdetail("External executors hold claims of %lld of its compensations.",
							   (long long) running),
					 errhint("Unregister the handler once they are completed or failed, their leases run out, or they are cancelled.")));
		/* Its pending items are the worker's now. */
		payments_wake_worker_at_commit();
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * payments.claim_compensations(handler, max_items, lease)
 *
 * Hands up to max_items due items of an external handler to the caller,
 * oldest due first, each counted as an attempt and held for the lease,
 * with a claim token that completes or fails it.  FOR UPDATE SKIP LOCKED
 * makes concurrent claims take disjoint items without waiting for each
 * other.  Claims of this handler whose lease has run out are first given
 * back to the queue, as failed attempts.  The registration is locked (FOR
 * KEY SHARE) so that an unregister waits for the claim and then sees it.
 */
Datum
payments_claim_compensations(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, INT4OID, INTERVALOID, INT8OID,
	TIMESTAMPTZOID, OIDOID};
	Oid			caller = GetUserId();
	Oid			handler = arg_handler(fcinfo, 0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[6];
	char	   *name;
	PaymentsSavedUser saved;
	uint64		n;

	values[1] = Int32GetDatum(payments_arg_int_range(fcinfo, 1, "max_items", 1,
													 COMPENSATION_MAX_ITEMS_LIMIT));
	values[2] = payments_arg_interval(fcinfo, 2, "lease", LEASE_MAX_USECS);
	payments_check_writable("claim compensations");
	(void) compensation_check_handler(handler, caller);
	name = compensation_handler_name(handler);
	values[0] = CStringGetTextDatum(name);
	values[3] = Int64GetDatum((int64) pg_prng_uint64(&pg_global_prng_state));
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[5] = ObjectIdGetDatum(caller);

	InitMaterializedSRF(fcinfo, 0);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();

	payments_prepare(&is_external_plan,
					 "SELECT FROM @extschema@.external_handlers WHERE handler = $1"
					 " FOR KEY SHARE",
					 1, (Oid[]) {TEXTOID});
	if (payments_execute(is_external_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
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
					 "  claimed_by = $6::regrole, updated_at = clock_timestamp()"
					 " WHERE c.id = ANY (ARRAY("
					 "  SELECT id FROM @extschema@.compensations"
					 "  WHERE finished_at IS NULL AND next_attempt_at <= $5"
					 "   AND status = 'pending' AND handler = $1"
					 "  ORDER BY next_attempt_at LIMIT $2"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND c.status = 'pending'"
					 " RETURNING c.*)"
					 " SELECT * FROM claimed ORDER BY next_attempt_at, id",
					 6, argtypes);
	n = payments_execute(claim_plan, values, NULL, SPI_OK_SELECT, 0);
	for (uint64 i = 0; i < n; i++)
		tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);

	SPI_finish();
	payments_end_as_owner(&saved);
	return (Datum) 0;
}

/*
 * payments.complete_compensation(id, claim_token): an external executor did
 * the work of an item it claimed.  Accepted while that claim holds the
 * item, even if its lease has just run out but nobody has taken the item
 * back yet.
 */
Datum
payments_complete_compensation_0_2(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	int64		id = arg_id(fcinfo);
	Datum		values[2];
	PaymentsSavedUser saved;

	payments_arg_not_null(fcinfo, 1, "claim token");
	payments_check_writable("complete a compensation");
	values[0] = Int64GetDatum(id);
	values[1] = PG_GETARG_DATUM(1);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	check_item_rights(id, caller, true);
	payments_prepare(&complete_plan,
					 "UPDATE @extschema@.compensations c"
					 " SET status = 'succeeded', finished_at = clock_timestamp(),"
					 "  lease_expires_at = NULL, claim_token = NULL,"
					 "  updated_at = clock_timestamp()"
					 " WHERE c.id = $1 AND c.claim_token = $2 AND c.status = 'running'"
					 "  AND " IS_EXTERNAL_SQL("c"),
					 2, (Oid[]) {INT8OID, INT8OID});
	if (payments_execute(complete_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
		report_claim_conflict(id, true);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * payments.fail_compensation(id, claim_token, error): an external
 * executor's attempt failed; the item is scheduled again with backoff, or
 * dead.
 */
Datum
payments_fail_compensation_0_2(PG_FUNCTION_ARGS)
{
	Oid			caller = GetUserId();
	int64		id = arg_id(fcinfo);
	int64		token;
	text	   *error;
	PaymentsSavedUser saved;

	payments_arg_not_null(fcinfo, 1, "claim token");
	token = PG_GETARG_INT64(1);
	error = payments_arg_text(fcinfo, 2, "error", COMPENSATION_ERROR_MAX_BYTES);
	payments_check_writable("fail a compensation");

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	check_item_rights(id, caller, true);
	if (!record_failure(id, text_to_cstring(error), NULL, token, true))
		report_claim_conflict(id, false);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * Version 0.1.0 declared complete_compensation(id) and
 * fail_compensation(id, error), without the claim token.  Their symbols stay
 * so that a 0.1.0 schema still loads (pg_upgrade and pg_restore check every
 * C function's symbol), but calling them asks for the update that replaces
 * them.
 */
static void
report_retired_function(FunctionCallInfo fcinfo)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("function %s is no longer supported",
					format_procedure(fcinfo->flinfo->fn_oid)),
			 errdetail("It belongs to an older version of extension \"payments\" than the loaded library."),
			 errhint("Run ALTER EXTENSION payments UPDATE.")));
}

Datum
payments_complete_compensation(PG_FUNCTION_ARGS)
{
	report_retired_function(fcinfo);
	PG_RETURN_VOID();
}

Datum
payments_fail_compensation(PG_FUNCTION_ARGS)
{
	report_retired_function(fcinfo);
	PG_RETURN_VOID();
}
