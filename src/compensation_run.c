/*-------------------------------------------------------------------------
 *
 * compensation_run.c
 *	  How the worker runs compensations: exactly once for work inside the
 *	  database, every attempt counted even across crashes, and each handler
 *	  with the rights of the role that queued it and no more.
 *
 * payments.run_compensations(max_items) is one of the worker's tasks, each
 * call a transaction of its own.  A call does three things:
 *
 *	1. Run the items that this backend claimed in its previous call.  One
 *	   UPDATE marks them all succeeded, which also locks them (a concurrent
 *	   cancel waits for the outcome); then each handler runs in a
 *	   subtransaction.  A success leaves the handler's effects in place
 *	   beside the succeeded mark, so both commit or neither does.  A
 *	   failure rolls the subtransaction back, sets the item back to pending
 *	   (or dead), records an attempt row and schedules the next attempt.
 *	2. Give back to the queue the claims whose lease has run out (once a
 *	   second while there is a backlog).
 *	3. Claim the next due items: status running, attempts + 1, a lease and
 *	   a random claim token, committed by this call, run by the next one.
 *	   The worker wakes itself at that commit, so the next call follows at
 *	   once.
 *
 * Why claim and run are two transactions: an attempt must be counted even
 * if the server crashes in the middle of the handler, and only a committed
 * row can say "this attempt started".  A crash during step 1 rolls back the
 * handlers' effects and their succeeded marks together, and leaves the
 * items running under a claim that nobody will run again (the claim token
 * lives in the crashed backend's memory, and is forgotten before step 1
 * starts, so even an error in step 1 never runs the claim twice).  Once
 * the claim's lease (WORKER_LEASE_MS) has run out, step 2 of a later call
 * records the attempt as failed (PM304) and the item is retried: nothing is
 * lost, and nothing that committed as succeeded runs again.
 *
 * The lease only has to cover the gap between the claim's commit and the
 * next call's lock: while the items are locked, step 2 skips them.
 *
 * Rights: the handler runs as the item's enqueued_by, with
 * SECURITY_RESTRICTED_OPERATION (no SET ROLE, no temporary objects), under
 * a GUC nest level that is unwound afterwards (a handler cannot change the
 * worker's settings), after checking again that the role exists, may
 * execute the function, and that the function found under the stored name
 * still has the owner it had at enqueue time.
 *
 *-------------------------------------------------------------------------
 */
#include "compensation.h"
#include "worker.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_run_compensations);

/* How long a claim of the worker may wait for the call that runs it */
#define WORKER_LEASE_MS		10000

/* How often to look for expired leases while a backlog keeps claims full */
#define LEASE_CHECK_INTERVAL_MS	1000

/* The claim this backend committed in its previous call (step 3). */
static int64 claim_token = 0;
static int	nclaimed = 0;
static int64 *claimed_ids = NULL;	/* in TopMemoryContext */
static int	claimed_capacity = 0;

/*
 * The search for expired leases reads every unfinished due item, so while
 * a backlog keeps this backend's claims full it runs once a second rather
 * than in every call.
 */
static bool last_claim_full = false;
static TimestampTz last_lease_check = 0;

/* payments.handler_timeout, as a timeout of our own */
static TimeoutId handler_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t handler_timed_out = false;

static SPIPlanPtr mark_plan;
static SPIPlanPtr claim_plan;

typedef struct CompensationItem
{
	int64		id;
	char	   *handler;
	Datum		payload;
	Oid			enqueued_by;
	Oid			handler_owner;
	int32		attempts;
	int32		max_attempts;
	TimestampTz due;			/* next_attempt_at: the order they run in */
} CompensationItem;

/*
 * The handler ran past payments.handler_timeout: cancel it the way
 * statement_timeout cancels a query.  Runs in the SIGALRM handler.
 */
static void
handler_timeout_fired(void)
{
	handler_timed_out = true;
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

static void
arm_handler_timeout(void)
{
	handler_timed_out = false;
	if (payments_handler_timeout <= 0)
		return;
	if (handler_timeout_id == MAX_TIMEOUTS)
		handler_timeout_id = RegisterTimeout(USER_TIMEOUT, handler_timeout_fired);
	enable_timeout_after(handler_timeout_id, payments_handler_timeout);
}

static void
disarm_handler_timeout(void)
{
	if (handler_timeout_id != MAX_TIMEOUTS)
		disable_timeout(handler_timeout_id, false);
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
 * EXECUTE.  Any failure here is a failed attempt like a handler error (and
 * is not cached, so the next item of the same handler checks again).
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
 * Returns NULL on success, else the error (in the caller's context); an
 * error that must end the whole call (a cancel or shutdown request) is
 * re-thrown once the subtransaction is rolled back.
 */
static ErrorData *
run_handler(CompensationItem *item, ResolvedHandler **cache,
			MemoryContext cachecxt)
{
	MemoryContext callcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec_context;
	ErrorData  *volatile edata = NULL;

	handler_timed_out = false;
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
		(void) FunctionCallInvoke(hfcinfo);
		disarm_handler_timeout();
		SetUserIdAndSecContext(save_userid, save_sec_context);
		AtEOXact_GUC(false, nestlevel);

		/* The timeout fired just as the handler returned: it finished. */
		if (handler_timed_out)
			QueryCancelPending = false;

		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(callcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
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
			if (!handler_timed_out)
				ReThrowError(edata);
			edata->message = psprintf("compensation handler timed out after %d ms (payments.handler_timeout)",
									  payments_handler_timeout);
		}
	}
	PG_END_TRY();

	return edata;
}

/* An int8[] of ids, for "id = ANY ($1)" */
static Datum
ids_array(const int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	return PointerGetDatum(construct_array(elems, n, INT8OID, sizeof(int64),
										   FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
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
 * Step 1: run the items of a claim, in next_attempt_at order.  Returns how
 * many finished (succeeded or failed).
 *
 * One UPDATE marks every item of the claim succeeded, which also locks it,
 * before any handler runs; an item whose handler fails is then set back to
 * pending (or dead) with its attempt recorded.  The mark and the effects
 * commit together either way, and locking and marking in one pass instead
 * of two is most of the cost of a no-op item.  A handler therefore sees its
 * own item as succeeded while it runs.
 */
static int
run_claimed(int64 token, int64 *ids, int n)
{
	static const Oid argtypes[] = {INT8ARRAYOID, INT8OID};
	Datum		values[2];
	MemoryContext callcxt = CurrentMemoryContext;
	MemoryContext itemcxt;
	CompensationItem *items;
	ResolvedHandler *cache = NULL;
	int			nitems;

	payments_prepare(&mark_plan,
					 "UPDATE @extschema@.compensations"
					 " SET status = 'succeeded', finished_at = clock_timestamp(),"
					 "  lease_expires_at = NULL, updated_at = clock_timestamp()"
					 " WHERE id = ANY ($1) AND claim_token = $2 AND status = 'running'"
					 " RETURNING id, handler, payload, enqueued_by::oid, handler_owner::oid,"
					 "  attempts, max_attempts, next_attempt_at",
					 2, argtypes);
	values[0] = ids_array(ids, n);
	values[1] = Int64GetDatum(token);
	nitems = (int) payments_execute(mark_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);

	items = palloc(sizeof(CompensationItem) * Max(nitems, 1));
	for (int i = 0; i < nitems; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		items[i].id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		items[i].handler = SPI_getvalue(tup, desc, 2);
		items[i].payload = PointerGetDatum(PG_DETOAST_DATUM_COPY(SPI_getbinval(tup, desc, 3, &isnull)));
		items[i].enqueued_by = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		items[i].handler_owner = DatumGetObjectId(SPI_getbinval(tup, desc, 5, &isnull));
		items[i].attempts = DatumGetInt32(SPI_getbinval(tup, desc, 6, &isnull));
		items[i].max_attempts = DatumGetInt32(SPI_getbinval(tup, desc, 7, &isnull));
		items[i].due = DatumGetTimestampTz(SPI_getbinval(tup, desc, 8, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	qsort(items, nitems, sizeof(CompensationItem), item_cmp);

	itemcxt = AllocSetContextCreate(callcxt, "payments compensation",
									ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < nitems; i++)
	{
		ErrorData  *edata;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(itemcxt);
		edata = run_handler(&items[i], &cache, callcxt);
		if (edata != NULL)
		{
			ereport(LOG,
					(errmsg("compensation %lld failed on attempt %d of %d: %s",
							(long long) items[i].id, items[i].attempts,
							items[i].max_attempts, edata->message),
					 errdetail("Handler %s, SQLSTATE %s.", items[i].handler,
							   unpack_sql_state(edata->sqlerrcode))));
			if (!compensation_record_failure(items[i].id, edata->message,
											 unpack_sql_state(edata->sqlerrcode),
											 token))
				elog(ERROR, "compensation %lld changed under its lock",
					 (long long) items[i].id);
		}
		MemoryContextSwitchTo(callcxt);
		MemoryContextReset(itemcxt);
	}
	MemoryContextDelete(itemcxt);
	return nitems;
}

/*
 * Step 3: claim up to max_items due items of handlers the worker runs and
 * remember them for the next call.  Returns how many.
 */
static int
claim_due(int max_items)
{
	static const Oid argtypes[] = {INT4OID, INT8OID, INT4OID, TIMESTAMPTZOID};
	Datum		values[4];
	int64		token = (int64) pg_prng_uint64(&pg_global_prng_state);
	uint64		n;

	/*
	 * The due time is a parameter, not clock_timestamp(), so that it bounds
	 * the index scan instead of filtering every item due later; and the
	 * external handlers are an array tested per row rather than an anti
	 * join, which would let the planner sort every due item instead of
	 * reading the first ones in index order.
	 */
	payments_prepare(&claim_plan,
					 "UPDATE @extschema@.compensations c"
					 " SET status = 'running', attempts = c.attempts + 1,"
					 "  lease_expires_at = clock_timestamp() + $3 * interval '1 millisecond',"
					 "  claim_token = $2, updated_at = clock_timestamp()"
					 " WHERE c.id = ANY (ARRAY("
					 "  SELECT p.id FROM @extschema@.compensations p"
					 "  WHERE p.finished_at IS NULL AND p.next_attempt_at <= $4"
					 "   AND p.status = 'pending'"
					 "   AND p.handler <> ALL (ARRAY(SELECT e.handler FROM @extschema@.external_handlers e))"
					 "  ORDER BY p.next_attempt_at LIMIT $1"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND c.status = 'pending'"
					 " RETURNING c.id",
					 4, argtypes);
	values[0] = Int32GetDatum(max_items);
	values[1] = Int64GetDatum(token);
	values[2] = Int32GetDatum(WORKER_LEASE_MS);
	values[3] = TimestampTzGetDatum(GetCurrentTimestamp());
	n = payments_execute(claim_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);
	if (n == 0)
		return 0;

	if (claimed_capacity < (int) n)
	{
		if (claimed_ids != NULL)
			pfree(claimed_ids);
		claimed_ids = MemoryContextAlloc(TopMemoryContext, sizeof(int64) * n);
		claimed_capacity = (int) n;
	}
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		claimed_ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
													 SPI_tuptable->tupdesc, 1, &isnull));
	}
	nclaimed = (int) n;
	claim_token = token;

	/* The worker's own commit wakes it for the call that runs them. */
	payments_wake_worker_at_commit();
	return (int) n;
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
	payments_check_writable("run compensations");

	SPI_connect();
	if (nclaimed > 0)
	{
		int64		token = claim_token;
		int			n = nclaimed;
		int64	   *ids = palloc(sizeof(int64) * n);

		/* Forget the claim first: whatever happens, it is run only once. */
		memcpy(ids, claimed_ids, sizeof(int64) * n);
		nclaimed = 0;
		claim_token = 0;
		done += run_claimed(token, ids, n);
	}
	now = GetCurrentTimestamp();
	if (!last_claim_full ||
		TimestampDifferenceExceeds(last_lease_check, now, LEASE_CHECK_INTERVAL_MS))
	{
		done += compensation_expire_leases(NULL, max_items);
		last_lease_check = now;
	}
	last_claim_full = claim_due(max_items) == max_items;
	SPI_finish();

	PG_RETURN_INT32(done);
}
