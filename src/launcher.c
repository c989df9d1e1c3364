/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: starts one worker per database that has the extension.
 *
 * See worker.h for the lifecycle.  The launcher holds no database
 * connection: it reads the shared catalogs pg_database and pg_authid only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "worker.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

typedef struct DatabaseEntry
{
	Oid			oid;
	char		name[NAMEDATALEN];
} DatabaseEntry;

/* Launcher-local: the handle of the worker in each slot. */
static BackgroundWorkerHandle **handles;

void
payments_register_launcher(void)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	strlcpy(bgw.bgw_library_name, "payments", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "payments_launcher_main", BGW_MAXLEN);
	strlcpy(bgw.bgw_name, "payments launcher", BGW_MAXLEN);
	strlcpy(bgw.bgw_type, "payments launcher", BGW_MAXLEN);
	RegisterBackgroundWorker(&bgw);
}

static void
launcher_exit(int code, Datum arg)
{
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	if (payments_shared->launcher_pid == MyProcPid)
	{
		payments_shared->launcher_pid = 0;
		payments_shared->launcher_latch = NULL;
	}
	LWLockRelease(payments_shared->lock);
}

/* The databases that accept connections and are not templates. */
static List *
list_databases(MemoryContext cxt)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	MemoryContext oldcxt;

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		DatabaseEntry *entry;

		/*
		 * Template databases get no worker: a connection to one makes
		 * CREATE DATABASE from it fail, and they hold no live data.
		 */
		if (!db->datallowconn || db->datistemplate)
			continue;
		oldcxt = MemoryContextSwitchTo(cxt);
		entry = palloc(sizeof(DatabaseEntry));
		entry->oid = db->oid;
		strlcpy(entry->name, NameStr(db->datname), NAMEDATALEN);
		result = lappend(result, entry);
		MemoryContextSwitchTo(oldcxt);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

/* The role workers connect as; InvalidOid means the bootstrap superuser. */
static Oid
worker_role_oid(void)
{
	Oid			roleoid = InvalidOid;

	if (payments_worker_role == NULL || payments_worker_role[0] == '\0')
		return InvalidOid;
	StartTransactionCommand();
	roleoid = get_role_oid(payments_worker_role, true);
	CommitTransactionCommand();
	if (!OidIsValid(roleoid))
		ereport(WARNING,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role \"%s\" named by payments.worker_role does not exist",
						payments_worker_role),
				 errhint("Workers connect as the bootstrap superuser until the role exists.")));
	return roleoid;
}

static void
start_worker(int slotno, DatabaseEntry *db, Oid roleoid)
{
	BackgroundWorker bgw;
	PaymentsWorkerArgs args = {db->oid, roleoid};
	PaymentsWorkerSlot *slot = &payments_shared->slots[slotno];

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "payments", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "payments_worker_main", BGW_MAXLEN);
	snprintf(bgw.bgw_name, BGW_MAXLEN, "payments worker for database \"%s\"", db->name);
	strlcpy(bgw.bgw_type, "payments worker", BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(slotno);
	memcpy(bgw.bgw_extra, &args, sizeof(args));
	bgw.bgw_notify_pid = MyProcPid;

	/* Claim the slot first: the worker checks it is the one meant for it. */
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	memset(slot, 0, sizeof(PaymentsWorkerSlot));
	slot->dboid = db->oid;
	slot->state = PW_STARTING;
	LWLockRelease(payments_shared->lock);

	if (!RegisterDynamicBackgroundWorker(&bgw, &handles[slotno]))
	{
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		slot->state = PW_FREE;
		LWLockRelease(payments_shared->lock);
		handles[slotno] = NULL;
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the payments worker for database \"%s\"", db->name),
				 errhint("Increase max_worker_processes.")));
	}
}

/* Free the slots of workers that have exited; returns how many. */
static int
reap_workers(void)
{
	int			reaped = 0;

	for (int i = 0; i < payments_shared->nslots; i++)
	{
		pid_t		pid;

		if (handles[i] == NULL ||
			GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
			continue;
		pfree(handles[i]);
		handles[i] = NULL;
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		payments_shared->slots[i].state = PW_FREE;
		payments_shared->slots[i].pid = 0;
		payments_shared->slots[i].latch = NULL;
		LWLockRelease(payments_shared->lock);
		reaped++;
	}
	return reaped;
}

static void
stop_all_workers(void)
{
	for (int i = 0; i < payments_shared->nslots; i++)
		if (handles[i] != NULL)
			TerminateBackgroundWorker(handles[i]);
}

/* Start a worker for every database that needs one and has none. */
static void
scan_databases(MemoryContext scancxt)
{
	List	   *dbs;
	ListCell   *lc;
	Oid			roleoid;
	TimestampTz now = GetCurrentTimestamp();
	bool		warned_full = false;

	MemoryContextReset(scancxt);
	dbs = list_databases(scancxt);
	roleoid = worker_role_oid();

	foreach(lc, dbs)
	{
		DatabaseEntry *db = lfirst(lc);
		bool		needed;
		int			freeslot = -1;

		LWLockAcquire(payments_shared->lock, LW_SHARED);
		needed = payments_find_slot(db->oid) == NULL &&
			!payments_database_excluded(db->oid, now);
		for (int i = 0; needed && i < payments_shared->nslots; i++)
		{
			if (payments_shared->slots[i].state == PW_FREE && handles[i] == NULL)
			{
				freeslot = i;
				break;
			}
		}
		LWLockRelease(payments_shared->lock);

		if (!needed)
			continue;
		if (freeslot < 0)
		{
			if (!warned_full)
				ereport(LOG,
						(errmsg("payments launcher has no free worker slot for database \"%s\"",
								db->name),
						 errhint("Increase payments.max_workers.")));
			warned_full = true;
			continue;
		}
		start_worker(freeslot, db, roleoid);
	}
}

void
payments_launcher_main(Datum main_arg)
{
	MemoryContext scancxt;
	TimestampTz last_scan = 0;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	/* Refuse a second launcher; the first one stays in charge. */
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	if (payments_shared->launcher_pid != 0)
	{
		pid_t		other = payments_shared->launcher_pid;

		LWLockRelease(payments_shared->lock);
		ereport(LOG,
				(errmsg("payments launcher is already running with PID %d", (int) other)));
		proc_exit(0);
	}
	payments_shared->launcher_pid = MyProcPid;
	payments_shared->launcher_latch = MyLatch;
	payments_shared->rescan_requested = true;
	LWLockRelease(payments_shared->lock);
	before_shmem_exit(launcher_exit, (Datum) 0);

	handles = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(BackgroundWorkerHandle *) * payments_shared->nslots);
	scancxt = AllocSetContextCreate(TopMemoryContext, "payments launcher scan",
									ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("payments launcher started")));

	for (;;)
	{
		TimestampTz now;
		bool		rescan;
		int			reaped;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		reaped = reap_workers();

		/*
		 * A worker that exited on error asked for a rescan, maybe before
		 * its slot could be reaped; a reaped slot repeats the request, at
		 * most once a second so that a worker failing at start cannot spin.
		 */
		now = GetCurrentTimestamp();
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		rescan = payments_shared->rescan_requested ||
			(reaped > 0 && TimestampDifferenceExceeds(last_scan, now, 1000)) ||
			TimestampDifferenceExceeds(last_scan, now, payments_launcher_naptime * 1000);
		payments_shared->rescan_requested = false;
		LWLockRelease(payments_shared->lock);

		if (!payments_worker_enabled)
			stop_all_workers();
		else if (rescan)
		{
			pgstat_report_activity(STATE_RUNNING, "scanning databases");
			scan_databases(scancxt);
			last_scan = now;
			pgstat_report_activity(STATE_IDLE, NULL);
		}

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 payments_launcher_naptime * 1000L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
