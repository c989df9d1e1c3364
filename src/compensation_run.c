/*-------------------------------------------------------------------------
 *
 * compensation_run.c
 *	  How due compensations are run: exactly once for work inside the
 *	  database, an attempt charged only to the item whose handler was
 *	  running, and each handler with the rights of the role that queued it
 *	  and no more.
 *
 * payments.run_compensations(max_items) is one of the worker's tasks, and
 * each call is complete in itself: it can be called from any session, one
 * call at a time or many at once, also behind a transaction-mode pooler.
 * A call
 *
 *	1. gives back to the queue the claims of external executors whose lease
 *	   has run out (once a second while there is a backlog);
 *	2. takes up to max_items due items of the handlers the worker runs
 *	   (FOR UPDATE SKIP LOCKED, so it never waits for a row an application
 *	   has locked) and marks them succeeded with their attempt counted, in
 *	   one UPDATE;
 *	3. runs each handler in a subtransaction, in due order.  A success
 *	   leaves the handler's effects beside the succeeded mark, so both
 *	   commit or neither does.  A failure rolls the subtransaction back,
 *	   sets the item back to pending (or dead), records an attempt row and
 *	   schedules the next attempt;
 *	4. makes the items queued after those that succeeded due, in the same
 *	   transaction, so that a chain moves on when its link commits; and,
 *	   with step 1's cadence, sweeps the waiting items that this missed
 *	   (see compensation.c).
 *
 * If the call's transaction does not commit (a crash, a kill, a real
 * cancel), every item is pending again as it was and every handler's
 * effects are gone.  In the worker, the item whose handler was running is
 * then charged the attempt it was cut short in: before each handler starts
 * the worker writes the item's id to a small file of its own (see
 * MarkerFile), clears it when the handler returns, and a worker that
 * finds the file set (after a restart, or after its batch failed) records
 * that attempt as failed before it runs anything else.  The file is not
 * fsynced: it has to survive the worker's process, not the machine.  A call
 * from an ordinary session charges nothing when its transaction is lost.
 *
 * Rights: the handler runs as the item's enqueued_by, with
 * SECURITY_RESTRICTED_OPERATION (no SET ROLE, no temporary objects), under
 * a GUC nest level that is unwound afterwards, after checking again that
 * the role exists and may still use the function, and that the function
 * found under the stored name still has the owner it had at enqueue time.
 * A security-restricted operation already refuses temporary objects,
 * PREPARE, LISTEN and cursors WITH HOLD.  A handler that leaves a cursor
 * open fails; its large objects are closed; SET CONSTRAINTS is refused
 * while it runs (worker_shmem.c); and in the worker, what it can still
 * leave in the session (session advisory locks, the sequence values that
 * lastval() and currval() show, the seed of random()) is reset after it.
 *
 * No handler runs past payments.handler_timeout: it is cancelled, the way
 * statement_timeout cancels a query, and its attempt fails whatever the
 * handler catches.  A handler that still runs a second after the cancel
 * ends the process that runs it: the worker, whose next process records
 * the attempt as timed out and goes on with the next item, or the session
 * that called run_compensations, which records it as it exits.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "compensation.h"
#include "args.h"
#include "citus_shards.h"
#include "fault.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "worker.h"

#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "libpq/be-fsstubs.h"
#include "common/pg_prng.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lock.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_run_compensations);

/* How often to look for expired leases while a backlog keeps batches full */
#define LEASE_CHECK_INTERVAL_MS	1000

/*
 * The payloads one call hands to handlers, at most: past this many bytes
 * (detoasted) the rest of the batch goes back to the queue for the next
 * call.  A batch holds its payloads as stored (a toasted one as a pointer)
 * and detoasts each only when its handler runs.
 */
#define BATCH_MAX_PAYLOAD_BYTES	(64 * 1024 * 1024)

/* How long a handler may go on after it was cancelled */
#define HANDLER_CANCEL_GRACE_MS	1000

/*
 * The item whose handler the worker is running, mirrored in a file.  id 0
 * means none.  reason says how to record the attempt if the handler never
 * returns.
 */
typedef enum RunningReason
{
	RUNNING_INTERRUPTED = 0,	/* the worker stopped: a crash, a kill, a
								 * cancel */
	RUNNING_TIMED_OUT			/* past handler_timeout and the cancel */
} RunningReason;

typedef struct RunningMarker
{
	int64		id;
	int32		attempts;		/* the item's attempts before this one */
	int32		reason;			/* RunningReason */
	int64		shard_key;		/* the key of its shard, once distributed */
} RunningMarker;

/*
 * What the worker's file holds: the item whose handler runs now, and the
 * interrupted attempts not yet recorded because an application had their
 * row locked when the worker tried (the oldest is dropped past the last).
 */
#define MAX_UNSETTLED	8

typedef struct MarkerFile
{
	RunningMarker running;
	RunningMarker unsettled[MAX_UNSETTLED];
} MarkerFile;

#define RUNNING_MARKER_DIR	"pg_payments"

/* True while a handler runs: the utility hook refuses SET CONSTRAINTS */
bool		compensation_handler_running = false;

/*
 * The claim token of the batch this process is running, 0 if none: its
 * items are marked succeeded before their handlers run, and an item queued
 * after one of them by a handler must wait for the real outcome.
 */
int64		compensation_batch_token = 0;

static bool tracking = false;	/* this process is a worker */

/*
 * The role whose items this call runs, once the queue is distributed:
 * Citus refuses a transaction that writes a placement as one role and
 * then reads or writes it as another, so one call runs one role's items
 * and leaves the others for the next call.
 */
static Oid	batch_role = InvalidOid;
static Oid	run_fn_oid = InvalidOid;	/* run_compensations, once called */
static int	marker_fd = -1;
static MarkerFile marker;
static volatile sig_atomic_t marker_write_failed = false;

/*
 * The search for expired leases reads every unfinished due item, so while
 * a backlog keeps batches full it runs once a second rather than in every
 * call.
 */
static bool last_batch_full = false;
static TimestampTz last_lease_check = 0;

/* payments.handler_timeout, and the end of its grace */
static int	handler_timeout = 30 * 1000;
static TimeoutId handler_timeout_id = MAX_TIMEOUTS;
static TimeoutId handler_kill_id = MAX_TIMEOUTS;
static volatile sig_atomic_t handler_timed_out = false;
static volatile sig_atomic_t handler_killed = false;

/* A cancel sent to this process (SIGINT), as opposed to one a handler raised */
static pqsigfunc prev_sigint = NULL;
static volatile sig_atomic_t cancel_signalled = false;

static SPIPlanPtr mark_plan;
static SPIPlanPtr unmark_plan;
static SPIPlanPtr settle_plan;
static SPIPlanPtr unsettled_plan;

void
compensation_run_init(void)
{
	DefineCustomIntVariable("payments.handler_timeout",
							gettext_noop("How long one run of a compensation handler may take before it is cancelled as a failure."),
							gettext_noop("Zero disables the limit."),
							&handler_timeout,
							30 * 1000,
							0,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

typedef struct CompensationItem
{
	int64		id;
	char	   *handler;
	Datum		payload;		/* as stored: maybe compressed or toasted */
	Oid			enqueued_by;
	Oid			handler_owner;
	int32		attempts;		/* including the one about to run */
	int32		max_attempts;
	TimestampTz due;			/* next_attempt_at: the order they run in */
} CompensationItem;

/*
 * Write the marker to its file.  Called from the timeout signal handler
 * too, so it uses nothing but pwrite.
 */
static void
marker_write(void)
{
	if (marker_fd >= 0 &&
		pwrite(marker_fd, &marker, sizeof(marker), 0) != sizeof(marker))
		marker_write_failed = true;
}

/*
 * Without its file the worker would charge nobody for an attempt a crash
 * cuts short; it says so once and goes on.
 */
static void
marker_set(int64 id, int32 attempts)
{
	static bool warned = false;

	marker.running.id = id;
	marker.running.attempts = attempts;
	marker.running.reason = RUNNING_INTERRUPTED;
	marker.running.shard_key = payments_shard_key();
	marker_write();
	if (marker_write_failed && !warned)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s/worker_%u.running\": %m",
						RUNNING_MARKER_DIR, MyDatabaseId),
				 errdetail("An attempt cut short by a crash will not be counted.")));
		warned = true;
	}
}

static void
marker_clear(void)
{
	if (marker.running.id == 0)
		return;
	marker.running.id = 0;
	marker_write();
}

/*
 * An attempt that was cut short (the handler never returned to us) waits
 * in the unsettled list until its row can be locked and its attempt
 * recorded.
 */
static void
interrupted_to_unsettled(void)
{
	RunningMarker *oldest = &marker.unsettled[MAX_UNSETTLED - 1];

	if (marker.running.id == 0)
		return;
	if (oldest->id != 0)
		ereport(LOG,
				(errmsg("compensation %lld was interrupted but its attempt cannot be recorded",
						(long long) oldest->id),
				 errdetail("Too many interrupted attempts are waiting for rows that other transactions have locked.")));
	memmove(&marker.unsettled[1], &marker.unsettled[0],
			sizeof(RunningMarker) * (MAX_UNSETTLED - 1));
	marker.unsettled[0] = marker.running;
	marker.running.id = 0;
	marker_write();
}

static bool settle_interrupted(RunningMarker *m);

/*
 * A handler that ignored its timeout ended this process (see
 * handler_kill_fired).  The worker records the attempt when it starts
 * again; an ordinary session does it here, in a transaction of its own,
 * as PostgreSQL removes a session's temporary tables at exit.
 */
static void
handler_kill_exit(int code, Datum arg)
{
	if (!handler_killed || marker.running.id == 0)
		return;
	if (tracking)
		ereport(LOG,
				(errmsg("payments worker exited because compensation %lld ran past payments.handler_timeout and did not stop when cancelled",
						(long long) marker.running.id)));
	else
		ereport(LOG,
				(errmsg("session exited because compensation %lld ran past payments.handler_timeout and did not stop when cancelled",
						(long long) marker.running.id)));
	if (tracking)
		return;

	HOLD_INTERRUPTS();
	AbortOutOfAnyTransaction();
	PG_TRY();
	{
		PaymentsSavedUser saved;

		/* As run_compensations would: its owner, search_path pinned. */
		StartTransactionCommand();
		payments_begin_as_owner(payments_function_owner(run_fn_oid), true,
								&saved);
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		(void) settle_interrupted(&marker.running);
		PopActiveSnapshot();
		SPI_finish();
		payments_end_as_owner(&saved);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();
	RESUME_INTERRUPTS();
}

/*
 * The marker file as version 0.2.0 wrote it, without the shard key: the
 * queue was not distributed then.  Anything else is no marker.
 */
static void
read_marker_0_2(void)
{
	struct
	{
		int64		id;
		int32		attempts;
		int32		reason;
	}			old[1 + MAX_UNSETTLED];

	memset(&marker, 0, sizeof(marker));
	if (pread(marker_fd, old, sizeof(old), 0) != sizeof(old))
		return;
	for (int i = 0; i <= MAX_UNSETTLED; i++)
	{
		RunningMarker *m = i == 0 ? &marker.running : &marker.unsettled[i - 1];

		m->id = old[i].id;
		m->attempts = old[i].attempts;
		m->reason = old[i].reason;
		m->shard_key = PAYMENTS_SHARD_NO_KEY;
	}
}

/*
 * Called once by the worker at start: from now on run_compensations keeps
 * the marker of this database's worker, and first settles the ones a
 * previous worker process left.
 */
void
compensation_worker_attach(void)
{
	char		path[MAXPGPATH];

	if (MakePGDirectory(RUNNING_MARKER_DIR) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", RUNNING_MARKER_DIR)));
	snprintf(path, sizeof(path), "%s/worker_%u.running", RUNNING_MARKER_DIR,
			 MyDatabaseId);
	marker_fd = BasicOpenFile(path, O_RDWR | O_CREAT | PG_BINARY);
	if (marker_fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\": %m", path)));
	if (pread(marker_fd, &marker, sizeof(marker), 0) != sizeof(marker))
		read_marker_0_2();
	tracking = true;
	interrupted_to_unsettled();
}

/*
 * Charge the attempt of the item the marker names, if it is still as the
 * handler's start left it (pending, with the same attempt count): the
 * transaction that ran it was lost.  A row an application has locked is
 * not waited for: the marker stays and a later call settles it (every
 * claim skips the item meanwhile).  Returns whether the marker is settled.
 */
static bool
settle_interrupted(RunningMarker *m)
{
	static const Oid argtypes[] = {INT8OID, INT4OID, INT8OID};
	Datum		values[3];
	int64		token = (int64) pg_prng_uint64(&pg_global_prng_state);
	bool		timed_out = m->reason == RUNNING_TIMED_OUT;
	PaymentsShardContext previous;
	bool		settled;
	char	   *error;

	/*
	 * A shard that left this node took the item with it, and an item run
	 * before the queue was distributed is in a shard that is not known.
	 */
	if (!payments_shard_enter_hash(m->shard_key, &previous))
	{
		ereport(LOG,
				(errmsg("compensation %lld was interrupted but its attempt cannot be recorded",
						(long long) m->id),
				 errdetail("Its shard is not on this node, or the queue was distributed since.")));
		return true;
	}
	payments_prepare(&settle_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'succeeded', attempts = attempts + 1,"
					 "  claim_token = $3, updated_at = clock_timestamp()"
					 " WHERE id = (SELECT id FROM @extschema@.compensations"
					 "  WHERE id = $1 AND status = 'pending' AND attempts = $2"
					 "  FOR UPDATE SKIP LOCKED)",
					 3, argtypes);
	payments_prepare(&unsettled_plan,
					 "SELECT FROM @extschema@.compensations"
					 " WHERE id = $1 AND status = 'pending' AND attempts = $2",
					 2, argtypes);
	values[0] = Int64GetDatum(m->id);
	values[1] = Int32GetDatum(m->attempts);
	values[2] = Int64GetDatum(token);

	if (payments_execute(settle_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
	{
		/* Still as the handler's start left it, so locked: try later. */
		settled = payments_execute(unsettled_plan, values, NULL, SPI_OK_SELECT, 0) == 0;
		payments_shard_leave(previous);
		return settled;
	}

	if (timed_out)
		error = psprintf("compensation handler ran past payments.handler_timeout (%d ms) and did not stop when cancelled",
						 handler_timeout);
	else
		error = pstrdup("the process running the compensation handler ended while it ran");
	ereport(LOG,
			(errmsg("compensation %lld failed on attempt %d: %s",
					(long long) m->id, m->attempts + 1, error)));
	if (!compensation_record_failure(m->id, error,
									 timed_out ? "57014" : COMPENSATION_LEASE_EXPIRED_SQLSTATE,
									 token, false))
		elog(ERROR, "compensation %lld changed under its lock",
			 (long long) m->id);
	payments_shard_leave(previous);
	return true;
}

/* Record the interrupted attempts whose rows can be locked now. */
static void
settle_unsettled(void)
{
	int			n;
	int			kept = 0;

	interrupted_to_unsettled();
	for (n = 0; n < MAX_UNSETTLED && marker.unsettled[n].id != 0; n++)
	{
		if (!settle_interrupted(&marker.unsettled[n]))
			marker.unsettled[kept++] = marker.unsettled[n];
	}
	if (kept == n)
		return;
	for (int i = kept; i < n; i++)
		marker.unsettled[i].id = 0;
	marker_write();
}

/*
 * The handler ran past payments.handler_timeout: cancel it the way
 * statement_timeout cancels a query.  Runs in the SIGALRM handler.
 */
static void
handler_timeout_fired(void)
{
	handler_timed_out = true;
	marker.running.reason = RUNNING_TIMED_OUT;
	marker_write();
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

/*
 * The handler caught the cancel and went on: end the process as SIGTERM
 * would, the worker or the session that called run_compensations.  No
 * error can be caught by the handler then.
 */
static void
handler_kill_fired(void)
{
	handler_killed = true;
	InterruptPending = true;
	ProcDiePending = true;
	SetLatch(MyLatch);
}

static void
cancel_signal_handler(SIGNAL_ARGS)
{
	int			save_errno = errno;

	cancel_signalled = true;
	if (prev_sigint != NULL && prev_sigint != SIG_IGN && prev_sigint != SIG_DFL)
		prev_sigint(postgres_signal_arg);
	errno = save_errno;
}

static void
arm_handler_timeout(void)
{
	EnableTimeoutParams timeouts[2];

	handler_timed_out = false;
	cancel_signalled = false;
	if (prev_sigint == NULL)
		prev_sigint = pqsignal(SIGINT, cancel_signal_handler);
	if (handler_timeout <= 0)
		return;
	if (handler_timeout_id == MAX_TIMEOUTS)
	{
		handler_timeout_id = RegisterTimeout(USER_TIMEOUT, handler_timeout_fired);
		handler_kill_id = RegisterTimeout(USER_TIMEOUT, handler_kill_fired);
		before_shmem_exit(handler_kill_exit, (Datum) 0);
	}
	timeouts[0].id = handler_timeout_id;
	timeouts[0].type = TMPARAM_AFTER;
	timeouts[0].delay_ms = handler_timeout;
	timeouts[1].id = handler_kill_id;
	timeouts[1].type = TMPARAM_AFTER;
	timeouts[1].delay_ms = handler_timeout > INT_MAX - HANDLER_CANCEL_GRACE_MS ?
		INT_MAX : handler_timeout + HANDLER_CANCEL_GRACE_MS;
	enable_timeouts(timeouts, 2);
}

static void
disarm_handler_timeout(void)
{
	DisableTimeoutParams timeouts[2];

	if (handler_timeout_id == MAX_TIMEOUTS)
		return;
	timeouts[0].id = handler_timeout_id;
	timeouts[0].keep_indicator = false;
	timeouts[1].id = handler_kill_id;
	timeouts[1].keep_indicator = false;
	disable_timeouts(timeouts, 2);
}

/*
 * A cancel that must end the whole call rather than fail one item: one sent
 * to this process, or the caller's own statement_timeout.  A handler that
 * raises query_canceled itself only fails its own attempt.
 */
static bool
cancel_is_real(void)
{
	return cancel_signalled ||
		get_timeout_indicator(STATEMENT_TIMEOUT, false);
}

/*
 * Drop what a handler may have left in the worker's session for the next
 * handler, which may be another role's, as DISCARD ALL would.  A session
 * that calls run_compensations itself keeps its own.
 */
static void
reset_session_state(void)
{
	if (!tracking)
		return;
	LockReleaseSession(USER_LOCKMETHOD);
	ResetSequenceCaches();
	(void) DirectFunctionCall1(setseed,
							   Float8GetDatum(pg_prng_double(&pg_global_prng_state) * 2.0 - 1.0));
}

/* Clip an error text so that neither the log nor the queue grows with it. */
static char *
clipped(const char *message)
{
	int			len = strlen(message);

	if (len <= COMPENSATION_ERROR_MAX_BYTES)
		return pstrdup(message);
	return pnstrdup(message, pg_mbcliplen(message, len, COMPENSATION_ERROR_MAX_BYTES));
}

/*
 * A handler as resolved for one role during one call: resolving the name
 * and checking the rights once per (handler, role, owner) and call rather
 * than once per item is a large part of the cost of a no-op compensation.
 */
typedef struct ResolvedHandler
{
	const char *handler;
	Oid			enqueued_by;
	Oid			handler_owner;
	Oid			fn;
	struct ResolvedHandler *next;
} ResolvedHandler;

/*
 * Check, as the item is about to run, what enqueue checked, and more: the
 * name may now denote another function, the role may be gone or have lost
 * its rights.  Any failure here is a failed attempt like a handler error
 * (and is not cached, so the next item of the same handler checks again).
 */
static Oid
resolve_handler(CompensationItem *item, ResolvedHandler **cache,
				MemoryContext cachecxt)
{
	ResolvedHandler *r;
	Oid			fn;
	Oid			owner;

	for (r = *cache; r != NULL; r = r->next)
	{
		if (r->enqueued_by == item->enqueued_by &&
			r->handler_owner == item->handler_owner &&
			strcmp(r->handler, item->handler) == 0)
			return r->fn;
	}

	fn = DatumGetObjectId(DirectFunctionCall1(regprocedurein,
											  CStringGetDatum(item->handler)));
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(item->enqueued_by)))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u that queued the compensation does not exist",
						item->enqueued_by)));
	owner = compensation_check_handler(fn, item->enqueued_by);
	if (owner != item->handler_owner)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("compensation handler %s has changed owner", item->handler),
				 errdetail("It was owned by role with OID %u when the compensation was queued and is now owned by role with OID %u.",
						   item->handler_owner, owner),
				 errhint("Queue the compensation again if the new function is the right handler.")));

	r = MemoryContextAlloc(cachecxt, sizeof(ResolvedHandler));
	r->handler = MemoryContextStrdup(cachecxt, item->handler);
	r->enqueued_by = item->enqueued_by;
	r->handler_owner = item->handler_owner;
	r->fn = fn;
	r->next = *cache;
	*cache = r;
	return fn;
}

/*
 * Run one item's handler in a subtransaction, as the role that queued it.
 * Returns NULL on success, else the error (in the caller's context).  A
 * real cancel (see cancel_is_real) is re-thrown once the subtransaction is
 * rolled back; any other error, whatever its SQLSTATE, is the item's.
 */
static ErrorData *
run_handler(CompensationItem *item, ResolvedHandler **cache,
			MemoryContext cachecxt)
{
	MemoryContext callcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	SubTransactionId parent_subid = GetCurrentSubTransactionId();
	bool		no_cursors_before = ThereAreNoReadyPortals();
	Oid			save_userid;
	int			save_sec_context;
	ErrorData  *volatile edata = NULL;

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(callcxt);

	PG_TRY();
	{
		Oid			fn = resolve_handler(item, cache, cachecxt);
		FmgrInfo	flinfo;
		int			nestlevel;

		LOCAL_FCINFO(hfcinfo, 1);

		fmgr_info(fn, &flinfo);
		InitFunctionCallInfoData(*hfcinfo, &flinfo, 1, InvalidOid, NULL, NULL);
		hfcinfo->args[0].value = item->payload;
		hfcinfo->args[0].isnull = false;

		nestlevel = NewGUCNestLevel();
		SetUserIdAndSecContext(item->enqueued_by,
							   save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		arm_handler_timeout();
		compensation_handler_running = true;
		(void) FunctionCallInvoke(hfcinfo);
		compensation_handler_running = false;
		disarm_handler_timeout();
		SetUserIdAndSecContext(save_userid, save_sec_context);
		AtEOXact_GUC(false, nestlevel);

		/* Past its time, a handler fails even if it caught the cancel. */
		if (handler_timed_out)
		{
			QueryCancelPending = false;
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling compensation handler due to payments.handler_timeout")));
		}

		/*
		 * A cursor left open would pass to the next handler, which may be
		 * another role's, with the rights of the role that opened it.
		 */
		if (no_cursors_before && !ThereAreNoReadyPortals())
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_CURSOR_STATE),
					 errmsg("compensation handler left a cursor open"),
					 errhint("Close every cursor the handler opens before it returns.")));

		/* Likewise its large objects: close them as if it had failed. */
		AtEOSubXact_LargeObject(false, GetCurrentSubTransactionId(),
								parent_subid);

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		compensation_handler_running = false;
		disarm_handler_timeout();
		MemoryContextSwitchTo(callcxt);
		edata = CopyErrorData();
		FlushErrorState();

		/* Also restores the user, the GUCs and the SPI stack. */
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callcxt);
		CurrentResourceOwner = oldowner;
		SetUserIdAndSecContext(save_userid, save_sec_context);

		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		{
			if (handler_timed_out)
				edata->message = psprintf("compensation handler timed out after %d ms (payments.handler_timeout)",
										  handler_timeout);
			else if (cancel_is_real())
				ReThrowError(edata);
		}
		edata->message = clipped(edata->message);
	}
	PG_END_TRY();

	return edata;
}

static int
item_cmp(const void *a, const void *b)
{
	const CompensationItem *x = a;
	const CompensationItem *y = b;

	if (x->due != y->due)
		return x->due < y->due ? -1 : 1;
	if (x->id != y->id)
		return x->id < y->id ? -1 : 1;
	return 0;
}

/*
 * Steps 2 and 3 of the file header.  Returns how many items finished
 * (succeeded or failed).
 *
 * One UPDATE takes and marks the items succeeded before any handler runs;
 * an item whose handler fails is then set back to pending (or dead) with
 * its attempt recorded.  Locking and marking in one pass instead of two is
 * most of the cost of a no-op item.  A handler therefore sees its own item
 * as succeeded while it runs.
 */
static int
run_due(int max_items)
{
	static const Oid argtypes[] = {INT4OID, INT8OID, TIMESTAMPTZOID};
	Datum		values[3];
	int64		token = (int64) pg_prng_uint64(&pg_global_prng_state);
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext itemcxt;
	CompensationItem *items;
	int64	   *succeeded;
	int			nsucceeded = 0;
	ResolvedHandler *cache = NULL;
	Size		payload_bytes = 0;
	int			nitems;
	int			nrun;

	/*
	 * The due time is a parameter, not clock_timestamp(), so that it bounds
	 * the index scan instead of filtering every item due later; and the
	 * external handlers are an array tested per row rather than an anti
	 * join, which would let the planner sort every due item instead of
	 * reading the first ones in index order.
	 */
	payments_prepare(&mark_plan,
					 "UPDATE @extschema@.compensations c"
					 " SET status = 'succeeded', attempts = c.attempts + 1,"
					 "  finished_at = clock_timestamp(), lease_expires_at = NULL,"
					 "  claim_token = $2, updated_at = clock_timestamp()"
					 " WHERE c.id = ANY (ARRAY("
					 "  SELECT p.id FROM @extschema@.compensations p"
					 "  WHERE p.finished_at IS NULL AND p.next_attempt_at <= $3"
					 "   AND p.status = 'pending'"
					 "   AND p.handler <> ALL (ARRAY(SELECT e.handler FROM @extschema@.external_handlers e))"
					 "  ORDER BY p.next_attempt_at LIMIT $1"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND c.status = 'pending'"
					 " RETURNING c.id, c.handler, c.payload, c.enqueued_by::oid,"
					 "  c.handler_owner::oid, c.attempts, c.max_attempts, c.next_attempt_at",
					 3, argtypes);
	values[0] = Int32GetDatum(max_items);
	values[1] = Int64GetDatum(token);
	values[2] = TimestampTzGetDatum(GetCurrentTimestamp());
	nitems = (int) payments_execute(mark_plan, values, NULL,
									SPI_OK_UPDATE_RETURNING, 0);
	if (nitems == max_items)
		last_batch_full = true;
	if (nitems == 0)
		return 0;

	items = palloc(sizeof(CompensationItem) * nitems);
	for (int i = 0; i < nitems; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		items[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		items[i].handler = SPI_getvalue(tup, desc, 2);
		items[i].payload = datumCopy(SPI_getbinval(tup, desc, 3, &isnull),
									 false, -1);
		items[i].enqueued_by = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		items[i].handler_owner = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
		items[i].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		items[i].max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		items[i].due = DatumGetTimestampTz(SPI_getbinval(tup, desc, 8, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	qsort(items, nitems, sizeof(CompensationItem), item_cmp);
	succeeded = palloc(sizeof(int64) * nitems);
	compensation_batch_token = token;

	itemcxt = AllocSetContextCreate(callcxt, "payments compensation",
									ALLOCSET_DEFAULT_SIZES);
	for (nrun = 0; nrun < nitems; nrun++)
	{
		CompensationItem *item = &items[nrun];
		ErrorData  *edata;

		payload_bytes += toast_raw_datum_size(item->payload);
		if (nrun > 0 && payload_bytes > BATCH_MAX_PAYLOAD_BYTES)
			break;
		/* Another database waits and this worker's quantum is over. */
		if (nrun > 0 && payments_worker_should_yield())
			break;
		if (payments_shards_distributed())
		{
			if (!OidIsValid(batch_role))
				batch_role = item->enqueued_by;
			else if (item->enqueued_by != batch_role)
				break;
		}

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(itemcxt);
		(void) PAYMENTS_FAULT(FAULT_WORKER_AFTER_CLAIM);

		/*
		 * A drill may run a handler that succeeded a second time: handlers
		 * run at least once, so a second run must do no harm.
		 */
		do
		{
			PaymentsShardContext shard;

			/* The handler's calls find their own shards. */
			marker_set(item->id, item->attempts - 1);
			shard = payments_shard_clear();
			edata = run_handler(item, &cache, callcxt);
			payments_shard_leave(shard);
			marker_clear();
			reset_session_state();
		} while (edata == NULL && PAYMENTS_FAULT(FAULT_WORKER_AFTER_HANDLER));
		if (edata != NULL)
		{
			ereport(LOG,
					(errmsg("compensation %lld failed on attempt %d of %d: %s",
							(long long) item->id, item->attempts,
							item->max_attempts, edata->message),
					 errdetail("Handler %s, SQLSTATE %s.", item->handler,
							   unpack_sql_state(edata->sqlerrcode))));
			if (!compensation_record_failure(item->id, edata->message,
											 unpack_sql_state(edata->sqlerrcode),
											 token, false))
				elog(ERROR, "compensation %lld changed under its lock",
					 (long long) item->id);
		}
		else
			succeeded[nsucceeded++] = item->id;
		MemoryContextSwitchTo(callcxt);
		MemoryContextReset(itemcxt);
	}
	MemoryContextDelete(itemcxt);
	compensation_batch_token = 0;

	/* The items queued after those that succeeded are due now. */
	if (nsucceeded > 0)
		compensation_release_next(compensation_ids_array(succeeded, nsucceeded));

	/* What this call leaves out (the byte budget, another role's items) goes back as it was. */
	if (nrun < nitems)
	{
		int64	   *rest = palloc(sizeof(int64) * (nitems - nrun));

		for (int i = nrun; i < nitems; i++)
			rest[i - nrun] = items[i].id;
		payments_prepare(&unmark_plan,
						 "UPDATE @extschema@.compensations"
						 " SET status = 'pending', attempts = attempts - 1,"
						 "  finished_at = NULL, claim_token = NULL"
						 " WHERE id = ANY ($1) AND claim_token = $2",
						 2, (Oid[]) {INT8ARRAYOID, INT8OID});
		values[0] = compensation_ids_array(rest, nitems - nrun);
		values[1] = Int64GetDatum(token);
		payments_execute(unmark_plan, values, NULL, SPI_OK_UPDATE, 0);
		last_batch_full = true;
	}

	return nrun;
}

/* Steps 1 to 3 of the file header on one shard (the whole queue without Citus) */
static int32
expire_batch(int32 max_items, void *arg)
{
	return compensation_expire_leases(NULL, max_items);
}

static int32
release_batch(int32 max_items, void *arg)
{
	return compensation_release_stranded(max_items);
}

static int32
run_batch(int32 max_items, void *arg)
{
	return run_due(max_items);
}

/*
 * payments.run_compensations(max_items): see the file header.  Returns how
 * many items it finished: run (either way) or given back after their lease
 * ran out.  Not granted to applications: it is the worker's task.
 */
Datum
payments_run_compensations(PG_FUNCTION_ARGS)
{
	int			max_items;
	int			done = 0;
	TimestampTz now;

	max_items = payments_arg_int_range(fcinfo, 0, "max_items", 1,
									   COMPENSATION_MAX_ITEMS_LIMIT);
	payments_check_not_in_recovery();
	run_fn_oid = fcinfo->flinfo->fn_oid;

	SPI_connect();
	if (tracking)
		settle_unsettled();
	now = GetCurrentTimestamp();
	if (!last_batch_full ||
		TimestampDifferenceExceeds(last_lease_check, now, LEASE_CHECK_INTERVAL_MS))
	{
		done += payments_shard_batches(max_items, expire_batch, NULL);
		(void) payments_shard_batches(max_items, release_batch, NULL);
		last_lease_check = now;
	}
	last_batch_full = false;
	batch_role = InvalidOid;
	done += payments_shard_batches(max_items, run_batch, NULL);
	SPI_finish();

	PG_RETURN_INT32(done);
}
