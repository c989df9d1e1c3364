/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  A worker of the pool, connected to one database: the maintenance no
 *	  client should have to run.
 *
 * Each round runs every task below, each in a transaction of its own, so a
 * failure in one (logged with its context, counted in worker_status) never
 * stops the others or the loop, and an immediate shutdown mid-round loses
 * or repeats nothing that committed.  A task whose batch came back full is
 * run again at once.  Otherwise the round ends by reading when the
 * database's next known work is due (a hold's TTL, a compensation's retry,
 * a callback's deadline, a saga's timeout, a check's next run), and the
 * worker sleeps on its latch until then, at most payments.worker_naptime,
 * or until a committing transaction wakes it.  When another database waits
 * for a slot, the worker leaves instead (see worker.h).
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
#include "outbox.h"
#include "citus_shards.h"
#include "citus_tables.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/pg_class.h"
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
	bool		counts_items;	/* what it returns is added to items_done */
	bool		async_commit;	/* its effects need not wait for a flush */
} WorkerTask;

static const WorkerTask worker_tasks[] = {
	{"expire reservations", "expire_reservations", true, true, false},
	{"purge idempotency keys", "purge_idempotency_keys", true, true, false},
	{"run compensations", "run_compensations", false, true, false},
	{"chase callbacks", "chase_callbacks", true, true, false},
	{"purge callbacks", "purge_callbacks", true, true, false},
	{"purge tcc fence", "purge_tcc_fence", true, true, false},
	{"abort timed-out sagas", "abort_timed_out_sagas", true, true, false},
	{"queue due checks", "queue_due_checks", true, true, false},
	{"purge retention", "purge_retention", true, true, false},
};

/*
 * Notifying the outbox's relays (outbox_notify.c) runs whenever a commit
 * has sent messages since it last ran: between rounds, and between the
 * tasks of a round, which may be long.  Each round also runs it once, for
 * commits whose wake-up no worker took (one made while no worker was
 * connected; worker_exit hands a pending one to the next worker).  It
 * returns how many topics it notified, which are not items.  A
 * notification is a hint to be sent soon, not data to keep: its commit
 * does not wait for the flush, and waits for PostgreSQL's notification
 * lock no longer than the worker's other statements wait for a lock.
 */
static const WorkerTask notify_outbox_task =
{"notify outbox relays", "notify_outbox_relays", true, false, true};

/*
 * How soon a round runs again when work that was already due when it began
 * is due still: work the worker does not do itself (an external handler's
 * item) or could not take (a row locked by an application).
 */
#define WORKER_RETRY_MS 1000

static int	my_slotno = -1;
static PaymentsWorkerSlot *my_slot = NULL;
static PaymentsDatabase *my_db = NULL;
static const WorkerTask *current_task = NULL;

/* When the worker last notified the outbox's relays */
static TimestampTz last_outbox_notify = 0;

/* When this worker took its slot: its quantum counts from here. */
static TimestampTz served_since = 0;

/* The installed version is not the library's, and the log has said so */
static bool other_version_logged = false;

/* Why the previous worker left this database alone, if it did */
static char previous_unserved[PAYMENTS_WORKER_ERROR_LEN];

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
		my_slot->state = PW_FREE;
		my_slot->dboid = InvalidOid;
	}
	if (code != 0)
		launcher_latch = payments_request_rescan();

	/*
	 * Commits that sent outbox messages since the last notification find
	 * an id recorded and wake nobody: the next worker must notify for them.
	 */
	if (pg_atomic_read_u64(&my_db->outbox_min_id) != PG_UINT64_MAX &&
		my_db->dboid == MyDatabaseId)
	{
		if (!my_db->wake_requested)
			my_db->wake_at = GetCurrentTimestamp();
		my_db->wake_requested = true;
		launcher_latch = payments_shared->launcher_latch;
	}
	LWLockRelease(payments_shared->lock);
	if (launcher_latch != NULL)
		SetLatch(launcher_latch);
}

/*
 * Leave the database alone while Citus manages one of the extension's
 * tables (citus_tables.c): every task would fail on them.  worker_status()
 * says why through the database's unserved reason, and the launcher starts
 * a worker again when the database is next due (worker_naptime, set at the
 * start of the round), which finds out whether it still holds.
 */
static void
worker_leave_citus(const char *tables)
{
	char		reason[PAYMENTS_WORKER_ERROR_LEN];

	snprintf(reason, sizeof(reason),
			 "Citus manages tables of the extension: %s", tables);
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	strlcpy(my_db->unserved, reason, PAYMENTS_WORKER_ERROR_LEN);
	LWLockRelease(payments_shared->lock);
	ereport(strcmp(previous_unserved, reason) == 0 ? DEBUG1 : LOG,
			(errmsg("payments worker for database %u leaves it alone because Citus manages tables of the extension",
					MyDatabaseId),
			 errdetail("Citus manages %s.", tables),
			 errhint("Return them to local tables as the section \"Scaling out with Citus\" of the extension's README shows.")));
	AbortCurrentTransaction();
	proc_exit(0);
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
		my_db->no_extension = true;
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
			/* both until the commit, which is where a notification waits */
			if (task->async_commit)
			{
				(void) set_config_option("synchronous_commit", "off",
										 PGC_SUSET, PGC_S_SESSION,
										 GUC_ACTION_LOCAL, true, 0, false);
				(void) set_config_option("lock_timeout", WORKER_LOCK_TIMEOUT,
										 PGC_SUSET, PGC_S_SESSION,
										 GUC_ACTION_LOCAL, true, 0, false);
			}
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
		my_db->items_failed++;
		snprintf(my_db->last_error, PAYMENTS_WORKER_ERROR_LEN, "%s: %s",
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

	if (n > 0 && task->counts_items)
	{
		LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
		my_db->items_done += n;
		LWLockRelease(payments_shared->lock);
	}
	return n;
}

/*
 * Whether a prepared transaction of this database is pending: it may have
 * created the extension (worker_shmem.c registers the database at PREPARE),
 * so the worker waits for it to be committed or rolled back.
 */
static bool
prepared_transactions_here(void)
{
	bool		result;
	bool		isnull;

	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	if (SPI_execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_prepared_xacts"
					" WHERE database OPERATOR(pg_catalog.=) pg_catalog.current_database())",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read pg_prepared_xacts");
	result = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	PopActiveSnapshot();
	return result;
}

/*
 * Whether this round's tasks can run: the extension is installed in the
 * library's version.  If it is gone, leave, unless a prepared transaction
 * may still create it (a CREATE EXTENSION that Citus runs on its workers is
 * prepared first); if it has another version, log
 * that once (until it is the library's again) and skip the round; if Citus
 * manages its tables, leave until worker_naptime.
 */
static bool
extension_ready(void)
{
	PaymentsInstallState state;
	char	   *version;
	char	   *citus_tables = NULL;
	bool		prepared = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	state = payments_install_state(&version);
	if (state == PAYMENTS_OTHER_VERSION && !other_version_logged)
	{
		payments_report_other_version(LOG, version);
		other_version_logged = true;
	}
	if (state == PAYMENTS_NOT_INSTALLED)
	{
		prepared = prepared_transactions_here();
		/* it may have been committed since the first look */
		InvalidateCatalogSnapshot();
		if (!prepared)
			state = payments_install_state(&version);
	}
	if (state == PAYMENTS_INSTALLED &&
		payments_citus_manages_extension(&citus_tables))
		worker_leave_citus(citus_tables);
	CommitTransactionCommand();

	if (state == PAYMENTS_NOT_INSTALLED && !prepared)
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

static SPIPlanPtr next_due_plan = NULL;
static SPIPlanPtr next_due_shard_plan = NULL;

/* The earlier of two due times, 0 meaning none */
static TimestampTz
earlier_due(TimestampTz a, TimestampTz b)
{
	if (a == 0)
		return b;
	if (b == 0)
		return a;
	return Min(a, b);
}

/* Run a due time's query (no arguments, one row) and lower *due to it */
static void
lower_due_by(SPIPlanPtr plan, TimestampTz *due)
{
	bool		isnull;
	Datum		value;

	payments_execute(plan, NULL, NULL, SPI_OK_SELECT, 1);
	value = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		*due = earlier_due(*due, DatumGetTimestampTz(value));
}

/* The due times kept in the reservation and idempotency tables, of one shard */
static void
read_next_due_shard(void *arg)
{
	payments_prepare(&next_due_shard_plan,
					 "SELECT LEAST("
					 " (SELECT min(r.expires_at) FROM @extschema@.reservations r"
					 "   WHERE r.state = 'held'),"
					 " (SELECT GREATEST(i.expires_at, i.lease_expires_at)"
					 "   FROM @extschema@.idempotency_keys i ORDER BY i.expires_at LIMIT 1),"
					 " (SELECT r.resolved_at FROM @extschema@.reservations r"
					 "   WHERE r.state <> 'held' ORDER BY r.resolved_at LIMIT 1)"
					 "  + NULLIF(pg_catalog.current_setting('payments.reservation_retention')::interval, '0'),"
					 " (SELECT c.next_attempt_at FROM @extschema@.compensations c"
					 "   WHERE c.finished_at IS NULL AND c.status = 'pending'"
					 "    AND c.handler <> ALL (ARRAY(SELECT e.handler FROM @extschema@.external_handlers e))"
					 "   ORDER BY c.next_attempt_at LIMIT 1),"
					 " (SELECT c.finished_at FROM @extschema@.compensations c"
					 "   WHERE c.finished_at IS NOT NULL AND c.status IN ('succeeded', 'cancelled')"
					 "    AND NOT EXISTS (SELECT FROM @extschema@.compensations n"
					 "     WHERE n.after = c.id AND n.status NOT IN ('succeeded', 'cancelled'))"
					 "   ORDER BY c.finished_at LIMIT 1)"
					 "  + NULLIF(pg_catalog.current_setting('payments.compensation_retention')::interval, '0'))",
					 0, NULL);
	lower_due_by(next_due_shard_plan, (TimestampTz *) arg);
}

/*
 * When this database's next known work is due: the earliest of a held
 * hold's TTL, a compensation's next attempt (of a handler the worker runs),
 * a callback's deadline, a running saga's timeout, a check's next run, and
 * when the oldest idempotency key, resolved hold, finished compensation,
 * cleared check result and callback event can be purged; each read from
 * the index that keeps it in order; 0 if there is none.  What has no due
 * time of its own (sagas', TCC branches' and history's purges) waits for
 * worker_naptime.
 */
static TimestampTz
read_next_due(void)
{
	TimestampTz result = 0;
	HeapTuple	tup;
	Oid			owner;
	PaymentsSavedUser saved;

	/*
	 * Read as the tables' owner: payments.worker_role needs EXECUTE on the
	 * tasks, not SELECT on every table.  The sequence is never distributed,
	 * and has its table's owner.
	 */
	tup = SearchSysCache1(RELOID,
						  ObjectIdGetDatum(payments_relation(PAYMENTS_REL_RESERVATIONS_ID_SEQ)));
	if (!HeapTupleIsValid(tup))
		return 0;
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);

	payments_begin_as_owner(owner, true, &saved);
	SPI_connect();
	payments_prepare(&next_due_plan,
					 "SELECT LEAST("
					 " (SELECT min(x.deadline) FROM @extschema@.expected_callbacks x"
					 "   WHERE x.met_at IS NULL AND x.compensation_id IS NULL AND x.query_error IS NULL),"
					 " (SELECT min(g.timeout_at) FROM @extschema@.saga_state g"
					 "   WHERE g.status = 'running'),"
					 " (SELECT min(k.next_run_at) FROM @extschema@.checks k),"
					 " (SELECT min(v.cleared_at) FROM @extschema@.check_results v WHERE v.cleared_at IS NOT NULL)"
					 "  + NULLIF(pg_catalog.current_setting('payments.check_retention')::interval, '0'),"
					 " (SELECT min(e.first_delivered_at) FROM @extschema@.callbacks e)"
					 "  + NULLIF(pg_catalog.current_setting('payments.callback_retention')::interval, '0'))",
					 0, NULL);
	lower_due_by(next_due_plan, &result);
	payments_shard_foreach_local(read_next_due_shard, &result);
	SPI_finish();
	payments_end_as_owner(&saved);
	return result;
}

/*
 * The due time the next round should have, given the round that began at
 * round_start: the next known work, at most worker_naptime ahead.  Work
 * that was due before the round began and is due still is retried in
 * WORKER_RETRY_MS, not at once, so that it cannot keep the worker busy.
 */
static TimestampTz
next_round_due(TimestampTz round_start, MemoryContext loopcxt)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz latest = TimestampTzPlusMilliseconds(now, payments_worker_naptime);
	volatile TimestampTz due = 0;

	PG_TRY();
	{
		int			nestlevel;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		nestlevel = NewGUCNestLevel();
		(void) set_config_option("lock_timeout", WORKER_LOCK_TIMEOUT,
								 PGC_SUSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
		PushActiveSnapshot(GetTransactionSnapshot());
		due = read_next_due();
		PopActiveSnapshot();
		AtEOXact_GUC(true, nestlevel);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		HOLD_INTERRUPTS();
		EmitErrorReport();
		MemoryContextSwitchTo(loopcxt);
		FlushErrorState();
		AbortOutOfAnyTransaction();
		RESUME_INTERRUPTS();
		return TimestampTzPlusMilliseconds(now, WORKER_RETRY_MS);
	}
	PG_END_TRY();

	if (due == 0 || due > latest)
		return latest;
	if (due <= round_start)
		return TimestampTzPlusMilliseconds(now, WORKER_RETRY_MS);
	return due;
}

/* Lower the database's due time to the given one, if it is later. */
static void
lower_due(TimestampTz due)
{
	uint64		current = pg_atomic_read_u64(&my_db->due_at);

	while ((TimestampTz) current > due &&
		   !pg_atomic_compare_exchange_u64(&my_db->due_at, &current, (uint64) due))
		;
}

/*
 * Begin a round: record how long the due work waited, and take the
 * database's wake-up and due time for this round.  Until the round ends,
 * its due time is worker_naptime ahead; a transaction that commits work due
 * earlier lowers it meanwhile.
 */
static void
begin_round(TimestampTz now)
{
	TimestampTz due;
	TimestampTz since = 0;

	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	due = payments_database_due(my_db);
	if (due <= now)
		since = due;
	if (my_db->wake_requested && (since == 0 || my_db->wake_at < since))
		since = my_db->wake_at;
	if (since != 0)
	{
		my_db->last_wait_us = now - since;
		my_db->max_wait_us = Max(my_db->max_wait_us, my_db->last_wait_us);
	}
	my_db->wake_requested = false;
	my_db->wake_at = 0;
	strlcpy(previous_unserved, my_db->unserved, PAYMENTS_WORKER_ERROR_LEN);
	my_db->unserved[0] = '\0';
	my_db->start_failed = false;
	my_db->start_failures = 0;
	my_slot->state = PW_RUNNING;
	pg_atomic_write_u64(&my_db->due_at,
						(uint64) TimestampTzPlusMilliseconds(now, payments_worker_naptime));
	LWLockRelease(payments_shared->lock);
}

static void
end_round(TimestampTz next_due)
{
	lower_due(next_due);
	LWLockAcquire(payments_shared->lock, LW_EXCLUSIVE);
	my_db->last_run = GetCurrentTimestamp();
	my_db->rounds++;
	my_slot->state = PW_IDLE;
	LWLockRelease(payments_shared->lock);
}

/*
 * Whether this worker should give its slot up now: another database waits
 * and this one has had its quantum.  Read without the lock: a stale answer
 * only moves the yield by one item.  Long tasks (run_compensations) ask
 * between items, run_round between tasks, so that no round, however much
 * work a database has, keeps the slot past the quantum by more than one
 * item's handler_timeout.
 */
bool
payments_worker_should_yield(void)
{
	if (my_slot == NULL || payments_shared == NULL)
		return false;
	if (my_slot->leave_requested)
		return true;
	return payments_shared->nwaiting > 0 &&
		TimestampDifferenceExceeds(served_since, GetCurrentTimestamp(),
								   WORKER_QUANTUM_MS);
}

/*
 * When the outbox's relays may be notified again, if a commit sent messages
 * since they last were; 0 if none did.  Until then, senders' commits do
 * not set the latch again.
 */
static TimestampTz
outbox_notify_due(void)
{
	if (pg_atomic_read_u64(&my_db->outbox_min_id) == PG_UINT64_MAX)
		return 0;
	return TimestampTzPlusMilliseconds(last_outbox_notify, outbox_notify_interval);
}

/*
 * Notify the outbox's relays if a commit sent messages since last time and
 * payments.outbox_notify_interval has passed, or always.
 */
static void
notify_outbox(MemoryContext loopcxt, bool always)
{
	TimestampTz due = outbox_notify_due();
	TimestampTz now = GetCurrentTimestamp();

	if (!always && (due == 0 || due > now))
		return;
	last_outbox_notify = now;
	(void) run_task(&notify_outbox_task, loopcxt);
	MemoryContextReset(loopcxt);
}

/* One round: every task once, if the extension is ready.  True if more. */
static bool
run_round(MemoryContext loopcxt)
{
	TimestampTz start = GetCurrentTimestamp();
	bool		more = false;
	bool		ready;

	begin_round(start);
	ready = extension_ready();
	if (ready)
	{
		notify_outbox(loopcxt, true);
		for (int i = 0; i < lengthof(worker_tasks); i++)
		{
			if (run_task(&worker_tasks[i], loopcxt) >= WORKER_BATCH)
				more = true;
			MemoryContextReset(loopcxt);
			notify_outbox(loopcxt, false);
			CHECK_FOR_INTERRUPTS();
			/* The rest of the round is the next worker's: stay due. */
			if (payments_worker_should_yield() && i + 1 < lengthof(worker_tasks))
			{
				end_round(GetCurrentTimestamp());
				return true;
			}
		}
	}
	end_round(ready ? next_round_due(start, loopcxt)
			  : TimestampTzPlusMilliseconds(GetCurrentTimestamp(), payments_worker_naptime));
	MemoryContextReset(loopcxt);
	return more;
}

/*
 * Leave the slot to another database: exit code 0, nothing to restart.
 * Work left over (a full batch, a round cut short) keeps the database due.
 */
static void
worker_yield(bool work_left)
{
	if (work_left)
		lower_due(GetCurrentTimestamp());
	ereport(DEBUG1,
			(errmsg("payments worker for database %u leaves its slot to a waiting database",
					MyDatabaseId)));
	proc_exit(0);
}

void
payments_worker_main(Datum main_arg)
{
	PaymentsWorkerArgs args;
	MemoryContext loopcxt;
	bool		more = true;

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
		payments_shared->slots[my_slotno].state != PW_STARTING ||
		payments_shared->slots[my_slotno].pid != 0 ||
		payments_shared->slots[my_slotno].generation != args.generation ||
		(my_db = payments_find_database(args.dboid)) == NULL)
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
	served_since = GetCurrentTimestamp();

	set_application_name();
	compensation_worker_attach();
	loopcxt = AllocSetContextCreate(TopMemoryContext, "payments worker loop",
									ALLOCSET_DEFAULT_SIZES);

	/* The first round runs at once: the launcher started us for due work. */
	for (;;)
	{
		TimestampTz now;
		TimestampTz due;
		bool		leave;
		bool		waiting;
		bool		wake;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (!payments_worker_enabled)
			worker_leave(false);
		notify_outbox(loopcxt, false);

		now = GetCurrentTimestamp();
		LWLockAcquire(payments_shared->lock, LW_SHARED);
		leave = my_slot->leave_requested;
		waiting = payments_shared->nwaiting > 0;
		wake = my_db->wake_requested;
		due = payments_database_due(my_db);
		LWLockRelease(payments_shared->lock);

		if (leave)
			worker_yield(more || wake || due <= now);
		if (more || wake || due <= now)
		{
			/* A busy database gives its slot up after its quantum. */
			if (waiting && !TimestampDifferenceExceeds(served_since, now, WORKER_QUANTUM_MS))
				waiting = false;
			if (!waiting)
			{
				more = run_round(loopcxt);
				continue;
			}
		}
		if (waiting)
			worker_yield(more || wake || due <= now);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(TimestampDifferenceMilliseconds(now,
															 earlier_due(due, outbox_notify_due())), 1),
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}
