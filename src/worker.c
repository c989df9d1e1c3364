/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The per-database worker: the maintenance no client should have to run.
 *
 * Each round runs every task below, each in a transaction of its own, so a
 * failure in one (logged with its context, counted in worker_status) never
 * stops the others or the loop, and an immediate shutdown mid-round loses
 * or repeats nothing that committed.  A task whose batch came back full is
 * run again at once; otherwise the worker sleeps on its latch for
 * payments.worker_naptime, or until a committing transaction that queued
 * work wakes it.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"
#include "worker.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
#include "parser/parse_func.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* Rows a task handles per transaction. */
#define WORKER_BATCH 1000

/*
 * A task is a maintenance function of the extension taking the batch size.
 * A task whose function does not exist (an older version of the extension)
 * is skipped.
 */
typedef struct WorkerTask
{
	const char *name;
	const char *function;
	const char *sql;
} WorkerTask;

static const WorkerTask worker_tasks[] = {
	{"expire reservations", "payments.expire_reservations",
	"SELECT payments.expire_reservations($1)"},
	{"purge idempotency keys", "payments.purge_idempotency_keys",
	"SELECT payments.purge_idempotency_keys($1)"},
	{"run compensations", "payments.run_compensations",
	"SELECT payments.run_compensations($1)"},
};

static int	my_slotno = -1;
static PaymentsWorkerSlot *my_slot = NULL;
static const WorkerTask *current_task = NULL;

static void
worker_exit(int code, Datum arg)
{
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
	}
	LWLockRelease(payments_shared->lock);
}

static void
set_state(PaymentsWorkerState state)
{
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	my_slot->state = state;
	if (state == PW_IDLE)
		my_slot->last_run = GetCurrentTimestamp();
	LWLockRelease(payments_shared->lock);
}

static void
task_error_context(void *arg)
{
	if (current_task != NULL)
		errcontext("payments worker task \"%s\"", current_task->name);
}

/*
 * Leave for good: the extension is gone from this database (or the worker
 * is disabled).  Exit code 0 tells the postmaster not to restart us; the
 * launcher will not either until CREATE EXTENSION says otherwise.
 */
static void
worker_leave(bool extension_gone)
{
	if (extension_gone)
	{
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		payments_exclude_database(MyDatabaseId, 0);
		LWLockRelease(payments_shared->lock);
	}
	ereport(LOG,
			(errmsg("payments worker for database %u exiting: %s", MyDatabaseId,
					extension_gone ? "the extension is not installed" : "payments.worker_enabled is off")));
	proc_exit(0);
}

static bool
task_function_exists(const WorkerTask *task)
{
	Oid			argtypes[1] = {INT4OID};

	return OidIsValid(LookupFuncName(stringToQualifiedNameList(task->function),
									 1, argtypes, true));
}

/*
 * Run one task in a transaction of its own.  Returns how many rows it
 * handled, or -1 if it failed.
 */
static int64
run_task(const WorkerTask *task, MemoryContext loopcxt)
{
	volatile int64 n = 0;
	ErrorContextCallback errcallback;

	errcallback.callback = task_error_context;
	errcallback.arg = NULL;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	current_task = task;

	PG_TRY();
	{
		Oid			argtypes[1] = {INT4OID};
		Datum		values[1] = {Int32GetDatum(WORKER_BATCH)};
		bool		gone;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());

		gone = !OidIsValid(get_extension_oid("payments", true));
		if (!gone && task_function_exists(task))
		{
			bool		isnull;

			pgstat_report_activity(STATE_RUNNING, task->sql);
			if (SPI_execute_with_args(task->sql, 1, argtypes, values, NULL,
									  false, 0) != SPI_OK_SELECT || SPI_processed != 1)
				elog(ERROR, "unexpected result from \"%s\"", task->sql);
			n = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
		}

		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, NULL);
		if (gone)
			worker_leave(true);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		HOLD_INTERRUPTS();
		EmitErrorReport();
		MemoryContextSwitchTo(loopcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();

		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		my_slot->items_failed++;
		snprintf(my_slot->last_error, PAYMENTS_WORKER_ERROR_LEN, "%s: %s",
				 task->name, edata->message);
		LWLockRelease(payments_shared->lock);
		FreeErrorData(edata);
		pgstat_report_activity(STATE_IDLE, NULL);
		RESUME_INTERRUPTS();
		n = -1;
	}
	PG_END_TRY();

	error_context_stack = errcallback.previous;
	current_task = NULL;

	if (n > 0)
	{
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		my_slot->items_done += n;
		LWLockRelease(payments_shared->lock);
	}
	return n;
}

static void
set_application_name(void)
{
	char	   *dbname;
	char		appname[NAMEDATALEN + 32];

	StartTransactionCommand();
	dbname = get_database_name(MyDatabaseId);
	snprintf(appname, sizeof(appname), "payments worker: %s",
			 dbname ? dbname : "?");
	CommitTransactionCommand();
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);
}

void
payments_worker_main(Datum main_arg)
{
	PaymentsWorkerArgs args;
	MemoryContext loopcxt;

	memcpy(&args, MyBgworkerEntry->bgw_extra, sizeof(args));
	my_slotno = DatumGetInt32(main_arg);

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(args.dboid, args.roleoid, 0);

	/* Take the slot the launcher reserved for this database. */
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	if (my_slotno < 0 || my_slotno >= payments_shared->nslots ||
		payments_shared->slots[my_slotno].dboid != args.dboid ||
		payments_shared->slots[my_slotno].pid != 0)
	{
		LWLockRelease(payments_shared->lock);
		ereport(LOG,
				(errmsg("payments worker for database %u has no slot reserved, exiting",
						args.dboid)));
		proc_exit(0);
	}
	my_slot = &payments_shared->slots[my_slotno];
	my_slot->pid = MyProcPid;
	my_slot->latch = MyLatch;
	my_slot->state = PW_IDLE;
	my_slot->started_at = GetCurrentTimestamp();
	LWLockRelease(payments_shared->lock);
	before_shmem_exit(worker_exit, (Datum) 0);

	set_application_name();
	loopcxt = AllocSetContextCreate(TopMemoryContext, "payments worker loop",
									ALLOCSET_DEFAULT_SIZES);

	for (;;)
	{
		bool		more = false;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!payments_worker_enabled)
			worker_leave(false);

		set_state(PW_RUNNING);
		for (int i = 0; i < lengthof(worker_tasks); i++)
		{
			if (run_task(&worker_tasks[i], loopcxt) >= WORKER_BATCH)
				more = true;
			MemoryContextReset(loopcxt);
			CHECK_FOR_INTERRUPTS();
		}
		set_state(PW_IDLE);

		if (more)
			continue;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 payments_worker_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
