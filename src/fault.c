/*-------------------------------------------------------------------------
 *
 * fault.c
 *	  Fault drills: named points at the critical steps of every capability,
 *	  which a superuser arms to make the next passes fail, pause, wait, die
 *	  or deliver their step twice, so that a test or an operator can prove
 *	  that the compensations and the recovery paths work.
 *
 * The armed state lives in shared memory, one slot per point, and so is
 * seen by every backend and the worker, and is gone after a restart.  It
 * exists only when the library is preloaded and payments.fault_injection,
 * a postmaster setting that is off by default, is on: a production server
 * cannot be drilled by accident, and arming is refused there.  A point
 * that nothing armed costs one atomic read of the count of armed points
 * (PAYMENTS_FAULT in fault.h); only when some point is armed does a pass
 * look at its slot, under a lock.
 *
 * Actions:
 *	  error      the step raises PM701, as a failure of the step itself would
 *	  delay      the step sleeps for the armed delay, then goes on
 *	  wait       the step waits until the point is disarmed, then goes on
 *				 (so a test can interleave other work at that exact step)
 *	  crash      the process kills itself with SIGKILL, as kill -9 would;
 *				 the postmaster then restarts every backend, as for any
 *				 backend that dies
 *	  duplicate  the step is delivered twice, at the points whose step can
 *				 be (a callback, a handler's run)
 *
 * A point fires at most "times" times, each pass with the armed
 * probability, and only in the process with the armed pid if one is
 * given; then it disarms itself.  Sleeps and waits honour interrupts, so a
 * cancel or a shutdown ends them.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fault.h"
#include "payments.h"
#include "args.h"

#include <signal.h>
#include <unistd.h>

#include "common/pg_prng.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

PG_FUNCTION_INFO_V1(payments_fault_arm);
PG_FUNCTION_INFO_V1(payments_fault_disarm);
PG_FUNCTION_INFO_V1(payments_fault_points);

typedef enum FaultAction
{
	FAULT_NONE,
	FAULT_ERROR,
	FAULT_DELAY,
	FAULT_WAIT,
	FAULT_CRASH,
	FAULT_DUPLICATE
} FaultAction;

static const char *const action_names[] = {
	[FAULT_NONE] = NULL,
	[FAULT_ERROR] = "error",
	[FAULT_DELAY] = "delay",
	[FAULT_WAIT] = "wait",
	[FAULT_CRASH] = "crash",
	[FAULT_DUPLICATE] = "duplicate",
};

typedef struct FaultPointInfo
{
	const char *name;
	bool		can_duplicate;	/* whether its caller can deliver twice */
	const char *step;			/* what it interrupts, for the view */
} FaultPointInfo;

static const FaultPointInfo points[PAYMENTS_NUM_FAULT_POINTS] = {
	[FAULT_IDEMPOTENCY_BEGIN] = {"idempotency_begin", false,
	"idempotency_begin, after the key is locked and before it is written"},
	[FAULT_IDEMPOTENCY_COMPLETE] = {"idempotency_complete", false,
	"idempotency_complete, before the response is stored"},
	[FAULT_RESERVE_AFTER_TAKE] = {"reserve_after_take", false,
	"reserve, after the stock is taken and before the hold is written"},
	[FAULT_RESERVATION_CONFIRM] = {"reservation_confirm", false,
	"confirm_reservation and confirm_order, before a hold is confirmed"},
	[FAULT_RESERVATION_EXPIRE_BATCH] = {"reservation_expire_batch", false,
	"expire_reservations, before a batch of lapsed holds gives its stock back"},
	[FAULT_WORKER_AFTER_CLAIM] = {"worker_after_claim", false,
	"run_compensations, after an item is claimed and before its handler runs"},
	[FAULT_WORKER_AFTER_HANDLER] = {"worker_after_handler", true,
	"run_compensations, after a handler returned and before the item is marked succeeded"},
	[FAULT_CALLBACK_AFTER_DEDUPE] = {"callback_after_dedupe", true,
	"receive_callback, after the event is recorded once and before it is routed"},
	[FAULT_RECONCILE_MID_RUN] = {"reconcile_mid_run", false,
	"reconcile, after the lines are classified and before the run is recorded"},
	[FAULT_TCC_FENCE_WRITE] = {"tcc_fence_write", false,
	"tcc_try, tcc_confirm and tcc_cancel, before the branch's row is written"},
	[FAULT_SAGA_CHAIN_STEP] = {"saga_chain_step", false,
	"saga_abort, before each compensation of the chain is queued"},
};

typedef struct FaultSlot
{
	FaultAction action;			/* FAULT_NONE: disarmed */
	int32		remaining;		/* passes that may still fire */
	double		probability;
	int64		delay_usecs;
	int32		pid;			/* 0: any process */
	uint64		generation;		/* changes at every arm and disarm */
	uint64		hits;			/* times the point fired since the start */
	TimestampTz armed_at;
} FaultSlot;

typedef struct FaultTable
{
	pg_atomic_uint32 armed;		/* how many slots are armed */
	LWLock	   *lock;
	FaultSlot	slots[PAYMENTS_NUM_FAULT_POINTS];
} FaultTable;

pg_atomic_uint32 *payments_faults_armed = NULL;

static FaultTable *faults = NULL;
static bool fault_injection = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
fault_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(FaultTable));
	RequestNamedLWLockTranche("payments fault points", 1);
}

static void
fault_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	faults = ShmemInitStruct("payments fault points", sizeof(FaultTable), &found);
	if (!found)
	{
		memset(faults, 0, sizeof(FaultTable));
		pg_atomic_init_u32(&faults->armed, 0);
		faults->lock = &(GetNamedLWLockTranche("payments fault points"))->lock;
	}
	LWLockRelease(AddinShmemInitLock);
	payments_faults_armed = &faults->armed;
}

/*
 * Called from _PG_init.  The table exists only in a preloaded library with
 * payments.fault_injection on; elsewhere every point stays a NULL test.
 */
void
fault_init(void)
{
	/* A postmaster setting can only be defined while preloading. */
	if (!process_shared_preload_libraries_in_progress)
		return;
	DefineCustomBoolVariable("payments.fault_injection",
							 gettext_noop("Allows superusers to arm the extension's fault points."),
							 gettext_noop("For drills on test servers; keep it off in production."),
							 &fault_injection,
							 false,
							 PGC_POSTMASTER,
							 0,
							 NULL, NULL, NULL);
	if (!fault_injection)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = fault_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = fault_shmem_startup;
}

/* Only a superuser arms, and only where fault injection is on. */
static void
check_enabled(void)
{
	if (!superuser())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to arm or disarm fault points"),
				 errdetail("Only superusers may arm fault points.")));
	if (faults == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("fault injection is not enabled on this server"),
				 errhint("Set payments.fault_injection = on and shared_preload_libraries = 'payments', then restart the server; never on a production server.")));
}

static int
point_by_name(text *name)
{
	char	   *s = text_to_cstring(name);

	for (int i = 0; i < PAYMENTS_NUM_FAULT_POINTS; i++)
		if (strcmp(points[i].name, s) == 0)
			return i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("fault point \"%s\" does not exist", s),
			 errhint("The view payments.fault_points lists the points.")));
	return -1;					/* keep the compiler quiet */
}

static FaultAction
action_by_name(text *name)
{
	char	   *s = text_to_cstring(name);

	for (int i = FAULT_ERROR; i < lengthof(action_names); i++)
		if (strcmp(action_names[i], s) == 0)
			return (FaultAction) i;
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("fault action \"%s\" does not exist", s),
			 errhint("The actions are error, delay, wait, crash and duplicate.")));
	return FAULT_NONE;			/* keep the compiler quiet */
}

/* Disarm slot i; the caller holds the lock exclusively. */
static void
disarm_slot(int i)
{
	if (faults->slots[i].action == FAULT_NONE)
		return;
	faults->slots[i].action = FAULT_NONE;
	faults->slots[i].generation++;
	pg_atomic_fetch_sub_u32(&faults->armed, 1);
}

/*
 * payments.fault_arm(point, action, times, probability, delay, pid): arm a
 * point, replacing what it was armed with.
 */
Datum
payments_fault_arm(PG_FUNCTION_ARGS)
{
	int			point;
	FaultAction action;
	int32		times;
	double		probability;
	int64		delay_usecs = 0;
	int32		pid = 0;
	FaultSlot  *slot;

	check_enabled();
	point = point_by_name(payments_arg_text(fcinfo, 0, "point", NAMEDATALEN));
	action = action_by_name(payments_arg_text(fcinfo, 1, "action", NAMEDATALEN));
	times = payments_arg_int_range(fcinfo, 2, "times", 1, INT_MAX);
	payments_arg_not_null(fcinfo, 3, "probability");
	probability = PG_GETARG_FLOAT8(3);
	if (!(probability > 0 && probability <= 1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("probability must be greater than 0 and at most 1")));
	if (action == FAULT_DELAY)
		delay_usecs = ((Interval *) DatumGetPointer(
													payments_arg_interval(fcinfo, 4, "delay",
																		  USECS_PER_HOUR)))->time;
	else if (!PG_ARGISNULL(4))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a delay is only given with the action \"delay\"")));
	if (!PG_ARGISNULL(5))
		pid = payments_arg_int_range(fcinfo, 5, "pid", 1, INT_MAX);
	if (action == FAULT_DUPLICATE && !points[point].can_duplicate)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("fault point \"%s\" cannot deliver its step twice",
						points[point].name),
				 errhint("Only worker_after_handler and callback_after_dedupe take the action \"duplicate\".")));

	LWLockAcquire(faults->lock, LW_EXCLUSIVE);
	slot = &faults->slots[point];
	disarm_slot(point);
	slot->action = action;
	slot->remaining = times;
	slot->probability = probability;
	slot->delay_usecs = delay_usecs;
	slot->pid = pid;
	slot->armed_at = GetCurrentTimestamp();
	slot->generation++;
	pg_atomic_fetch_add_u32(&faults->armed, 1);
	LWLockRelease(faults->lock);
	elog(LOG, "fault point \"%s\" armed with action \"%s\"",
		 points[point].name, action_names[action]);
	PG_RETURN_VOID();
}

/*
 * payments.fault_disarm(point): disarm one point, or every point when NULL.
 * Returns how many were armed.  Processes waiting at them go on.
 */
Datum
payments_fault_disarm(PG_FUNCTION_ARGS)
{
	int			only = -1;
	int			n = 0;

	check_enabled();
	if (!PG_ARGISNULL(0))
		only = point_by_name(payments_arg_text(fcinfo, 0, "point", NAMEDATALEN));

	LWLockAcquire(faults->lock, LW_EXCLUSIVE);
	for (int i = 0; i < PAYMENTS_NUM_FAULT_POINTS; i++)
		if ((only < 0 || i == only) && faults->slots[i].action != FAULT_NONE)
		{
			disarm_slot(i);
			n++;
		}
	LWLockRelease(faults->lock);
	PG_RETURN_INT32(n);
}

/* payments.fault_points(): every point, armed or not, for the view */
Datum
payments_fault_points(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	for (int i = 0; i < PAYMENTS_NUM_FAULT_POINTS; i++)
	{
		Datum		values[8];
		bool		nulls[8] = {false, false, true, true, true, true, true, false};
		FaultSlot	slot;

		memset(&slot, 0, sizeof(slot));
		if (faults != NULL)
		{
			LWLockAcquire(faults->lock, LW_SHARED);
			slot = faults->slots[i];
			LWLockRelease(faults->lock);
		}
		values[0] = CStringGetTextDatum(points[i].name);
		values[1] = CStringGetTextDatum(points[i].step);
		if (slot.action != FAULT_NONE)
		{
			values[2] = CStringGetTextDatum(action_names[slot.action]);
			values[3] = Int32GetDatum(slot.remaining);
			values[4] = Float8GetDatum(slot.probability);
			if (slot.action == FAULT_DELAY)
			{
				Interval   *iv = palloc0(sizeof(Interval));

				iv->time = slot.delay_usecs;
				values[5] = IntervalPGetDatum(iv);
				nulls[5] = false;
			}
			if (slot.pid != 0)
			{
				values[6] = Int32GetDatum(slot.pid);
				nulls[6] = false;
			}
			nulls[2] = nulls[3] = nulls[4] = false;
		}
		values[7] = Int64GetDatum((int64) slot.hits);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* Sleep for usecs, or until the slot's generation moves when usecs < 0. */
static void
fault_sleep(int point, int64 usecs, uint64 generation)
{
	TimestampTz end = GetCurrentTimestamp() + usecs;

	for (;;)
	{
		long		timeout = 100;

		CHECK_FOR_INTERRUPTS();
		if (usecs >= 0)
		{
			TimestampTz now = GetCurrentTimestamp();

			if (now >= end)
				return;
			timeout = Min(timeout, (end - now + 999) / 1000);
		}
		else
		{
			bool		moved;

			LWLockAcquire(faults->lock, LW_SHARED);
			moved = faults->slots[point].generation != generation;
			LWLockRelease(faults->lock);
			if (moved)
				return;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

/*
 * A pass of an armed table: fire the point if it is armed for this
 * process and the dice say so.  Returns true for "duplicate".
 */
bool
payments_fault_hit(PaymentsFaultPoint point)
{
	FaultSlot  *slot = &faults->slots[point];
	FaultAction action = FAULT_NONE;
	int64		delay_usecs = 0;
	uint64		generation = 0;

	LWLockAcquire(faults->lock, LW_EXCLUSIVE);
	if (slot->action != FAULT_NONE && slot->remaining > 0 &&
		(slot->pid == 0 || slot->pid == MyProcPid) &&
		(slot->probability >= 1 ||
		 pg_prng_double(&pg_global_prng_state) < slot->probability))
	{
		action = slot->action;
		delay_usecs = slot->delay_usecs;
		slot->hits++;
		generation = slot->generation;

		/* A wait ends with its disarm, so it keeps the point armed. */
		if (--slot->remaining == 0 && action != FAULT_WAIT)
			disarm_slot(point);
	}
	LWLockRelease(faults->lock);

	switch (action)
	{
		case FAULT_NONE:
		case FAULT_DUPLICATE:
			break;
		case FAULT_ERROR:
			ereport(ERROR,
					(errcode(ERRCODE_PM_FAULT_INJECTED),
					 errmsg("fault injected at point \"%s\"", points[point].name),
					 errdetail("The point was armed with payments.fault_arm.")));
			break;
		case FAULT_DELAY:
			fault_sleep(point, delay_usecs, generation);
			break;
		case FAULT_WAIT:
			ereport(LOG,
					(errmsg("waiting at fault point \"%s\" until it is disarmed",
							points[point].name)));
			fault_sleep(point, -1, generation);
			break;
		case FAULT_CRASH:
			ereport(LOG,
					(errmsg("crashing at fault point \"%s\"", points[point].name)));
			kill(MyProcPid, SIGKILL);
			pg_usleep(10 * USECS_PER_SEC);	/* the signal ends us first */
			elog(PANIC, "fault point \"%s\" could not kill its process",
				 points[point].name);
			break;
	}
	return action == FAULT_DUPLICATE;
}
