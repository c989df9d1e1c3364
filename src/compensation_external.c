/*-------------------------------------------------------------------------
 *
 * compensation_external.c
 *	  Executors outside the database: a handler registered for them is
 *	  never run by the worker; they claim its due items, do the work and
 *	  report each one completed or failed with the token of their claim.
 *
 * A claim counts an attempt and holds the item for a lease; a claim whose
 * lease has run out is given back to the queue (compensation.c) before the
 * next claim of its handler, and its token then completes nothing.  Who
 * may register, claim, complete and fail is compensation_rights.c's.
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

#include "common/pg_prng.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/regproc.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(payments_register_external_handler);
PG_FUNCTION_INFO_V1(payments_unregister_external_handler);
PG_FUNCTION_INFO_V1(payments_claim_compensations);
PG_FUNCTION_INFO_V1(payments_complete_compensation_0_2);
PG_FUNCTION_INFO_V1(payments_fail_compensation_0_2);
PG_FUNCTION_INFO_V1(payments_complete_compensation);
PG_FUNCTION_INFO_V1(payments_fail_compensation);

#define LEASE_MAX_USECS			(INT64CONST(7) * USECS_PER_DAY)

static SPIPlanPtr register_plan;
static SPIPlanPtr unregister_plan;
static SPIPlanPtr is_external_plan;
static SPIPlanPtr claim_plan;
static SPIPlanPtr complete_plan;

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
	char	   *status = compensation_item_state(id, &token, &external);

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
 * The handler argument of register / unregister_external_handler, checked
 * for caller: a valid handler it may call, owned by a role whose
 * privileges it has.  Returns the stored name.
 */
static Datum
external_handler_arg(FunctionCallInfo fcinfo, Oid caller)
{
	Oid			handler = compensation_arg_handler(fcinfo, 0);
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

	payments_check_not_in_recovery();
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

	payments_check_not_in_recovery();
	values[0] = external_handler_arg(fcinfo, caller);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();
	payments_prepare(&unregister_plan,
					 "DELETE FROM @extschema@.external_handlers WHERE handler = $1",
					 1, (Oid[]) {TEXTOID});
	if (payments_execute(unregister_plan, values, NULL, SPI_OK_DELETE, 0) == 1)
	{
		/* over every shard once the queue is distributed */
		payments_execute_citus("SELECT count(*) FROM @extschema@.compensations"
							   " WHERE finished_at IS NULL AND status = 'running'"
							   " AND handler = $1",
							   1, (Oid[]) {TEXTOID}, values, NULL, SPI_OK_SELECT);
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
	Oid			caller = GetUserId();
	Oid			handler = compensation_arg_handler(fcinfo, 0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	int32		max_items;
	Datum		lease;

	max_items = payments_arg_int_range(fcinfo, 1, "max_items", 1,
									   COMPENSATION_MAX_ITEMS_LIMIT);
	lease = payments_arg_interval(fcinfo, 2, "lease", LEASE_MAX_USECS);
	payments_check_not_in_recovery();
	(void) compensation_check_handler(handler, caller);

	InitMaterializedSRF(fcinfo, 0);
	compensation_claim(rsinfo->setResult, compensation_handler_name(handler),
					   max_items, lease, caller,
					   payments_function_owner(fcinfo->flinfo->fn_oid));
	return (Datum) 0;
}

/*
 * The claim of claim_compensations on this node (on the shard of the flow
 * entered once the queue is distributed): up to max_items items of the
 * handler (its name), each given to emit(tuple, its descriptor, arg) in due
 * order, all with the claim token.  Returns how many.
 */
int
compensation_claim_here(const char *handler, int32 max_items, Datum lease,
						int64 token, Oid caller, Oid tables_owner,
						void (*emit) (HeapTuple tup, TupleDesc desc, void *arg),
						void *arg)
{
	static const Oid argtypes[] = {TEXTOID, INT4OID, INTERVALOID, INT8OID,
	TIMESTAMPTZOID, OIDOID};
	Datum		values[6];
	PaymentsSavedUser saved;
	uint64		n;

	values[0] = CStringGetTextDatum(handler);
	values[1] = Int32GetDatum(max_items);
	values[2] = lease;
	values[3] = Int64GetDatum(token);
	values[4] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[5] = ObjectIdGetDatum(caller);

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();

	payments_prepare(&is_external_plan,
					 "SELECT FROM @extschema@.external_handlers WHERE handler = $1"
					 " FOR KEY SHARE",
					 1, (Oid[]) {TEXTOID});
	if (payments_execute(is_external_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_EXTERNAL),
				 errmsg("compensation handler %s is not registered for external executors",
						format_procedure(DatumGetObjectId(DirectFunctionCall1(regprocedurein,
																			  CStringGetDatum(handler))))),
				 errdetail("Its compensations are run by the payments worker."),
				 errhint("Call payments.register_external_handler first.")));

	(void) compensation_expire_leases(handler, max_items);

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
		emit(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, arg);

	SPI_finish();
	payments_end_as_owner(&saved);
	return (int) n;
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
	int64		id = compensation_arg_id(fcinfo);

	payments_arg_not_null(fcinfo, 1, "claim token");
	payments_check_not_in_recovery();
	compensation_change(COMPENSATION_COMPLETE, id, PG_GETARG_INT64(1), NULL,
						GetUserId(), payments_function_owner(fcinfo->flinfo->fn_oid));
	PG_RETURN_VOID();
}

/* complete_compensation on the node of the item's flow */
void
compensation_complete_here(int64 id, int64 token, Oid caller, Oid tables_owner)
{
	Datum		values[2];
	PaymentsSavedUser saved;

	values[0] = Int64GetDatum(id);
	values[1] = Int64GetDatum(token);

	compensation_begin_item_change(caller, tables_owner, id, true, &saved);
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
	compensation_release_next(compensation_ids_array(&id, 1));
	compensation_end_item_change(&saved);
}

/*
 * payments.fail_compensation(id, claim_token, error): an external
 * executor's attempt failed; the item is scheduled again with backoff, or
 * dead.
 */
Datum
payments_fail_compensation_0_2(PG_FUNCTION_ARGS)
{
	int64		id = compensation_arg_id(fcinfo);
	int64		token;
	text	   *error;

	payments_arg_not_null(fcinfo, 1, "claim token");
	token = PG_GETARG_INT64(1);
	error = payments_arg_text(fcinfo, 2, "error", COMPENSATION_ERROR_MAX_BYTES);
	payments_check_not_in_recovery();
	compensation_change(COMPENSATION_FAIL, id, token, error, GetUserId(),
						payments_function_owner(fcinfo->flinfo->fn_oid));
	PG_RETURN_VOID();
}

/* fail_compensation on the node of the item's flow */
void
compensation_fail_here(int64 id, int64 token, text *error, Oid caller,
					   Oid tables_owner)
{
	PaymentsSavedUser saved;

	compensation_begin_item_change(caller, tables_owner, id, true, &saved);
	if (!compensation_record_failure(id, text_to_cstring(error), NULL, token, true))
		report_claim_conflict(id, false);
	compensation_end_item_change(&saved);
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
