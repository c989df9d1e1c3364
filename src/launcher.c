/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: gives the pool of workers to the databases whose work is
 *	  due, longest waiting first.
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
#include "utils/builtins.h"
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

/*
 * Launcher-local: the slot generation each handle's worker was started
 * for, and when.  A slot whose generation has moved on belongs to another
 * process, which frees it itself.
 */
static uint64 *handle_generations;
static TimestampTz *handle_started;

/*
 * How long a worker may take to connect and take its slot.  One that waits
 * longer (on a lock a utility command holds on its database, say) is
 * stopped so that it does not hold a slot of the pool meanwhile.
 */
#define WORKER_START_TIMEOUT_MS	10000
/* The longest back-off between failed starts of one database's worker */
#define RESTART_DELAY_MAX_MS	60000

/* Launcher-local: the name of each entry's database, from the last scan */
static NameData *database_names;

/*
 * How soon a database's worker is started again after one that could not
 * start (a role that cannot log in, say), so that it cannot spin.
 */
#define RESTART_DELAY_MS	1000

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

/*
 * Start a worker in a slot claimed for the database.  On failure the slot
 * is freed and the database's entry says why.
 */
static void
start_worker(int slotno, Oid dboid, Oid roleoid)
{
	BackgroundWorker bgw;
	PaymentsWorkerArgs args = {dboid, roleoid, handle_generations[slotno]};
	PaymentsDatabase *db;
	int			entry;
	const char *name = NULL;

	LWLockAcquire(payments_shared->lock, LW_SHARED);
	db = payments_find_database(dboid);
	entry = db ? db - payments_shared->databases : -1;
	LWLockRelease(payments_shared->lock);
	if (entry >= 0 && NameStr(database_names[entry])[0] != '\0')
		name = NameStr(database_names[entry]);

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	strlcpy(bgw.bgw_library_name, "payments", BGW_MAXLEN);
	strlcpy(bgw.bgw_function_name, "payments_worker_main", BGW_MAXLEN);
	if (name != NULL)
		snprintf(bgw.bgw_name, BGW_MAXLEN, "payments worker for database \"%s\"", name);
	else
		snprintf(bgw.bgw_name, BGW_MAXLEN, "payments worker for database %u", dboid);
	strlcpy(bgw.bgw_type, "payments worker", BGW_MAXLEN);
	bgw.bgw_main_arg = Int32GetDatum(slotno);
	memcpy(bgw.bgw_extra, &args, sizeof(args));
	bgw.bgw_notify_pid = MyProcPid;

	if (RegisterDynamicBackgroundWorker(&bgw, &handles[slotno]))
		return;

	handles[slotno] = NULL;
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	payments_shared->slots[slotno].state = PW_FREE;
	payments_shared->slots[slotno].generation++;
	payments_shared->slots[slotno].dboid = InvalidOid;
	db = payments_find_database(dboid);
	if (db != NULL)
	{
		db->start_failed = true;
		db->start_failures++;
	}
	if (db != NULL && db->unserved[0] == '\0')
	{
		strlcpy(db->unserved,
				"no background worker could be registered for it: max_worker_processes is reached",
				PAYMENTS_WORKER_ERROR_LEN);
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a payments worker for database %u", dboid),
				 errdetail("Every one of max_worker_processes is in use."),
				 errhint("Increase max_worker_processes, or lower payments.max_workers.")));
	}
	LWLockRelease(payments_shared->lock);
}

/*
 * Free the slots of workers that have exited; returns how many.  A worker
 * that exited before it took its slot could not start (its database is
 * gone, or its role cannot connect): its database's entry says so.
 */
static int
reap_workers(void)
{
	int			reaped = 0;
	TimestampTz now = GetCurrentTimestamp();

	for (int i = 0; i < payments_shared->nslots; i++)
	{
		PaymentsWorkerSlot *slot = &payments_shared->slots[i];
		pid_t		pid;

		if (handles[i] == NULL)
			continue;
		if (GetBackgroundWorkerPid(handles[i], &pid) != BGWH_STOPPED)
		{
			bool		stuck;

			LWLockAcquire(payments_shared->lock, LW_SHARED);
			stuck = slot->state == PW_STARTING &&
				slot->generation == handle_generations[i] &&
				TimestampDifferenceExceeds(handle_started[i], now,
										   WORKER_START_TIMEOUT_MS);
			LWLockRelease(payments_shared->lock);
			if (stuck)
				TerminateBackgroundWorker(handles[i]);
			continue;
		}
		pfree(handles[i]);
		handles[i] = NULL;
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);

		/*
		 * Only a slot still reserved for this handle's worker is ours to
		 * free: a worker that took it frees it on exit, and one started
		 * by an earlier launcher may hold it now.
		 */
		if (slot->generation == handle_generations[i] && slot->state != PW_FREE)
		{
			if (slot->state == PW_STARTING)
			{
				PaymentsDatabase *db = payments_find_database(slot->dboid);

				if (db != NULL)
				{
					db->start_failed = true;
					db->start_failures++;
					/* the back-off counts from the failure */
					db->last_start = now;
					strlcpy(db->unserved,
							TimestampDifferenceExceeds(handle_started[i], now,
													   WORKER_START_TIMEOUT_MS)
							? "its worker could not connect in time (a lock on the database?): see the server log"
							: "its worker exited before it could begin: see the server log",
							PAYMENTS_WORKER_ERROR_LEN);
				}
			}
			slot->state = PW_FREE;
			slot->dboid = InvalidOid;
			slot->pid = 0;
			slot->latch = NULL;
			slot->generation++;
		}
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

/*
 * Bring the entries in line with pg_database: one for every database that
 * accepts connections and is not a template, none for the others.  An
 * entry of a database that is gone, or became a template, is freed once no
 * worker is connected to it.
 */
static void
scan_databases(MemoryContext scancxt)
{
	List	   *dbs;
	ListCell   *lc;
	bool	   *seen;
	bool		full = false;

	MemoryContextReset(scancxt);
	dbs = list_databases(scancxt);
	seen = MemoryContextAllocZero(scancxt, sizeof(bool) * payments_shared->ndatabases);

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	foreach(lc, dbs)
	{
		DatabaseEntry *entry = lfirst(lc);
		PaymentsDatabase *db = payments_add_database(entry->oid);
		int			i;

		if (db == NULL)
		{
			full = true;
			continue;
		}
		i = db - payments_shared->databases;
		seen[i] = true;
		namestrcpy(&database_names[i], entry->name);
	}
	for (int i = 0; i < payments_shared->ndatabases; i++)
	{
		PaymentsDatabase *db = &payments_shared->databases[i];

		if (OidIsValid(db->dboid) && !seen[i] &&
			payments_find_slot(db->dboid) == NULL)
		{
			db->dboid = InvalidOid;
			NameStr(database_names[i])[0] = '\0';
		}
	}
	LWLockRelease(payments_shared->lock);

	if (full)
		ereport(LOG,
				(errmsg("payments launcher cannot keep track of more than %d databases",
						payments_shared->ndatabases),
				 errdetail("The databases beyond that number get no payments worker."),
				 errhint("Increase payments.max_databases.")));
}

/*
 * When a database's due work began to wait: the oldest of an unanswered
 * wake-up and a due time that has come; 0 if nothing is due.  Caller holds
 * the lock.
 */
static TimestampTz
due_since(PaymentsDatabase *db, TimestampTz now)
{
	TimestampTz due = payments_database_due(db);
	TimestampTz since = 0;

	if (due <= now)
		since = due;
	if (db->wake_requested && (since == 0 || db->wake_at < since))
		since = db->wake_at;
	return since;
}

typedef struct Candidate
{
	Oid			dboid;
	TimestampTz since;
} Candidate;

static int
candidate_cmp(const void *a, const void *b)
{
	const Candidate *ca = a;
	const Candidate *cb = b;

	if (ca->since != cb->since)
		return ca->since < cb->since ? -1 : 1;
	return 0;
}

/*
 * Give free slots to the due databases without a worker, longest waiting
 * first; if any must wait, ask as many idle workers with nothing due to
 * leave.  Returns when the launcher should look again.
 */
static TimestampTz
schedule_workers(void)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = TimestampTzPlusMilliseconds(now, payments_launcher_naptime * 1000L);
	Candidate  *cand = palloc(sizeof(Candidate) * payments_shared->ndatabases);
	int		   *to_start = palloc(sizeof(int) * payments_shared->nslots);
	Latch	  **to_wake = palloc(sizeof(Latch *) * payments_shared->nslots);
	int			ncand = 0;
	int			nstart = 0;
	int			nwake = 0;
	int			c;

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < payments_shared->ndatabases; i++)
	{
		PaymentsDatabase *db = &payments_shared->databases[i];
		TimestampTz since;
		TimestampTz retry;

		if (!OidIsValid(db->dboid) || db->no_extension)
			continue;
		if (db->paused_until > now)
		{
			next = Min(next, db->paused_until);
			continue;
		}
		if (payments_find_slot(db->dboid) != NULL)
			continue;			/* its worker sees its due time itself */
		since = due_since(db, now);
		if (since == 0)
		{
			next = Min(next, payments_database_due(db));
			continue;
		}
		retry = TimestampTzPlusMilliseconds(db->last_start,
											Min(RESTART_DELAY_MAX_MS,
												RESTART_DELAY_MS << Min(db->start_failures, 6)));
		if (db->start_failed && retry > now)
		{
			next = Min(next, retry);
			continue;
		}
		cand[ncand].dboid = db->dboid;
		cand[ncand].since = since;
		ncand++;
	}
	qsort(cand, ncand, sizeof(Candidate), candidate_cmp);

	for (c = 0; c < ncand; c++)
	{
		int			freeslot = -1;
		PaymentsWorkerSlot *slot;

		for (int i = 0; i < payments_shared->nslots; i++)
		{
			if (payments_shared->slots[i].state == PW_FREE && handles[i] == NULL)
			{
				freeslot = i;
				break;
			}
		}
		if (freeslot < 0)
			break;
		slot = &payments_shared->slots[freeslot];
		{
			uint64		generation = slot->generation + 1;

			memset(slot, 0, sizeof(PaymentsWorkerSlot));
			slot->generation = generation;
		}
		handle_generations[freeslot] = slot->generation;
		handle_started[freeslot] = now;
		slot->dboid = cand[c].dboid;
		slot->state = PW_STARTING;
		payments_find_database(cand[c].dboid)->last_start = now;
		to_start[nstart++] = freeslot;
	}

	/*
	 * The rest wait.  Idle workers with nothing due make room at once;
	 * busy ones after their quantum (see worker.c).
	 */
	payments_shared->nwaiting = ncand - c;
	for (int i = 0; i < payments_shared->nslots && nwake < ncand - c; i++)
	{
		PaymentsWorkerSlot *slot = &payments_shared->slots[i];
		PaymentsDatabase *db;

		if (slot->state != PW_IDLE || slot->leave_requested || slot->latch == NULL)
			continue;
		db = payments_find_database(slot->dboid);
		if (db != NULL && due_since(db, now) != 0)
			continue;
		slot->leave_requested = true;
		to_wake[nwake++] = slot->latch;
	}
	LWLockRelease(payments_shared->lock);

	for (int i = 0; i < nwake; i++)
		SetLatch(to_wake[i]);
	if (nstart > 0)
	{
		Oid			roleoid = worker_role_oid();

		for (int i = 0; i < nstart; i++)
			start_worker(to_start[i], payments_shared->slots[to_start[i]].dboid, roleoid);
	}
	if (ncand > c || nstart > 0)
		next = Min(next, TimestampTzPlusMilliseconds(now, RESTART_DELAY_MS));

	pfree(cand);
	pfree(to_start);
	pfree(to_wake);
	return next;
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

	/*
	 * A slot claimed by a launcher that died before its worker took it is
	 * freed, and its generation moves on, so that the worker, if it still
	 * comes (it may be waiting for a lock on its database), finds the slot
	 * no longer meant for it and exits.
	 */
	for (int i = 0; i < payments_shared->nslots; i++)
	{
		PaymentsWorkerSlot *slot = &payments_shared->slots[i];

		if (slot->state == PW_STARTING && slot->pid == 0)
		{
			slot->state = PW_FREE;
			slot->dboid = InvalidOid;
			slot->generation++;
		}
	}
	LWLockRelease(payments_shared->lock);
	before_shmem_exit(launcher_exit, (Datum) 0);

	handles = MemoryContextAllocZero(TopMemoryContext,
									 sizeof(BackgroundWorkerHandle *) * payments_shared->nslots);
	handle_generations = MemoryContextAllocZero(TopMemoryContext,
												sizeof(uint64) * payments_shared->nslots);
	handle_started = MemoryContextAllocZero(TopMemoryContext,
											sizeof(TimestampTz) * payments_shared->nslots);
	database_names = MemoryContextAllocZero(TopMemoryContext,
											sizeof(NameData) * payments_shared->ndatabases);
	scancxt = AllocSetContextCreate(TopMemoryContext, "payments launcher scan",
									ALLOCSET_DEFAULT_SIZES);
	ereport(LOG, (errmsg("payments launcher started")));

	for (;;)
	{
		TimestampTz now;
		TimestampTz next;
		bool		rescan;
		long		timeout;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		(void) reap_workers();

		now = GetCurrentTimestamp();
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		rescan = payments_shared->rescan_requested ||
			TimestampDifferenceExceeds(last_scan, now, payments_launcher_naptime * 1000);
		payments_shared->rescan_requested = false;
		LWLockRelease(payments_shared->lock);

		next = TimestampTzPlusMilliseconds(now, payments_launcher_naptime * 1000L);
		if (!payments_worker_enabled)
			stop_all_workers();
		else
		{
			if (rescan)
			{
				pgstat_report_activity(STATE_RUNNING, "scanning databases");
				scan_databases(scancxt);
				last_scan = now;
				pgstat_report_activity(STATE_IDLE, NULL);
			}
			next = Min(next, schedule_workers());
		}

		timeout = TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(timeout, 1), PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
