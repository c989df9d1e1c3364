/*-------------------------------------------------------------------------
 *
 * worker_shmem.c
 *	  Shared memory of the launcher and workers, and the hooks every
 *	  backend runs for them: wake-ups at commit, and stopping a database's
 *	  worker before a command that needs the database free of connections.
 *
 * All of this exists only when the library is preloaded; every function
 * here is a no-op otherwise, so the SQL functions work either way.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"
#include "worker.h"

#include <signal.h>

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/timestamp.h"

PaymentsShared *payments_shared = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Set during a transaction, acted on when it commits. */
static bool wake_at_commit = false;
static bool register_at_commit = false;

/* How long a database stays without a worker for a utility command. */
#define PAUSE_FOR_UTILITY_SECS	60
/* How long the utility command waits for the worker to exit. */
#define STOP_WAIT_SECS			10

static Size
payments_shmem_size(void)
{
	return add_size(offsetof(PaymentsShared, slots),
					mul_size(payments_max_workers, sizeof(PaymentsWorkerSlot)));
}

static void
payments_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(payments_shmem_size());
	RequestNamedLWLockTranche("payments", 1);
}

static void
payments_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	payments_shared = ShmemInitStruct("payments", payments_shmem_size(), &found);
	if (!found)
	{
		memset(payments_shared, 0, payments_shmem_size());
		payments_shared->lock = &(GetNamedLWLockTranche("payments"))->lock;
		payments_shared->nslots = payments_max_workers;
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Caller holds the lock. */
PaymentsWorkerSlot *
payments_find_slot(Oid dboid)
{
	for (int i = 0; i < payments_shared->nslots; i++)
	{
		PaymentsWorkerSlot *slot = &payments_shared->slots[i];

		if (slot->state != PW_FREE && slot->dboid == dboid)
			return slot;
	}
	return NULL;
}

/*
 * Caller holds the lock exclusively.  until = 0 excludes the database until
 * payments_register_database_at_commit includes it again.  If the list is
 * full the database is simply probed again at the next scan.
 */
void
payments_exclude_database(Oid dboid, TimestampTz until)
{
	PaymentsExcludedDb *free_entry = NULL;

	for (int i = 0; i < PAYMENTS_MAX_EXCLUDED; i++)
	{
		PaymentsExcludedDb *e = &payments_shared->excluded[i];

		if (e->dboid == dboid)
		{
			e->until = until;
			return;
		}
		if (e->dboid == InvalidOid && free_entry == NULL)
			free_entry = e;
	}
	if (free_entry != NULL)
	{
		free_entry->dboid = dboid;
		free_entry->until = until;
	}
}

/* Caller holds the lock. */
bool
payments_database_excluded(Oid dboid, TimestampTz now)
{
	for (int i = 0; i < PAYMENTS_MAX_EXCLUDED; i++)
	{
		PaymentsExcludedDb *e = &payments_shared->excluded[i];

		if (e->dboid == dboid)
			return e->until == 0 || e->until > now;
	}
	return false;
}

static void
include_database(Oid dboid)
{
	for (int i = 0; i < PAYMENTS_MAX_EXCLUDED; i++)
	{
		if (payments_shared->excluded[i].dboid == dboid)
			payments_shared->excluded[i].dboid = InvalidOid;
	}
}

/*
 * Wake this database's worker when the current transaction commits, so that
 * work it queued starts within milliseconds rather than at the next poll.
 */
void
payments_wake_worker_at_commit(void)
{
	wake_at_commit = true;
}

/* Ask the launcher to start a worker here once CREATE EXTENSION commits. */
void
payments_register_database_at_commit(void)
{
	register_at_commit = true;
}

static void
payments_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && payments_shared != NULL &&
		(wake_at_commit || register_at_commit))
	{
		PaymentsWorkerSlot *slot;
		Latch	   *latch = NULL;
		Latch	   *launcher_latch = NULL;

		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		if (register_at_commit)
		{
			include_database(MyDatabaseId);
			payments_shared->rescan_requested = true;
			launcher_latch = payments_shared->launcher_latch;
		}
		slot = payments_find_slot(MyDatabaseId);
		if (slot != NULL)
			latch = slot->latch;
		LWLockRelease(payments_shared->lock);

		if (latch != NULL)
			SetLatch(latch);
		if (launcher_latch != NULL)
			SetLatch(launcher_latch);
	}

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			wake_at_commit = false;
			register_at_commit = false;
			break;
		default:
			break;
	}
}

/*
 * Stop the worker of the named database and keep the launcher from starting
 * it again for a while, because the command about to run needs the database
 * free of other connections.  If the command fails, the worker comes back
 * when the pause ends.
 */
static void
pause_database_worker(const char *dbname)
{
	Oid			dboid = get_database_oid(dbname, true);
	TimestampTz deadline;

	if (!OidIsValid(dboid))
		return;

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	payments_exclude_database(dboid,
							  TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  PAUSE_FOR_UTILITY_SECS * 1000));
	LWLockRelease(payments_shared->lock);

	deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
										   STOP_WAIT_SECS * 1000);
	for (;;)
	{
		PaymentsWorkerSlot *slot;
		pid_t		pid = 0;

		LWLockAcquire(payments_shared->lock, LW_SHARED);
		slot = payments_find_slot(dboid);
		if (slot != NULL)
			pid = slot->pid;
		LWLockRelease(payments_shared->lock);

		if (pid == 0 || GetCurrentTimestamp() >= deadline)
			break;
		kill(pid, SIGTERM);
		CHECK_FOR_INTERRUPTS();
		pg_usleep(10000L);
	}
}

static DefElem *
has_option(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, name) == 0)
			return opt;
	}
	return NULL;
}

static void
payments_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
						bool readOnlyTree, ProcessUtilityContext context,
						ParamListInfo params, QueryEnvironment *queryEnv,
						DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	switch (payments_shared == NULL ? T_Invalid : nodeTag(parsetree))
	{
		case T_CreateExtensionStmt:
			if (strcmp(((CreateExtensionStmt *) parsetree)->extname, "payments") == 0)
				payments_register_database_at_commit();
			break;
		case T_DropStmt:
			/* a worker whose extension is gone exits at its next round */
			if (((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
				payments_wake_worker_at_commit();
			break;
		case T_DropdbStmt:
			pause_database_worker(((DropdbStmt *) parsetree)->dbname);
			break;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				pause_database_worker(((RenameStmt *) parsetree)->subname);
			break;
		case T_AlterDatabaseStmt:
			if (has_option(((AlterDatabaseStmt *) parsetree)->options, "tablespace"))
				pause_database_worker(((AlterDatabaseStmt *) parsetree)->dbname);
			break;
		case T_CreatedbStmt:
			{
				DefElem    *template = has_option(((CreatedbStmt *) parsetree)->options,
												  "template");

				if (template != NULL && template->arg != NULL)
					pause_database_worker(defGetString(template));
			}
			break;
		default:
			break;
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* Called from _PG_init while preloading. */
void
payments_worker_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = payments_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = payments_shmem_startup;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = payments_ProcessUtility;
	RegisterXactCallback(payments_xact_callback, NULL);
}
