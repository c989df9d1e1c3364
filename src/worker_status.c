/*-------------------------------------------------------------------------
 *
 * worker_status.c
 *	  SQL functions that look at or nudge this database's worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "worker.h"

#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_worker_status);
PG_FUNCTION_INFO_V1(payments_notify_worker);

static const char *
state_name(PaymentsWorkerState state)
{
	switch (state)
	{
		case PW_FREE:
			return "stopped";
		case PW_STARTING:
			return "starting";
		case PW_IDLE:
			return "idle";
		case PW_RUNNING:
			return "running";
	}
	return "unknown";
}

/*
 * payments.worker_status(): one row for the current database.  Without
 * preloading there is no worker, and the state says why.
 */
Datum
payments_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[7];
	bool		nulls[7] = {true, false, true, true, false, false, true};
	PaymentsWorkerSlot copy;
	PaymentsWorkerSlot *slot = NULL;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	memset(&copy, 0, sizeof(copy));
	if (payments_shared != NULL)
	{
		LWLockAcquire(payments_shared->lock, LW_SHARED);
		slot = payments_find_slot(MyDatabaseId);
		if (slot != NULL)
			copy = *slot;
		LWLockRelease(payments_shared->lock);
	}

	if (payments_shared == NULL)
		values[1] = CStringGetTextDatum("not preloaded");
	else
		values[1] = CStringGetTextDatum(state_name(slot ? copy.state : PW_FREE));
	if (copy.pid != 0)
	{
		values[0] = Int32GetDatum(copy.pid);
		nulls[0] = false;
	}
	if (copy.started_at != 0)
	{
		values[2] = TimestampTzGetDatum(copy.started_at);
		nulls[2] = false;
	}
	if (copy.last_run != 0)
	{
		values[3] = TimestampTzGetDatum(copy.last_run);
		nulls[3] = false;
	}
	values[4] = Int64GetDatum(copy.items_done);
	values[5] = Int64GetDatum(copy.items_failed);
	if (copy.last_error[0] != '\0')
	{
		copy.last_error[PAYMENTS_WORKER_ERROR_LEN - 1] = '\0';
		values[6] = CStringGetTextDatum(copy.last_error);
		nulls[6] = false;
	}
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * payments.notify_worker(): wake this database's worker when the current
 * transaction commits (for work queued by other means than the extension's
 * own functions, which wake it themselves).
 */
Datum
payments_notify_worker(PG_FUNCTION_ARGS)
{
	payments_wake_worker_at_commit();
	PG_RETURN_VOID();
}
