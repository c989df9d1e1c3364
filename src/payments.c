/*-------------------------------------------------------------------------
 *
 * payments.c
 *	  Module entry point: GUCs and the helpers shared by every capability.
 *
 * Every SQL function of the extension works when the library is loaded on
 * demand; only the background worker needs shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"
#include "worker.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		payments_idempotency_wait = false;
int			payments_idempotency_lease = 60;
bool		payments_worker_enabled = true;
int			payments_launcher_naptime = 10;
int			payments_worker_naptime = 1000;
int			payments_max_workers = 8;
char	   *payments_worker_role = NULL;
int			payments_backoff_base = 1000;
int			payments_backoff_max = 3600 * 1000;
int			payments_max_attempts = 10;
int			payments_handler_timeout = 30 * 1000;
int			payments_max_payload_size = 1024 * 1024;

void
_PG_init(void)
{
	DefineCustomBoolVariable("payments.idempotency_wait",
							 gettext_noop("Waits for a key held by another open transaction instead of failing at once."),
							 gettext_noop("When off, a key in use by another transaction raises SQLSTATE PM002. "
										  "When on, the caller waits, honouring lock_timeout."),
							 &payments_idempotency_wait,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("payments.idempotency_lease",
							gettext_noop("How long a started idempotency key stays reserved for its flow between transactions."),
							gettext_noop("Every checkpoint renews the lease; once it runs out the next caller with "
										 "the same key gets outcome \"recovering\"."),
							&payments_idempotency_lease,
							60,
							1,
							7 * 24 * 3600,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

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

	/*
	 * It sizes shared memory, so it exists only when preloaded: PostgreSQL
	 * refuses (FATAL) to define a PGC_POSTMASTER variable after startup, as
	 * it would when CREATE EXTENSION or LOAD loads the library on demand.
	 * Without preloading, SHOW payments.max_workers reports an unrecognized
	 * parameter, as pg_prewarm.autoprewarm does.
	 */
	if (process_shared_preload_libraries_in_progress)
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

	DefineCustomStringVariable("payments.worker_role",
							   gettext_noop("The role the payments workers connect as."),
							   gettext_noop("Empty means the bootstrap superuser. Takes effect when a worker starts."),
							   &payments_worker_role,
							   "",
							   PGC_SIGHUP,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("payments.backoff_base",
							gettext_noop("The first retry delay of a failed compensation; each later one doubles it."),
							gettext_noop("The delay is drawn uniformly between zero and "
										 "min(backoff_max, backoff_base * 2^(attempts - 1)) (full jitter)."),
							&payments_backoff_base,
							1000,
							1,
							3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.backoff_max",
							gettext_noop("The longest retry delay of a failed compensation."),
							NULL,
							&payments_backoff_max,
							3600 * 1000,
							1,
							7 * 24 * 3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.max_attempts",
							gettext_noop("How many attempts a compensation gets before it is dead, unless enqueued with its own."),
							NULL,
							&payments_max_attempts,
							10,
							1,
							1000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.handler_timeout",
							gettext_noop("How long one run of a compensation handler may take before it is cancelled as a failure."),
							gettext_noop("Zero disables the limit."),
							&payments_handler_timeout,
							30 * 1000,
							0,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.max_payload_size",
							gettext_noop("The largest compensation payload that can be queued."),
							gettext_noop("Measured in bytes of the jsonb value as stored, before compression."),
							&payments_max_payload_size,
							1024 * 1024,
							1,
							0x3fffffff,	/* MaxAllocSize: no value is larger */
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("payments");

	/* The worker needs shared memory, so it only exists when preloaded. */
	if (!process_shared_preload_libraries_in_progress)
		return;
	payments_worker_shmem_init();
	payments_register_launcher();
}

/*
 * Refuse to write during recovery with a message that says why, rather than
 * letting the first INSERT fail with a generic read-only error.
 */
void
payments_check_writable(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s during recovery", what),
				 errhint("Call this function on the primary server.")));
}

/*
 * The owner of function fn_oid: for the extension's functions, the role
 * that created the extension, which owns its tables.
 */
Oid
payments_function_owner(Oid fn_oid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn_oid);
	owner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Act as owner (the role that owns the extension's tables) until
 * payments_end_as_owner, and with pin_search_path also with search_path
 * set to pg_catalog, pg_temp: what SECURITY DEFINER SET search_path =
 * pg_catalog, pg_temp does for a whole call, for just the part of a call
 * that needs it.  A function that is
 * SECURITY DEFINER pays for its SET clause on every call (on the way out
 * PostgreSQL 15 scans every GUC), so the hot functions, whose usual path
 * runs no SQL, take these rights only where they do.  Unlike
 * fmgr_security_definer this does not call a loaded module's fmgr_hook
 * (sepgsql's), which sees no change of user here.
 *
 * An error in between needs no cleanup: (sub)transaction abort restores
 * the user and unwinds the GUC nesting level, as it does for SECURITY
 * DEFINER functions.  So no C code may catch an error between the two
 * calls without a subtransaction of its own.
 */
void
payments_begin_as_owner(Oid owner, bool pin_search_path,
						PaymentsSavedUser *saved)
{
	GetUserIdAndSecContext(&saved->userid, &saved->sec_context);
	SetUserIdAndSecContext(owner, saved->sec_context | SECURITY_LOCAL_USERID_CHANGE);
	saved->guc_level = -1;
	if (pin_search_path)
	{
		saved->guc_level = NewGUCNestLevel();
		(void) set_config_option("search_path", "pg_catalog, pg_temp",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	}
}

void
payments_end_as_owner(PaymentsSavedUser *saved)
{
	if (saved->guc_level >= 0)
		AtEOXact_GUC(true, saved->guc_level);
	SetUserIdAndSecContext(saved->userid, saved->sec_context);
}
