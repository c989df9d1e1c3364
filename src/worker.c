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
 * Before each round the worker checks that the database has the extension
 * in the library's own version.  After a package upgrade and before ALTER
 * EXTENSION payments UPDATE it has another: every task would fail, so the
 * worker says so once in the log and does nothing there, checking again
 * every round until the update, after which it goes on by itself.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "worker.h"
#include "compensation.h"
#include "extension_catalog.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
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
#include "utils/syscache.h"
#include "utils/timestamp.h"

/* Rows a task handles per transaction. */
#define WORKER_BATCH 1000

/*
 * How long the worker's own maintenance statements wait for a lock that an
 * application holds before the task gives up until the next round.
 */
#define WORKER_LOCK_TIMEOUT "1s"

/*
 * A task is a C function of the extension taking the batch size.  It is
 * found by its name in the schema pg_extension records and run by OID only
 * if it is a C function that belongs to the extension, so that no function
 * someone else created can stand in for it.  A task missing from an older
 * version of the extension is skipped.  Compensation handlers take the
 * lock timeout a session would have, so only the worker's own tasks get
 * WORKER_LOCK_TIMEOUT.
 */
typedef struct WorkerTask
{
	const char *name;
	const char *function;
	bool		lock_timeout;
} WorkerTask;

static const WorkerTask worker_tasks[] = {
	{"expire reservations", "expire_reservations", true},
	{"purge idempotency keys", "purge_idempotency_keys", true},
	{"run compensations", "run_compensations", false},
	{"chase callbacks", "chase_callbacks", true},
	{"purge callbacks", "purge_callbacks", true},
	{"purge tcc fence", "purge_tcc_fence", true},
	{"abort timed-out sagas", "abort_timed_out_sagas", true},
	{"queue due checks", "queue_due_checks", true},
};

static int	my_slotno = -1;
static PaymentsWorkerSlot *my_slot = NULL;
static const WorkerTask *current_task = NULL;

/* The installed version is not the library's, and the log has said so */
static bool other_version_logged = false;

/*
 * A worker that did not leave on purpose (code 0) asks the launcher to
 * start it again at once rather than at its next scan: its database still
 * needs it, for instance after a handler that ignored its timeout.
 */
static void
worker_exit(int code, Datum arg)
{
	Latch	   *launcher_latch = NULL;

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	if (my_slot->pid == MyProcPid)
	{
		my_slot->pid = 0;
		my_slot->latch = NULL;
	}
	if (code != 0)
		launcher_latch = payments_request_rescan();
	LWLockRelease(payments_shared->lock);
	if (launcher_latch != NULL)
		SetLatch(launcher_latch);
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
	if (extension_gone)
		ereport(LOG,
				(errmsg("payments worker for database %u exiting because the extension is not installed",
						MyDatabaseId)));
	else
		ereport(LOG,
				(errmsg("payments worker for database %u exiting because payments.worker_enabled is off",
						MyDatabaseId)));
	proc_exit(0);
}

static Oid
task_function(const WorkerTask *task, Oid extension)
{
	Oid			argtypes[1] = {INT4OID};
	HeapTuple	tup;
	Oid			fn;
	Oid			lang;

	tup = SearchSysCache3(PROCNAMEARGSNSP,
						  CStringGetDatum(task->function),
						  PointerGetDatum(buildoidvector(argtypes, 1)),
						  ObjectIdGetDatum(payments_schema_oid()));
	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	fn = ((Form_pg_proc) GETSTRUCT(tup))->oid;
	lang = ((Form_pg_proc) GETSTRUCT(tup))->prolang;
	ReleaseSysCache(tup);

	if (lang != ClanguageId ||
		getExtensionOfObject(ProcedureRelationId, fn) != extension)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("function %s is not the payments extension's own",
						format_procedure(fn)),
				 errdetail("The payments worker runs only C functions that belong to the extension."),
				 errhint("Drop the function, or drop and create the extension again.")));
	return fn;
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
		Oid			extension;
		Oid			fn = InvalidOid;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());

		extension = get_extension_oid("payments", true);
		if (OidIsValid(extension))
			fn = task_function(task, extension);
		if (OidIsValid(fn))
		{
			int			nestlevel = NewGUCNestLevel();

			if (task->lock_timeout)
				(void) set_config_option("lock_timeout", WORKER_LOCK_TIMEOUT,
										 PGC_SUSET, PGC_S_SESSION,
										 GUC_ACTION_SAVE, true, 0, false);
			pgstat_report_activity(STATE_RUNNING, task->name);
			n = DatumGetInt32(OidFunctionCall1(fn, Int32GetDatum(WORKER_BATCH)));
			AtEOXact_GUC(true, nestlevel);
		}

		PopActiveSnapshot();
		CommitTransactionCommand();
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, NULL);
		if (!OidIsValid(extension))
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

/*
 * Whether this round's tasks can run: the extension is installed in the
 * library's version.  If it is gone, leave; if it has another version, log
 * that once (until it is the library's again) and skip the round.
 */
static bool
extension_ready(void)
{
	PaymentsInstallState state;
	char	   *version;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	state = payments_install_state(&version);
	if (state == PAYMENTS_OTHER_VERSION && !other_version_logged)
	{
		payments_report_other_version(LOG, version);
		other_version_logged = true;
	}
	CommitTransactionCommand();

	if (state == PAYMENTS_NOT_INSTALLED)
		worker_leave(true);
	if (state == PAYMENTS_INSTALLED)
		other_version_logged = false;
	return state == PAYMENTS_INSTALLED;
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
	compensation_worker_attach();
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
		if (extension_ready())
		{
			for (int i = 0; i < lengthof(worker_tasks); i++)
			{
				if (run_task(&worker_tasks[i], loopcxt) >= WORKER_BATCH)
					more = true;
				MemoryContextReset(loopcxt);
				CHECK_FOR_INTERRUPTS();
			}
		}
		set_state(PW_IDLE);

		if (more)
			continue;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 payments_worker_naptime, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
