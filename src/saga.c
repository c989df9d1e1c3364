/*-------------------------------------------------------------------------
 *
 * saga.c
 *	  Sagas: saga_begin, saga_step, saga_complete and saga_abort, and the
 *	  worker's abort of the sagas that ran past their timeout.
 *
 * A saga is one row of payments.saga_state.  Each forward step records,
 * in the step's own transaction, the compensation that undoes it: a row
 * of payments.saga_steps, and nothing queued yet.  A step whose
 * transaction rolls back leaves no row, so it is never compensated.
 * Recording a step locks the saga's row, so steps are numbered in the
 * order they commit, and none is recorded once the saga has completed or
 * aborted: an abort waits for the steps in flight, and a step that comes
 * after it fails with PM606, which rolls the step's own work back.
 *
 * saga_abort queues the recorded compensations in its transaction as one
 * chain of the compensation queue (compensation.c): the last step's first,
 * each other one after the one of the step that followed it.  The worker
 * runs them in that order, each only once the one before it succeeded; a
 * dead one halts the chain, and retry_compensation resumes it.  Whether
 * the undo is done is read from the queue by the view payments.sagas, so
 * no state here waits on the worker, and a crash loses or repeats nothing:
 * the chain is queued in one transaction and each link runs exactly once.
 *
 * A saga belongs to the role that began it (the role is part of the key).
 * Its compensations run as that role, which must be allowed to execute
 * them when it records a step, when the saga aborts and again when they
 * run.  The functions act as the caller and take the extension owner's
 * rights only around their own statements (owner_rights.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "args.h"
#include "compensation.h"
#include "fault.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "worker.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_saga_begin);
PG_FUNCTION_INFO_V1(payments_saga_step);
PG_FUNCTION_INFO_V1(payments_saga_complete);
PG_FUNCTION_INFO_V1(payments_saga_abort);
PG_FUNCTION_INFO_V1(payments_abort_timed_out_sagas);

/* The longest saga id or step name, in bytes */
#define SAGA_ID_MAX_BYTES		255

/* The longest reason of an abort, in bytes */
#define SAGA_REASON_MAX_BYTES	1024

/* The most steps a saga can record: its abort queues them in one transaction */
#define SAGA_MAX_STEPS			10000

/* The longest timeout a saga can have */
#define SAGA_TIMEOUT_MAX_USECS	(INT64CONST(366) * USECS_PER_DAY)

/* How long the worker waits before it tries again to abort a saga it could not */
#define SAGA_ABORT_RETRY_SECS	60

static SPIPlanPtr begin_plan;
static SPIPlanPtr status_plan;
static SPIPlanPtr lock_plan;
static SPIPlanPtr find_step_plan;
static SPIPlanPtr add_step_plan;
static SPIPlanPtr complete_plan;
static SPIPlanPtr abort_plan;
static SPIPlanPtr steps_plan;
static SPIPlanPtr queued_plan;
static SPIPlanPtr timed_out_plan;
static SPIPlanPtr abort_failed_plan;

/* The key of the saga of a call: the caller and saga_id. */
static void
saga_key(FunctionCallInfo fcinfo, Datum *key)
{
	key[0] = ObjectIdGetDatum(GetUserId());
	key[1] = PointerGetDatum(payments_arg_text(fcinfo, 0, "saga_id", SAGA_ID_MAX_BYTES));
	payments_check_not_in_recovery();
}

static void
begin_saga_call(FunctionCallInfo fcinfo, PaymentsSavedUser *saved)
{
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, saved);
	SPI_connect();
}

static void
end_saga_call(PaymentsSavedUser *saved)
{
	SPI_finish();
	payments_end_as_owner(saved);
}

/* The saga's status now, or NULL.  The caller is connected to SPI. */
static char *
saga_status(Datum *key)
{
	payments_prepare(&status_plan,
					 "SELECT status FROM @extschema@.saga_state"
					 " WHERE owner = $1::regrole AND saga_id = $2",
					 2, (Oid[]) {OIDOID, TEXTOID});
	if (payments_execute(status_plan, key, NULL, SPI_OK_SELECT, 0) == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Refuse a call that needs the saga running, with the reason its status
 * gives (NULL: no such saga); step: the call records a forward step.
 */
static void
report_not_running(Datum *key, const char *status, bool step)
{
	char	   *id = TextDatumGetCString(key[1]);

	if (status == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_SAGA_NOT_FOUND),
				 errmsg("saga \"%s\" does not exist", id),
				 errhint("Begin it with payments.saga_begin.")));
	if (strcmp(status, "completed") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_SAGA_COMPLETED),
				 errmsg("saga \"%s\" is completed", id),
				 errdetail("A completed saga records no more steps and is never aborted.")));
	ereport(ERROR,
			(errcode(ERRCODE_PM_SAGA_ABORTED),
			 errmsg("saga \"%s\" was aborted", id),
			 errdetail("An aborted saga records no more steps and is never completed."),
			 step ? errhint("Roll back the step's transaction: its compensation will not run.") : 0));
}

/*
 * payments.saga_begin(saga_id, timeout): true if the saga is begun now,
 * false if it was begun before (whatever its status), so that a
 * coordinator can retry the call.
 */
Datum
payments_saga_begin(PG_FUNCTION_ARGS)
{
	Datum		values[3];
	char		nulls[3] = {' ', ' ', ' '};
	PaymentsSavedUser saved;
	bool		begun;

	saga_key(fcinfo, values);
	if (PG_ARGISNULL(1))
		nulls[2] = 'n';
	else
	{
		Interval   *span = DatumGetIntervalP(payments_arg_interval(fcinfo, 1, "timeout",
																   SAGA_TIMEOUT_MAX_USECS));

		values[2] = TimestampTzGetDatum(GetCurrentTimestamp() + span->time);
		payments_worker_due_at_commit(DatumGetTimestampTz(values[2]));
	}

	begin_saga_call(fcinfo, &saved);
	payments_prepare(&begin_plan,
					 "INSERT INTO @extschema@.saga_state (owner, saga_id, status, timeout_at)"
					 " VALUES ($1::regrole, $2, 'running', $3)"
					 " ON CONFLICT DO NOTHING",
					 3, (Oid[]) {OIDOID, TEXTOID, TIMESTAMPTZOID});
	begun = payments_execute(begin_plan, values, nulls, SPI_OK_INSERT, 0) == 1;
	end_saga_call(&saved);
	PG_RETURN_BOOL(begun);
}

/*
 * payments.saga_step(saga_id, step, compensation, payload): the step's
 * number.  Recording the same step again with the same compensation and
 * payload returns its number and changes nothing; with another, PM607.
 */
Datum
payments_saga_step(PG_FUNCTION_ARGS)
{
	Datum		values[6];
	Oid			handler;
	PaymentsSavedUser saved;
	bool		isnull;
	int32		step_no;
	int32		recorded;

	saga_key(fcinfo, values);
	values[2] = PointerGetDatum(payments_arg_text(fcinfo, 1, "step", SAGA_ID_MAX_BYTES));
	handler = compensation_arg_handler(fcinfo, 2);
	payments_arg_not_null(fcinfo, 3, "compensation payload");
	compensation_check_payload(PG_GETARG_DATUM(3));

	/* As the queue will check it: the signature, and the caller's right. */
	values[4] = ObjectIdGetDatum(compensation_check_handler(handler, GetUserId()));
	values[3] = CStringGetTextDatum(compensation_handler_name(handler));
	values[5] = PG_GETARG_DATUM(3);

	begin_saga_call(fcinfo, &saved);
	payments_prepare(&lock_plan,
					 "SELECT status, steps FROM @extschema@.saga_state"
					 " WHERE owner = $1::regrole AND saga_id = $2 FOR NO KEY UPDATE",
					 2, (Oid[]) {OIDOID, TEXTOID});
	payments_prepare(&find_step_plan,
					 "SELECT step_no, compensation = $4 AND compensation_owner = $5::regrole"
					 "  AND payload = $6"
					 " FROM @extschema@.saga_steps"
					 " WHERE owner = $1::regrole AND saga_id = $2 AND step = $3",
					 6, (Oid[]) {OIDOID, TEXTOID, TEXTOID, TEXTOID, OIDOID, JSONBOID});
	payments_prepare(&add_step_plan,
					 "WITH s AS (UPDATE @extschema@.saga_state"
					 "  SET steps = steps + 1, updated_at = clock_timestamp()"
					 "  WHERE owner = $1::regrole AND saga_id = $2 RETURNING steps)"
					 " INSERT INTO @extschema@.saga_steps"
					 "  (owner, saga_id, step_no, step, compensation, compensation_owner, payload)"
					 " SELECT $1::regrole, $2, s.steps, $3, $4, $5::regrole, $6 FROM s"
					 " RETURNING step_no",
					 6, (Oid[]) {OIDOID, TEXTOID, TEXTOID, TEXTOID, OIDOID, JSONBOID});

	if (payments_execute(lock_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
		report_not_running(values, NULL, true);
	if (strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "running") != 0)
		report_not_running(values, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), true);
	recorded = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										   2, &isnull));

	if (payments_execute(find_step_plan, values, NULL, SPI_OK_SELECT, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];

		if (!DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_PM_SAGA_STEP_CONFLICT),
					 errmsg("step \"%s\" of saga \"%s\" was recorded with another compensation",
							TextDatumGetCString(values[2]), TextDatumGetCString(values[1])),
					 errdetail("A step is recorded once; recording it again must give the same compensation and payload."),
					 errhint("Give each step of a saga its own name.")));
	}
	else
	{
		if (recorded >= SAGA_MAX_STEPS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("saga \"%s\" has too many steps", TextDatumGetCString(values[1])),
					 errdetail("A saga records at most %d steps.", SAGA_MAX_STEPS)));
		payments_execute(add_step_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
	}
	step_no = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										  1, &isnull));
	end_saga_call(&saved);
	PG_RETURN_INT32(step_no);
}

/*
 * payments.saga_complete(saga_id): completing twice is a no-op; after an
 * abort, PM606.
 */
Datum
payments_saga_complete(PG_FUNCTION_ARGS)
{
	Datum		key[2];
	PaymentsSavedUser saved;

	saga_key(fcinfo, key);
	begin_saga_call(fcinfo, &saved);
	payments_prepare(&complete_plan,
					 "UPDATE @extschema@.saga_state SET status = 'completed',"
					 " finished_at = clock_timestamp(), updated_at = clock_timestamp()"
					 " WHERE owner = $1::regrole AND saga_id = $2 AND status = 'running'",
					 2, (Oid[]) {OIDOID, TEXTOID});
	if (payments_execute(complete_plan, key, NULL, SPI_OK_UPDATE, 0) == 0)
	{
		char	   *status = saga_status(key);

		if (status == NULL || strcmp(status, "completed") != 0)
			report_not_running(key, status, false);
	}
	end_saga_call(&saved);
	PG_RETURN_VOID();
}

/* A link of an abort's chain: can its compensation be queued as it is? */
typedef struct LinkCheck
{
	const char *name;			/* as recorded */
	Oid			owner;			/* its owner, as recorded */
	Oid			role;			/* the saga's role, which will run it */
	Oid			handler;		/* the function, once found */
} LinkCheck;

/*
 * Find the compensation and check the role may still run it, reading only,
 * so that the subtransaction this runs in takes no transaction id.
 */
static void
check_link(void *arg)
{
	LinkCheck  *link = arg;

	link->handler = compensation_resolve_handler(link->name, link->owner);
	(void) compensation_check_handler(link->handler, link->role);
}

/*
 * Abort the running saga of key (its role and id): mark it aborted and
 * queue its recorded compensations as a chain, the last step's first, all
 * to run as the saga's role.  A compensation that can no longer be queued
 * (dropped, changed owner, or no longer executable by the role) is queued
 * dead with the reason, so that the chain halts there rather than the
 * abort failing: retry_compensation resumes it once it is fixed.  Returns how many were queued, or -1 if the
 * saga was aborted before.  The caller is connected to SPI and acts as the
 * owner, tables_owner.
 */
static int
abort_saga(Datum *key, Datum reason, bool reason_null, Oid tables_owner)
{
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	SPITupleTable *steps;
	int64		after = 0;
	uint64		n;

	values[0] = key[0];
	values[1] = key[1];
	values[2] = reason;
	nulls[2] = reason_null ? 'n' : ' ';
	payments_prepare(&abort_plan,
					 "UPDATE @extschema@.saga_state SET status = 'aborted',"
					 " abort_reason = $3, abort_error = NULL,"
					 " finished_at = clock_timestamp(), updated_at = clock_timestamp()"
					 " WHERE owner = $1::regrole AND saga_id = $2 AND status = 'running'",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTOID});
	payments_prepare(&steps_plan,
					 "SELECT ctid, compensation, compensation_owner::oid, payload"
					 " FROM @extschema@.saga_steps"
					 " WHERE owner = $1::regrole AND saga_id = $2 ORDER BY step_no DESC",
					 2, (Oid[]) {OIDOID, TEXTOID});
	payments_prepare(&queued_plan,
					 "UPDATE @extschema@.saga_steps SET compensation_id = $2"
					 " WHERE ctid = $1",
					 2, (Oid[]) {TIDOID, INT8OID});

	if (payments_execute(abort_plan, values, nulls, SPI_OK_UPDATE, 0) == 0)
	{
		char	   *status = saga_status(key);

		if (status == NULL || strcmp(status, "aborted") != 0)
			report_not_running(key, status, false);
		return -1;
	}

	n = payments_execute(steps_plan, key, NULL, SPI_OK_SELECT, 0);
	steps = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = steps->vals[i];
		TupleDesc	desc = steps->tupdesc;
		bool		isnull;
		LinkCheck	link;
		ErrorData  *edata;
		Datum		payload = SPI_getbinval(tup, desc, 4, &isnull);

		CHECK_FOR_INTERRUPTS();
		link.name = SPI_getvalue(tup, desc, 2);
		link.owner = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		link.role = DatumGetObjectId(key[0]);
		edata = payments_run_in_subtransaction(check_link, &link);
		(void) PAYMENTS_FAULT(FAULT_SAGA_CHAIN_STEP);
		if (edata == NULL)
			after = compensation_enqueue(link.handler, payload, NULL, 0,
										 GetCurrentTimestamp(), after,
										 link.role, tables_owner);
		else
			after = compensation_enqueue_dead(link.name, link.owner, payload,
											  after, link.role, tables_owner,
											  edata->message);
		values[0] = SPI_getbinval(tup, desc, 1, &isnull);
		values[1] = Int64GetDatum(after);
		payments_execute(queued_plan, values, NULL, SPI_OK_UPDATE, 0);
	}
	return (int) n;
}

/*
 * payments.saga_abort(saga_id, reason): how many compensations were
 * queued; aborting twice is a no-op that returns 0; after a completion,
 * PM605.
 */
Datum
payments_saga_abort(PG_FUNCTION_ARGS)
{
	Datum		key[2];
	Datum		reason = (Datum) 0;
	PaymentsSavedUser saved;
	int			queued;

	saga_key(fcinfo, key);
	if (!PG_ARGISNULL(1))
		reason = PointerGetDatum(payments_arg_text(fcinfo, 1, "reason", SAGA_REASON_MAX_BYTES));
	begin_saga_call(fcinfo, &saved);
	queued = abort_saga(key, reason, PG_ARGISNULL(1),
						payments_function_owner(fcinfo->flinfo->fn_oid));
	end_saga_call(&saved);
	PG_RETURN_INT32(Max(queued, 0));
}

typedef struct TimedOutSaga
{
	Datum	   *key;
	Oid			tables_owner;
} TimedOutSaga;

static void
abort_timed_out(void *arg)
{
	TimedOutSaga *saga = arg;

	(void) abort_saga(saga->key, CStringGetTextDatum("timed out"), false,
					  saga->tables_owner);
}

/*
 * payments.abort_timed_out_sagas(max_sagas): the worker's task.  A saga
 * that a step or a call is holding is skipped until next time; one that
 * cannot be aborted (its compensation was dropped, its role may no longer
 * execute it) keeps running with the error recorded in abort_error, shows
 * as stuck, and is tried again a minute later.
 */
Datum
payments_abort_timed_out_sagas(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	int32		max_sagas = payments_arg_int_range(fcinfo, 0, "max_sagas", 1, 100000);
	Datum		values[3];
	SPITupleTable *due;
	uint64		n;
	int			aborted = 0;

	payments_check_not_in_recovery();
	values[0] = Int32GetDatum(max_sagas);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = Int32GetDatum(SAGA_ABORT_RETRY_SECS);

	SPI_connect();
	payments_prepare(&timed_out_plan,
					 "SELECT owner::oid, saga_id FROM @extschema@.saga_state"
					 " WHERE status = 'running' AND timeout_at <= $2"
					 "  AND (abort_error IS NULL OR updated_at < $2 - $3 * interval '1 second')"
					 " ORDER BY timeout_at LIMIT $1 FOR NO KEY UPDATE SKIP LOCKED",
					 3, (Oid[]) {INT4OID, TIMESTAMPTZOID, INT4OID});
	payments_prepare(&abort_failed_plan,
					 "UPDATE @extschema@.saga_state"
					 " SET abort_error = $3, updated_at = clock_timestamp()"
					 " WHERE owner = $1::regrole AND saga_id = $2",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTOID});
	n = payments_execute(timed_out_plan, values, NULL, SPI_OK_SELECT, 0);
	due = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		Datum		key[3];
		bool		isnull;
		TimedOutSaga saga = {key, tables_owner};
		ErrorData  *edata;

		CHECK_FOR_INTERRUPTS();
		key[0] = SPI_getbinval(due->vals[i], due->tupdesc, 1, &isnull);
		key[1] = SPI_getbinval(due->vals[i], due->tupdesc, 2, &isnull);

		/*
		 * In a subtransaction, so that a compensation dropped or no longer
		 * callable by a saga's role stops no other saga.
		 */
		edata = payments_run_in_subtransaction(abort_timed_out, &saga);
		if (edata == NULL)
		{
			aborted++;
			continue;
		}
		ereport(WARNING,
				(errmsg("could not abort saga \"%s\" past its timeout: %s",
						TextDatumGetCString(key[1]), edata->message),
				 errdetail("The saga belongs to the role with OID %u; it is tried again in %d seconds.",
						   DatumGetObjectId(key[0]), SAGA_ABORT_RETRY_SECS)));
		key[2] = CStringGetTextDatum(edata->message);
		payments_execute(abort_failed_plan, key, NULL, SPI_OK_UPDATE, 0);
	}
	SPI_finish();
	PG_RETURN_INT32(aborted);
}
