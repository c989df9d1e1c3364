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
int			payments_worker_naptime = 1000;
int			payments_max_workers = 8;
char	   *payments_worker_role = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Set during a transaction, acted on when it commits. */
static bool wake_at_commit = false;
static bool register_at_commit = false;

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
			launcher_latch = payments_request_rescan();
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
		Oid			dboid = lfirst_oid(lc);

		for (int i = 0; i < PAYMENTS_MAX_EXCLUDED; i++)
		{
			PaymentsExcludedDb *e = &payments_shared->excluded[i];

			/* until = 0: a worker has since found no extension there */
			if (e->dboid == dboid && e->until != 0)
				e->dboid = InvalidOid;
		}
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

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	/* A database left alone for want of the extension has no worker. */
	for (int i = 0; i < PAYMENTS_MAX_EXCLUDED; i++)
	{
		if (payments_shared->excluded[i].dboid == dboid &&
			payments_shared->excluded[i].until == 0)
		{
			LWLockRelease(payments_shared->lock);
			return;
		}
	}
	payments_exclude_database(dboid,
							  TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  PAUSE_FOR_UTILITY_SECS * 1000));
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
				payments_wake_worker_at_commit();
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
							gettext_noop("How long a worker sleeps between rounds when nothing wakes it."),
							NULL,
							&payments_worker_naptime,
							1000,
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
							gettext_noop("How many databases can have a payments worker."),
							gettext_noop("Each worker also takes one of max_worker_processes."),
							&payments_max_workers,
							8,
							1,
							1024,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	install_hooks();
	payments_register_launcher();
}
