/*-------------------------------------------------------------------------
 *
 * worker_shmem.c
 *	  Shared memory of the launcher and workers, and the hooks every
 *	  backend runs for them: wake-ups at commit, stopping a database's
 *	  worker before a command that needs the database free of connections,
 *	  and refusing SET CONSTRAINTS inside a compensation handler.
 *
 * All of this exists only when the library is preloaded; every function
 * here is a no-op otherwise, so the SQL functions work either way.  The
 * settings of the launcher and the workers are defined here too
 * (worker_init), the ones that size shared memory only while preloading.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "worker.h"
#include "citus_tables.h"
#include "compensation.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/pg_subscription.h"
#include "catalog/pg_tablespace_d.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/tablespace.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "replication/slot.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PaymentsShared *payments_shared = NULL;

bool		payments_worker_enabled = true;
int			payments_launcher_naptime = 10;
int			payments_worker_naptime = 600000;
int			payments_max_workers = 3;
int			payments_max_databases = 1024;
char	   *payments_worker_role = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Set during a transaction, acted on when it commits. */
static bool wake_at_commit = false;
static bool register_at_commit = false;
static TimestampTz due_at_commit = 0;
static uint64 outbox_min_sent = PG_UINT64_MAX;	/* none sent */

/* This backend's database's entry, once found */
static int	my_database = -1;

static PaymentsDatabase *my_database_entry(void);

/*
 * Databases whose worker this transaction stopped for a utility command, in
 * TopTransactionContext; their workers may come back when it ends.
 */
static List *paused_databases = NIL;

static void release_paused_databases(void);

/*
 * How long a database stays without a worker for a utility command whose
 * transaction is prepared rather than ended (an ended one lets it go).
 */
#define PAUSE_FOR_UTILITY_SECS	60
/* How long the utility command waits for the worker to exit. */
#define STOP_WAIT_SECS			10

static Size
slots_size(void)
{
	return MAXALIGN(add_size(offsetof(PaymentsShared, slots),
							 mul_size(payments_max_workers, sizeof(PaymentsWorkerSlot))));
}

static Size
payments_shmem_size(void)
{
	return add_size(slots_size(),
					mul_size(payments_max_databases, sizeof(PaymentsDatabase)));
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
		payments_shared->ndatabases = payments_max_databases;
		payments_shared->databases = (PaymentsDatabase *)
			((char *) payments_shared + slots_size());
		for (int i = 0; i < payments_max_databases; i++)
		{
			pg_atomic_init_u64(&payments_shared->databases[i].due_at, 0);
			pg_atomic_init_u64(&payments_shared->databases[i].outbox_min_id, PG_UINT64_MAX);
		}
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

/* Caller holds the lock. */
PaymentsDatabase *
payments_find_database(Oid dboid)
{
	for (int i = 0; i < payments_shared->ndatabases; i++)
	{
		if (payments_shared->databases[i].dboid == dboid)
			return &payments_shared->databases[i];
	}
	return NULL;
}

/*
 * The entry of a database, made if there is none: due at once, so that a
 * worker finds out what it needs.  NULL when payments.max_databases entries
 * are taken.  Caller holds the lock exclusively.
 */
PaymentsDatabase *
payments_add_database(Oid dboid)
{
	PaymentsDatabase *db = payments_find_database(dboid);

	if (db != NULL)
		return db;
	db = payments_find_database(InvalidOid);
	if (db == NULL)
		return NULL;
	memset(((char *) db) + offsetof(PaymentsDatabase, no_extension), 0,
		   offsetof(PaymentsDatabase, due_at) - offsetof(PaymentsDatabase, no_extension));
	memset(((char *) db) + offsetof(PaymentsDatabase, last_run), 0,
		   sizeof(PaymentsDatabase) - offsetof(PaymentsDatabase, last_run));
	pg_atomic_write_u64(&db->due_at, (uint64) GetCurrentTimestamp());
	pg_atomic_write_u64(&db->outbox_min_id, PG_UINT64_MAX);
	db->dboid = dboid;
	return db;
}

/*
 * When a database's next round is due: its due time, or worker_naptime
 * after its last round if that is sooner (the setting may have been
 * lowered since the due time was set).
 */
TimestampTz
payments_database_due(PaymentsDatabase *db)
{
	TimestampTz due = (TimestampTz) pg_atomic_read_u64(&db->due_at);

	if (db->last_run != 0)
		due = Min(due, TimestampTzPlusMilliseconds(db->last_run, payments_worker_naptime));
	return due;
}

/*
 * Whether the launcher leaves a database alone: it has no extension, or a
 * utility command needs it free of connections.  Caller holds the lock.
 */
bool
payments_database_excluded(PaymentsDatabase *db, TimestampTz now)
{
	return db->no_extension || db->paused_until > now;
}

/*
 * Ask the launcher to scan the databases at once.  Caller holds the lock
 * exclusively, and sets the latch returned (if not NULL) once it has
 * released the lock.
 */
Latch *
payments_request_rescan(void)
{
	payments_shared->rescan_requested = true;
	return payments_shared->launcher_latch;
}

/*
 * Wake this database's worker when the current transaction commits, so that
 * work it queued starts within milliseconds rather than at the next poll;
 * if no worker is connected to the database, the launcher gives it one.
 */
void
payments_wake_worker_at_commit(void)
{
	wake_at_commit = true;
}

/*
 * Tell this database's worker, when the current transaction commits, that
 * work it made becomes due at the given time (a hold's TTL, a callback's
 * deadline), in case that is earlier than the worker's next round.  Only
 * an earlier time costs more than one atomic read at commit.
 */
void
payments_worker_due_at_commit(TimestampTz due)
{
	if (due_at_commit == 0 || due < due_at_commit)
		due_at_commit = due;
}

/*
 * Have this database's worker notify the outbox's relays once the current
 * transaction commits (outbox_notify.c).  Only the first commit after the
 * worker's last notification sets its latch; the worker's next
 * notification covers every commit since, so that many sending commits
 * cost the relays one notification and the senders no global lock.
 */
void
payments_outbox_sent_at_commit(int64 id)
{
	outbox_min_sent = Min(outbox_min_sent, (uint64) id);
}

/*
 * For the worker's notification: the smallest id of the messages sent by
 * the commits since the last call, or PG_UINT64_MAX if none.  A commit
 * records its ids once it is visible, and the caller reads the messages on
 * a snapshot taken after this call, so a pass sees every commit it takes
 * the ids of; a commit that records its ids after the call wakes the
 * worker again.
 */
uint64
payments_outbox_take_min_sent(void)
{
	PaymentsDatabase *db = my_database_entry();

	if (db == NULL)
		return PG_UINT64_MAX;
	return pg_atomic_exchange_u64(&db->outbox_min_id, PG_UINT64_MAX);
}

/* Ask the launcher to start a worker here once CREATE EXTENSION commits. */
void
payments_register_database_at_commit(void)
{
	register_at_commit = true;
}

/*
 * This backend's database's entry, or NULL if the launcher has not listed
 * the database yet (then the launcher's scan, which the caller asks for,
 * finds it due).  Templates never get one.
 */
static PaymentsDatabase *
my_database_entry(void)
{
	PaymentsDatabase *db;

	if (my_database >= 0 &&
		payments_shared->databases[my_database].dboid == MyDatabaseId)
		return &payments_shared->databases[my_database];

	LWLockAcquire(payments_shared->lock, LW_SHARED);
	db = payments_find_database(MyDatabaseId);
	LWLockRelease(payments_shared->lock);
	if (db != NULL)
		my_database = db - payments_shared->databases;
	return db;
}

/* The latch of this database's worker, or NULL if none is connected. */
static Latch *
worker_latch(void)
{
	PaymentsWorkerSlot *slot;
	Latch	   *latch;

	LWLockAcquire(payments_shared->lock, LW_SHARED);
	slot = payments_find_slot(MyDatabaseId);
	latch = slot != NULL ? slot->latch : NULL;
	LWLockRelease(payments_shared->lock);
	return latch;
}

/*
 * The latch to set so that this database's due work is seen: its worker's,
 * or the launcher's when no worker is connected to it.
 */
static Latch *
latch_to_wake(void)
{
	Latch	   *latch = worker_latch();

	return latch != NULL ? latch : payments_shared->launcher_latch;
}

/* Lower the database's due time to the given one; true if it was later. */
static bool
lower_due_at(PaymentsDatabase *db, TimestampTz due)
{
	uint64		current = pg_atomic_read_u64(&db->due_at);

	while ((TimestampTz) current > due)
	{
		if (pg_atomic_compare_exchange_u64(&db->due_at, &current, (uint64) due))
			return true;
	}
	return false;
}

static void
at_commit(void)
{
	PaymentsDatabase *db = my_database_entry();
	bool		wake = wake_at_commit || register_at_commit;
	Latch	   *latch = NULL;

	if (db == NULL)
	{
		if (!wake && outbox_min_sent == PG_UINT64_MAX)
			return;
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		latch = payments_request_rescan();
		LWLockRelease(payments_shared->lock);
		if (latch != NULL)
			SetLatch(latch);
		return;
	}

	/*
	 * The worker notifies the relays without a round; with no worker
	 * connected, the round of the one the launcher starts does.
	 */
	if (outbox_min_sent != PG_UINT64_MAX)
	{
		uint64		current = pg_atomic_read_u64(&db->outbox_min_id);

		while (current > outbox_min_sent &&
			   !pg_atomic_compare_exchange_u64(&db->outbox_min_id, &current,
											   outbox_min_sent))
			;
		/* only the first commit since the worker took the ids wakes it */
		if (current == PG_UINT64_MAX)
		{
			latch = worker_latch();
			if (latch == NULL)
				wake = true;
		}
	}
	if (wake)
	{
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		if (db->dboid == MyDatabaseId)
		{
			if (register_at_commit)
			{
				db->no_extension = false;
				payments_shared->rescan_requested = true;
			}
			if (!db->wake_requested)
				db->wake_at = GetCurrentTimestamp();
			db->wake_requested = true;
		}
		LWLockRelease(payments_shared->lock);
		latch = latch_to_wake();
	}
	else if (due_at_commit != 0 && lower_due_at(db, due_at_commit))
		latch = latch_to_wake();
	if (latch != NULL)
		SetLatch(latch);
}

static void
payments_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_COMMIT && payments_shared != NULL &&
		(wake_at_commit || register_at_commit || due_at_commit != 0 ||
		 outbox_min_sent != PG_UINT64_MAX))
		at_commit();

	/*
	 * A CREATE EXTENSION that is prepared (as Citus does on its workers)
	 * registers the database now: COMMIT PREPARED runs in another session,
	 * and a worker that comes too early waits for the prepared transaction
	 * instead of leaving (worker.c).  Wake-ups and due times are still
	 * dropped: a round before the commit would find nothing.
	 */
	if (event == XACT_EVENT_PREPARE && payments_shared != NULL &&
		register_at_commit)
	{
		wake_at_commit = false;
		due_at_commit = 0;
		outbox_min_sent = PG_UINT64_MAX;
		at_commit();
	}

	/*
	 * A prepared transaction keeps the database locked; its workers wait for
	 * the pause to run out.
	 */
	if ((event == XACT_EVENT_COMMIT || event == XACT_EVENT_ABORT) &&
		paused_databases != NIL && payments_shared != NULL)
		release_paused_databases();

	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			paused_databases = NIL;
			wake_at_commit = false;
			register_at_commit = false;
			due_at_commit = 0;
			outbox_min_sent = PG_UINT64_MAX;
			break;
		default:
			break;
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

/*
 * Would PreventInTransactionBlock() let a command run here?  The same tests,
 * asked rather than raised.
 */
static bool
outside_transaction_block(bool isTopLevel)
{
	return isTopLevel && !IsTransactionBlock() && !IsSubTransaction() &&
		(MyXactFlags & XACT_FLAGS_PIPELINING) == 0;
}

/* A copy of the named database's pg_database row, or NULL. */
static HeapTuple
database_row(const char *dbname)
{
	Oid			dboid = get_database_oid(dbname, true);

	if (!OidIsValid(dboid))
		return NULL;
	return SearchSysCacheCopy1(DATABASEOID, ObjectIdGetDatum(dboid));
}

/*
 * The checks below repeat those PostgreSQL 15 makes before it counts the
 * other sessions of the database (dropdb, RenameDatabase, movedb and
 * createdb in dbcommands.c, and the PreventInTransactionBlock calls in front
 * of them).  Each returns the database whose worker must go, or InvalidOid
 * when the command is refused or has nothing to wait for: then PostgreSQL
 * raises its own error, and the worker is left alone.  Errors found only
 * later (bad options, encodings, a busy database) can still end a command
 * by someone entitled to it; the worker then comes back at once (see
 * release_paused_databases).
 */
static Oid
dropdb_target(DropdbStmt *stmt, bool isTopLevel)
{
	HeapTuple	tup;
	Form_pg_database db;
	Oid			result = InvalidOid;
	int			nslots;
	int			nactive;

	if (!outside_transaction_block(isTopLevel) ||
		(tup = database_row(stmt->dbname)) == NULL)
		return InvalidOid;
	db = (Form_pg_database) GETSTRUCT(tup);
	if (pg_database_ownercheck(db->oid, GetUserId()) &&
		!db->datistemplate &&
		db->oid != MyDatabaseId)
	{
		(void) ReplicationSlotsCountDBSlots(db->oid, &nslots, &nactive);
		if (nactive == 0 && CountDBSubscriptions(db->oid) == 0)
			result = db->oid;
	}
	heap_freetuple(tup);
	return result;
}

/* ALTER DATABASE ... RENAME is allowed in a transaction block. */
static Oid
renamedb_target(RenameStmt *stmt)
{
	HeapTuple	tup = database_row(stmt->subname);
	Form_pg_database db;
	Oid			result = InvalidOid;

	if (tup == NULL)
		return InvalidOid;
	db = (Form_pg_database) GETSTRUCT(tup);
	if (pg_database_ownercheck(db->oid, GetUserId()) &&
		have_createdb_privilege() &&
		!OidIsValid(get_database_oid(stmt->newname, true)) &&
		db->oid != MyDatabaseId)
		result = db->oid;
	heap_freetuple(tup);
	return result;
}

/* ALTER DATABASE ... SET TABLESPACE, or WITH TABLESPACE as its only option */
static Oid
movedb_target(AlterDatabaseStmt *stmt, bool isTopLevel)
{
	DefElem    *opt;
	HeapTuple	tup;
	Form_pg_database db;
	Oid			spcoid;
	Oid			result = InvalidOid;

	if (list_length(stmt->options) != 1)
		return InvalidOid;
	opt = linitial_node(DefElem, stmt->options);
	if (strcmp(opt->defname, "tablespace") != 0 || opt->arg == NULL ||
		!outside_transaction_block(isTopLevel) ||
		(tup = database_row(stmt->dbname)) == NULL)
		return InvalidOid;
	db = (Form_pg_database) GETSTRUCT(tup);
	if (pg_database_ownercheck(db->oid, GetUserId()) &&
		db->oid != MyDatabaseId)
	{
		spcoid = get_tablespace_oid(defGetString(opt), true);
		if (OidIsValid(spcoid) &&
			pg_tablespace_aclcheck(spcoid, GetUserId(), ACL_CREATE) == ACLCHECK_OK &&
			spcoid != GLOBALTABLESPACE_OID &&
			spcoid != db->dattablespace)
			result = db->oid;
	}
	heap_freetuple(tup);
	return result;
}

/* CREATE DATABASE copies its template, template1 unless one is named. */
static Oid
createdb_template(CreatedbStmt *stmt, bool isTopLevel)
{
	DefElem    *template = has_option(stmt->options, "template");
	DefElem    *owner = has_option(stmt->options, "owner");
	const char *template_name = "template1";
	Oid			datdba = GetUserId();
	HeapTuple	tup;
	Form_pg_database db;
	Oid			result = InvalidOid;

	if (template != NULL && template->arg != NULL)
		template_name = defGetString(template);
	if (owner != NULL && owner->arg != NULL)
		datdba = get_role_oid(defGetString(owner), true);

	if (!outside_transaction_block(isTopLevel) ||
		!have_createdb_privilege() ||
		!OidIsValid(datdba) ||
		!is_member_of_role(GetUserId(), datdba) ||
		(tup = database_row(template_name)) == NULL)
		return InvalidOid;
	db = (Form_pg_database) GETSTRUCT(tup);
	if (!database_is_invalid_form(db) &&
		(db->datistemplate || pg_database_ownercheck(db->oid, GetUserId())) &&
		!OidIsValid(get_database_oid(stmt->dbname, true)))
		result = db->oid;
	heap_freetuple(tup);
	return result;
}

/*
 * Let the worker of every database this transaction paused come back now
 * rather than when the pause runs out: the command is over, done or failed.
 * Called from the transaction callback, so it must not fail.
 */
static void
release_paused_databases(void)
{
	Latch	   *launcher_latch;
	ListCell   *lc;

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	foreach(lc, paused_databases)
	{
		PaymentsDatabase *db = payments_find_database(lfirst_oid(lc));

		if (db != NULL)
			db->paused_until = 0;
	}
	launcher_latch = payments_request_rescan();
	LWLockRelease(payments_shared->lock);

	if (launcher_latch != NULL)
		SetLatch(launcher_latch);
}

/*
 * Stop the worker of a database a permitted command is about to need free
 * of other connections, and keep the launcher from starting it again until
 * the transaction ends (or, if the transaction is prepared, for a while).
 */
static void
pause_database_worker(Oid dboid)
{
	TimestampTz deadline;
	MemoryContext oldcxt;
	PaymentsDatabase *db;

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	db = payments_add_database(dboid);
	/* A database left alone for want of the extension has no worker. */
	if (db != NULL && db->no_extension)
	{
		LWLockRelease(payments_shared->lock);
		return;
	}
	if (db != NULL)
		db->paused_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   PAUSE_FOR_UTILITY_SECS * 1000);
	LWLockRelease(payments_shared->lock);

	oldcxt = MemoryContextSwitchTo(TopTransactionContext);
	paused_databases = lappend_oid(paused_databases, dboid);
	MemoryContextSwitchTo(oldcxt);

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

static void
payments_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
						bool readOnlyTree, ProcessUtilityContext context,
						ParamListInfo params, QueryEnvironment *queryEnv,
						DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;
	bool		isTopLevel = (context == PROCESS_UTILITY_TOPLEVEL);
	Oid			target = InvalidOid;

	switch (payments_shared == NULL ? T_Invalid : nodeTag(parsetree))
	{
		case T_ConstraintsSetStmt:
			/* The deferral state is the transaction's, not the handler's. */
			if (compensation_handler_running)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("SET CONSTRAINTS cannot be used in a compensation handler"),
						 errdetail("Its effect would outlast the handler and reach the next handler of the batch, which may be another role's.")));
			break;
		case T_CreateExtensionStmt:
			if (strcmp(((CreateExtensionStmt *) parsetree)->extname, "payments") == 0)
				payments_register_database_at_commit();
			break;
		case T_DropStmt:
			/* a worker whose extension is gone exits at its next round */
			if (((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION)
			{
				ListCell   *lc;

				foreach(lc, ((DropStmt *) parsetree)->objects)
					if (strcmp(strVal(lfirst(lc)), "payments") == 0)
						payments_citus_before_drop();
				payments_wake_worker_at_commit();
			}
			break;
		case T_DropdbStmt:
			target = dropdb_target((DropdbStmt *) parsetree, isTopLevel);
			break;
		case T_RenameStmt:
			if (((RenameStmt *) parsetree)->renameType == OBJECT_DATABASE)
				target = renamedb_target((RenameStmt *) parsetree);
			break;
		case T_AlterDatabaseStmt:
			target = movedb_target((AlterDatabaseStmt *) parsetree, isTopLevel);
			break;
		case T_CreatedbStmt:
			target = createdb_template((CreatedbStmt *) parsetree, isTopLevel);
			break;
		default:
			break;
	}
	if (OidIsValid(target))
		pause_database_worker(target);

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context,
							params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* The hooks above, installed while preloading. */
static void
install_hooks(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = payments_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = payments_shmem_startup;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = payments_ProcessUtility;
	RegisterXactCallback(payments_xact_callback, NULL);
}

/*
 * The settings of the launcher and the workers, and, while preloading, the
 * shared memory they need and the launcher itself.
 */
void
worker_init(void)
{
	DefineCustomBoolVariable("payments.worker_enabled",
							 gettext_noop("Runs the payments background workers."),
							 gettext_noop("When off, the launcher stops every worker and starts none."),
							 &payments_worker_enabled,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("payments.launcher_naptime",
							gettext_noop("How often the launcher looks for databases that need a worker."),
							NULL,
							&payments_launcher_naptime,
							10,
							1,
							3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.worker_naptime",
							gettext_noop("The longest time between two rounds of a database's worker."),
							gettext_noop("Work with a known due time, and work a committed transaction queued, is done when due, without waiting for this."),
							&payments_worker_naptime,
							600000,
							10,
							3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("payments.worker_role",
							   gettext_noop("The role the payments workers connect as."),
							   gettext_noop("Empty means the bootstrap superuser. Takes effect when a worker starts."),
							   &payments_worker_role,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	/*
	 * The rest needs shared memory, so it exists only when preloaded:
	 * PostgreSQL refuses (FATAL) to define a PGC_POSTMASTER variable after
	 * startup, as it would when CREATE EXTENSION or LOAD loads the library
	 * on demand.  Without preloading, SHOW payments.max_workers reports an
	 * unrecognized parameter, as pg_prewarm.autoprewarm does.
	 */
	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("payments.max_workers",
							gettext_noop("How many payments workers may run at once, each serving one database at a time."),
							gettext_noop("Each worker also takes one of max_worker_processes."),
							&payments_max_workers,
							3,
							1,
							1024,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.max_databases",
							gettext_noop("How many databases the payments launcher can keep track of."),
							gettext_noop("A database beyond this number gets no worker, and its worker_status() says why."),
							&payments_max_databases,
							1024,
							1,
							1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	install_hooks();
	payments_register_launcher();
}
