/*-------------------------------------------------------------------------
 *
 * tcc_fence.c
 *	  The TCC fence: tcc_try, tcc_confirm and tcc_cancel, called first in
 *	  the local transaction of each phase of a Try-Confirm-Cancel branch,
 *	  and the worker's purge of finished branches.
 *
 * A branch is one row of payments.tcc_fence, written in the caller's
 * transaction, so the fence's answer commits or rolls back with the
 * business work it guards.  The rules:
 *
 *	  Try:     no row: insert it "tried", proceed.  Tried or confirmed: the
 *			   Try committed before, duplicate.  Cancelled or suspended: the
 *			   Cancel came first, suspended (the caller answers failure).
 *	  Confirm: tried: confirmed, proceed.  Confirmed: duplicate.  No row,
 *			   cancelled or suspended: PM601 or PM602.
 *	  Cancel:  tried: cancelled, proceed.  No row: insert it "suspended",
 *			   empty (nothing to undo; the marker refuses a late Try).
 *			   Cancelled or suspended: duplicate.  Confirmed: PM603.
 *
 * Every call first takes a transaction-level lock on its branch's key
 * (key_lock.c), held until its transaction ends, then reads the branch's
 * row with a snapshot taken after the lock: whoever held the lock before
 * has committed or rolled back, so the row read is the branch's latest
 * state, and the decision and the write made on it cannot race another
 * call.  Calls on one branch wait for each other's transactions; calls on
 * different branches never wait, and no call waits for a gap: PostgreSQL
 * takes no gap locks.  So exactly one of confirmed, cancelled and
 * suspended wins, each phase proceeds at most once, and no interleaving of
 * calls on one branch deadlocks (each takes one lock).  Under REPEATABLE
 * READ or SERIALIZABLE the transaction's snapshot may show an older state
 * than the latest: deciding on it would be wrong, so that is a
 * serialization failure.  A Try whose transaction rolls back leaves no
 * row, and its Cancel is empty, which is right only because its business
 * work rolled back with it: the fence is sound when the Try's effects are
 * in the same transaction.
 *
 * The row is read with a scan of the primary key index and written with
 * ExecSimpleRelationInsert or ExecSimpleRelationUpdate (direct_write.c):
 * a participant calls the fence in every phase, and an SPI statement's
 * plan revalidation and executor start-up cost more than the one-row
 * write.  The table's constraints, indexes and row triggers still apply.
 *
 * A branch belongs to the role that wrote it: the role is part of the key
 * (and of the lock's), so no other role can see, steer or block it.  The
 * calls run as the caller and check no privilege on the table: EXECUTE on
 * the function is the check.  No name is looked up, so the caller's
 * search_path cannot change what they do.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tcc.h"
#include "payments.h"
#include "args.h"
#include "direct_write.h"
#include "extension_catalog.h"
#include "fault.h"
#include "key_lock.h"
#include "spi_util.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_tcc_try);
PG_FUNCTION_INFO_V1(payments_tcc_confirm);
PG_FUNCTION_INFO_V1(payments_tcc_cancel);
PG_FUNCTION_INFO_V1(payments_purge_tcc_fence);

/* The longest global transaction, branch or action id, in bytes */
#define TCC_ID_MAX_BYTES	255

/* payments.tcc_fence, in table order; the first three are its primary key */
#define FENCE_ATT_OWNER		1
#define FENCE_ATT_GID		2
#define FENCE_ATT_BRANCH	3
#define FENCE_ATT_ACTION	4
#define FENCE_ATT_STATE		5
#define FENCE_ATT_CREATED	6
#define FENCE_ATT_UPDATED	7
#define FENCE_NATTS			7
#define FENCE_NKEYS			3

static const char *const fence_names[FENCE_NATTS] = {
	"owner", "gid", "branch_id", "action", "state", "created_at", "updated_at"
};
static const Oid fence_types[FENCE_NATTS] = {
	REGROLEOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID
};

/* A branch's key and, once read, its row */
typedef struct FenceCall
{
	Oid			owner;
	text	   *gid;
	text	   *branch_id;
	Relation	rel;
	Relation	pkey;
	Snapshot	snapshot;
	TupleTableSlot *row;
	char	   *state;			/* NULL: no row */
} FenceCall;

static int	tcc_fence_retention = 7 * 24 * 3600;
static int	tcc_stuck_after = 600;

static SPIPlanPtr purge_plan;

void
tcc_init(void)
{
	DefineCustomIntVariable("payments.tcc_fence_retention",
							gettext_noop("How long finished TCC branches are kept."),
							gettext_noop("Longer than the coordinator retries a branch, so that a late Try still meets its Cancel's marker."),
							&tcc_fence_retention,
							7 * 24 * 3600,
							60,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("payments.tcc_stuck_after",
							gettext_noop("How long a TCC branch may stay tried before payments.tcc_branches calls it stuck."),
							NULL,
							&tcc_stuck_after,
							600,
							1,
							INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

/*
 * Look the branch up in the primary key with snapshot; the row, if any, is
 * left in call->row.  Returns whether there is one.
 */
static bool
fence_lookup(FenceCall *call, Snapshot snapshot)
{
	ScanKeyData skey[FENCE_NKEYS];
	IndexScanDesc scan;
	bool		found;

	ScanKeyInit(&skey[0], FENCE_ATT_OWNER, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(call->owner));
	ScanKeyInit(&skey[1], FENCE_ATT_GID, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(call->gid));
	ScanKeyInit(&skey[2], FENCE_ATT_BRANCH, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(call->branch_id));
	scan = index_beginscan(call->rel, call->pkey, snapshot, FENCE_NKEYS, 0);
	index_rescan(scan, skey, FENCE_NKEYS, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, call->row);
	index_endscan(scan);
	return found;
}

static void
report_changed(FenceCall *call)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to a concurrent change of TCC branch \"%s\" of transaction \"%s\"",
					text_to_cstring(call->branch_id), text_to_cstring(call->gid)),
			 errhint("Retry the transaction.")));
}

/*
 * Begin a call on the branch of the call's arguments: take its lock, open
 * the fence and read the branch's state into call->state.
 */
static void
fence_begin(FunctionCallInfo fcinfo, FenceCall *call)
{
	text	   *gid = payments_arg_text(fcinfo, 0, "gid", TCC_ID_MAX_BYTES);
	Size		gidlen = VARSIZE_ANY_EXHDR(gid);
	char	   *owner_gid;
	bool		found;
	ItemPointerData tid;

	call->owner = GetUserId();
	call->gid = gid;
	call->branch_id = payments_arg_text(fcinfo, 1, "branch_id", TCC_ID_MAX_BYTES);
	payments_check_not_in_recovery();

	/* The lock's key is the row's: the role, then gid and branch_id. */
	owner_gid = palloc(sizeof(Oid) + gidlen);
	memcpy(owner_gid, &call->owner, sizeof(Oid));
	memcpy(owner_gid + sizeof(Oid), VARDATA_ANY(gid), gidlen);
	payments_lock_key(owner_gid, sizeof(Oid) + gidlen,
					  VARDATA_ANY(call->branch_id),
					  VARSIZE_ANY_EXHDR(call->branch_id),
					  PAYMENTS_LOCKSPACE_TCC, true);

	call->rel = table_open(payments_relation(PAYMENTS_REL_TCC_FENCE),
						   RowExclusiveLock);
	call->pkey = index_open(payments_relation(PAYMENTS_REL_TCC_FENCE_PKEY),
							RowExclusiveLock);
	payments_check_columns(call->rel, fence_names, fence_types, FENCE_NATTS,
						   NULL);
	payments_check_primary_key(call->rel, call->pkey, FENCE_NKEYS);

	/* A new command, so that a call sees what this transaction wrote. */
	CommandCounterIncrement();
	call->snapshot = RegisterSnapshot(GetTransactionSnapshot());
	PushActiveSnapshot(call->snapshot);
	call->row = table_slot_create(call->rel, NULL);
	found = fence_lookup(call, call->snapshot);
	tid = call->row->tts_tid;

	if (IsolationUsesXactSnapshot())
	{
		Snapshot	latest = RegisterSnapshot(GetLatestSnapshot());
		bool		current = fence_lookup(call, latest);

		UnregisterSnapshot(latest);
		if (current != found ||
			(found && !ItemPointerEquals(&tid, &call->row->tts_tid)))
			report_changed(call);
	}

	call->state = NULL;
	if (found)
	{
		bool		isnull;

		call->state = TextDatumGetCString(slot_getattr(call->row, FENCE_ATT_STATE,
													   &isnull));
	}
}

static void
fence_end(FenceCall *call)
{
	ExecDropSingleTupleTableSlot(call->row);
	PopActiveSnapshot();
	UnregisterSnapshot(call->snapshot);
	index_close(call->pkey, NoLock);
	table_close(call->rel, NoLock);
}

/* Insert the branch, in state, with action (NULL if action_null) */
static void
fence_insert(FenceCall *call, const char *state, Datum action, bool action_null)
{
	DirectWrite dw;
	TupleTableSlot *row;
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	(void) PAYMENTS_FAULT(FAULT_TCC_FENCE_WRITE);
	payments_direct_begin(&dw, call->rel, call->snapshot, CMD_INSERT, NULL, 0);
	row = payments_direct_slot(&dw);
	memset(row->tts_isnull, false, sizeof(bool) * FENCE_NATTS);
	row->tts_values[FENCE_ATT_OWNER - 1] = ObjectIdGetDatum(call->owner);
	row->tts_values[FENCE_ATT_GID - 1] = PointerGetDatum(call->gid);
	row->tts_values[FENCE_ATT_BRANCH - 1] = PointerGetDatum(call->branch_id);
	row->tts_values[FENCE_ATT_ACTION - 1] = action;
	row->tts_isnull[FENCE_ATT_ACTION - 1] = action_null;
	row->tts_values[FENCE_ATT_STATE - 1] = CStringGetTextDatum(state);
	row->tts_values[FENCE_ATT_CREATED - 1] = now;
	row->tts_values[FENCE_ATT_UPDATED - 1] = now;
	ExecStoreVirtualTuple(row);
	ExecSimpleRelationInsert(dw.rri, dw.estate, row);
	payments_direct_end(&dw);
}

/* Move the branch read by fence_begin, which is tried, to state */
static void
fence_update(FenceCall *call, const char *state)
{
	static const AttrNumber written[] = {FENCE_ATT_STATE, FENCE_ATT_UPDATED};
	DirectWrite dw;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	(void) PAYMENTS_FAULT(FAULT_TCC_FENCE_WRITE);
	values[0] = CStringGetTextDatum(state);
	values[1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	payments_direct_begin(&dw, call->rel, call->snapshot, CMD_UPDATE,
						  written, lengthof(written));
	payments_direct_update(&dw, call->row, values, nulls);
	payments_direct_end(&dw);
}

/*
 * payments.tcc_try(gid, branch_id, action): proceed, duplicate or
 * suspended.
 */
Datum
payments_tcc_try(PG_FUNCTION_ARGS)
{
	FenceCall	call;
	Datum		action = (Datum) 0;
	const char *answer;

	if (!PG_ARGISNULL(2))
		action = PointerGetDatum(payments_arg_text(fcinfo, 2, "action", TCC_ID_MAX_BYTES));
	fence_begin(fcinfo, &call);
	if (call.state == NULL)
	{
		fence_insert(&call, "tried", action, PG_ARGISNULL(2));
		answer = "proceed";
	}
	else if (strcmp(call.state, "tried") == 0 || strcmp(call.state, "confirmed") == 0)
		answer = "duplicate";
	else
		answer = "suspended";
	fence_end(&call);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/* payments.tcc_confirm(gid, branch_id): proceed or duplicate. */
Datum
payments_tcc_confirm(PG_FUNCTION_ARGS)
{
	FenceCall	call;
	const char *answer = "duplicate";

	fence_begin(fcinfo, &call);
	if (call.state == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_TCC_NOT_TRIED),
				 errmsg("TCC branch \"%s\" of transaction \"%s\" was never tried",
						text_to_cstring(call.branch_id), text_to_cstring(call.gid)),
				 errdetail("A Confirm comes after a committed Try of its branch."),
				 errhint("The coordinator should not confirm a branch whose Try failed.")));
	if (strcmp(call.state, "tried") == 0)
	{
		fence_update(&call, "confirmed");
		answer = "proceed";
	}
	else if (strcmp(call.state, "confirmed") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_TCC_CANCELLED),
				 errmsg("TCC branch \"%s\" of transaction \"%s\" was cancelled",
						text_to_cstring(call.branch_id), text_to_cstring(call.gid)),
				 errdetail("A cancelled branch is never confirmed.")));
	fence_end(&call);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/* payments.tcc_cancel(gid, branch_id): proceed, empty or duplicate. */
Datum
payments_tcc_cancel(PG_FUNCTION_ARGS)
{
	FenceCall	call;
	const char *answer = "duplicate";

	fence_begin(fcinfo, &call);
	if (call.state == NULL)
	{
		fence_insert(&call, "suspended", (Datum) 0, true);
		answer = "empty";
	}
	else if (strcmp(call.state, "tried") == 0)
	{
		fence_update(&call, "cancelled");
		answer = "proceed";
	}
	else if (strcmp(call.state, "confirmed") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_TCC_CONFIRMED),
				 errmsg("TCC branch \"%s\" of transaction \"%s\" was confirmed",
						text_to_cstring(call.branch_id), text_to_cstring(call.gid)),
				 errdetail("A confirmed branch is never cancelled.")));
	fence_end(&call);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/*
 * payments.purge_tcc_fence(max_rows): the worker's task.  Branches that
 * finished longer than payments.tcc_fence_retention ago go, a batch at a
 * time (the BRIN index on created_at, never later than updated_at, finds
 * the candidates); rows that a call holds are skipped, never waited for,
 * and a branch still tried stays (payments.tcc_branches shows it stuck).
 */
Datum
payments_purge_tcc_fence(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);
	Datum		values[2];
	uint64		n;

	payments_check_not_in_recovery();
	values[0] = Int32GetDatum(max_rows);
	values[1] = Int32GetDatum(tcc_fence_retention);
	SPI_connect();
	payments_prepare(&purge_plan,
					 "DELETE FROM @extschema@.tcc_fence WHERE ctid = ANY (ARRAY("
					 " SELECT ctid FROM @extschema@.tcc_fence"
					 " WHERE created_at < now() - $2 * interval '1 second'"
					 "   AND updated_at < now() - $2 * interval '1 second' AND state <> 'tried'"
					 " LIMIT $1 FOR UPDATE SKIP LOCKED))",
					 2, (Oid[]) {INT4OID, INT4OID});
	n = payments_execute(purge_plan, values, NULL, SPI_OK_DELETE, 0);
	SPI_finish();
	PG_RETURN_INT32((int32) n);
}
