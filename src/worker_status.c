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
#include "utils/datetime.h"
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

static Datum
interval_from_us(int64 us)
{
	Interval   *result = palloc0(sizeof(Interval));

	result->time = us;
	return IntervalPGetDatum(result);
}

#define STATUS_COLUMNS 12

/*
 * payments.worker_status(): one row for the current database.  state is
 * the worker's when one is connected to the database; otherwise "waiting"
 * (work is due and every worker is busy), "sleeping" (nothing is due before
 * next_run), "unserved" (no worker can start: unserved_reason says why),
 * "stopped" (the worker is disabled, or no launcher runs, as on a standby)
 * or "not preloaded".
 */
Datum
payments_worker_status(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[STATUS_COLUMNS];
	bool		nulls[STATUS_COLUMNS];
	PaymentsWorkerSlot slot;
	PaymentsDatabase db;
	bool		have_slot = false;
	bool		have_db = false;
	bool		launcher = false;
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz due = 0;
	TimestampTz since = 0;
	const char *state;
	const char *unserved = NULL;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	/* 0.2.0's function has the first seven columns only */
	if (tupdesc->natts > STATUS_COLUMNS)
		elog(ERROR, "worker_status() returns more columns than the library knows");

	memset(nulls, true, sizeof(nulls));
	memset(&slot, 0, sizeof(slot));
	memset(&db, 0, sizeof(db));
	if (payments_shared != NULL)
	{
		PaymentsWorkerSlot *s;
		PaymentsDatabase *d;

		LWLockAcquire(payments_shared->lock, LW_SHARED);
		launcher = payments_shared->launcher_pid != 0;
		s = payments_find_slot(MyDatabaseId);
		if (s != NULL)
		{
			slot = *s;
			have_slot = true;
		}
		d = payments_find_database(MyDatabaseId);
		if (d != NULL)
		{
			memcpy(&db, d, offsetof(PaymentsDatabase, due_at));
			memcpy(((char *) &db) + offsetof(PaymentsDatabase, last_run),
				   ((char *) d) + offsetof(PaymentsDatabase, last_run),
				   sizeof(PaymentsDatabase) - offsetof(PaymentsDatabase, last_run));
			due = payments_database_due(d);
			have_db = true;
		}
		else if (payments_find_database(InvalidOid) == NULL)
			unserved = "payments.max_databases databases are tracked already";
		LWLockRelease(payments_shared->lock);
	}

	if (have_db)
	{
		if (due <= now)
			since = due;
		if (db.wake_requested && (since == 0 || db.wake_at < since))
			since = db.wake_at;
		db.last_error[PAYMENTS_WORKER_ERROR_LEN - 1] = '\0';
		db.unserved[PAYMENTS_WORKER_ERROR_LEN - 1] = '\0';
		if (db.unserved[0] != '\0')
			unserved = db.unserved;
	}

	if (payments_shared == NULL)
		state = "not preloaded";
	else if (have_slot)
		state = state_name(slot.state);
	else if (!payments_worker_enabled || !launcher)
		state = "stopped";
	else if (unserved != NULL)
		state = "unserved";
	else if (!have_db || db.paused_until > now)
		state = "stopped";
	else if (since != 0)
		state = "waiting";
	else
		state = "sleeping";

	values[1] = CStringGetTextDatum(state);
	nulls[1] = false;
	if (have_slot && slot.pid != 0)
	{
		values[0] = Int32GetDatum(slot.pid);
		nulls[0] = false;
	}
	if (have_slot && slot.started_at != 0)
	{
		values[2] = TimestampTzGetDatum(slot.started_at);
		nulls[2] = false;
	}
	if (db.last_run != 0)
	{
		values[3] = TimestampTzGetDatum(db.last_run);
		nulls[3] = false;
	}
	values[4] = Int64GetDatum(db.items_done);
	values[5] = Int64GetDatum(db.items_failed);
	nulls[4] = nulls[5] = false;
	if (db.last_error[0] != '\0')
	{
		values[6] = CStringGetTextDatum(db.last_error);
		nulls[6] = false;
	}
	if (have_db && payments_shared != NULL && strcmp(state, "stopped") != 0)
	{
		values[7] = TimestampTzGetDatum(due);
		nulls[7] = false;
	}
	if (since != 0 && !have_slot)
	{
		values[8] = TimestampTzGetDatum(since);
		nulls[8] = false;
	}
	if (db.rounds > 0)
	{
		values[9] = interval_from_us(db.last_wait_us);
		values[10] = interval_from_us(db.max_wait_us);
		nulls[9] = nulls[10] = false;
	}
	if (unserved != NULL && !have_slot)
	{
		values[11] = CStringGetTextDatum(unserved);
		nulls[11] = false;
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
