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
 * Every decision is taken on the branch's row, as the SQL "INSERT ... ON
 * CONFLICT DO NOTHING" and "UPDATE ... WHERE state = 'tried'" would take it:
 * a missing row is inserted so that a concurrent insert of the same branch
 * is waited for and then seen (speculative insertion, as ON CONFLICT does),
 * and a tried row is locked before it changes, its latest version judged
 * again (as EvalPlanQual does).  So concurrent calls wait for each other's
 * row and never for a gap: PostgreSQL takes no gap locks.  Exactly one of
 * confirmed, cancelled and suspended wins, each phase proceeds at most
 * once, and no interleaving deadlocks (each call touches one row).  A row
 * that is confirmed, cancelled or suspended never changes again, so a call
 * that finds one answers from it without a lock: a transaction may answer
 * any number of retries.  Under REPEATABLE READ or SERIALIZABLE a decision
 * the transaction's snapshot would take on an older row than the latest is
 * a serialization failure.  A Try whose transaction rolls back leaves no
 * row, and its Cancel is empty, which is right only because its business
 * work rolled back with it: the fence is sound when the Try's effects are
 * in the same transaction.
 *
 * The row is read with a scan of the primary key index and written with
 * direct_write.c, not SQL: a participant calls the fence in every phase,
 * and an SPI statement's plan revalidation and executor start-up cost
 * more than the one-row write.  The table's constraints, indexes and AFTER
 * ROW triggers apply; BEFORE ROW triggers, which could change or skip the
 * row the decision was taken on, are refused.
 *
 * A branch belongs to the role that wrote it: the role is part of the key,
 * so no other role can see, steer or block it.  The calls run as the
 * caller and check no privilege on the table: EXECUTE on the function is
 * the check.  No name is looked up, so the caller's search_path cannot
 * change what they do.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tcc.h"
#include "payments.h"
#include "args.h"
#include "direct_write.h"
#include "citus_shards.h"
#include "extension_catalog.h"
#include "fault.h"
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

/* The columns of payments.tcc_fence the fence reads and writes */
enum
{
	FENCE_OWNER,
	FENCE_GID,
	FENCE_BRANCH,
	FENCE_ACTION,
	FENCE_STATE,
	FENCE_CREATED,
	FENCE_UPDATED,
	FENCE_NCOLS
};

/* The primary key: owner, gid, branch_id */
#define FENCE_NKEYS			3

/* How often a call looks again at a row that changed under it */
#define FENCE_MAX_TRIES		3

static const char *const fence_names[FENCE_NCOLS] = {
	"owner", "gid", "branch_id", "action", "state", "created_at", "updated_at"
};
static const Oid fence_types[FENCE_NCOLS] = {
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
	AttrNumber	attnums[FENCE_NCOLS];
	Snapshot	snapshot;
	TupleTableSlot *row;
	char	   *state;			/* NULL: no row */
	PaymentsShardContext shard; /* what payments_shard_enter returned */
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

	/* index columns 1 to 3 */
	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(call->owner));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(call->gid));
	ScanKeyInit(&skey[2], 3, BTEqualStrategyNumber, F_TEXTEQ,
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

/* The state of the row in call->row, which must be one the fence writes */
static char *
row_state(FenceCall *call)
{
	bool		isnull;
	Datum		d = slot_getattr(call->row, call->attnums[FENCE_STATE], &isnull);
	char	   *state = isnull ? NULL : TextDatumGetCString(d);

	if (state == NULL ||
		(strcmp(state, "tried") != 0 && strcmp(state, "confirmed") != 0 &&
		 strcmp(state, "cancelled") != 0 && strcmp(state, "suspended") != 0))
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("TCC branch \"%s\" of transaction \"%s\" has the unknown state %s",
						text_to_cstring(call->branch_id), text_to_cstring(call->gid),
						state == NULL ? "NULL" : quote_literal_cstr(state)),
				 errhint("Set its state back to tried, confirmed, cancelled or suspended.")));
	return state;
}

/*
 * Open the fence for a call on the branch of the call's arguments.  The
 * table's columns are found by name, so that columns a DBA added or
 * dropped do not stop the fence.
 */
static void
fence_open(FunctionCallInfo fcinfo, FenceCall *call)
{
	call->owner = GetUserId();
	call->gid = payments_arg_text(fcinfo, 0, "gid", TCC_ID_MAX_BYTES);
	call->branch_id = payments_arg_text(fcinfo, 1, "branch_id", TCC_ID_MAX_BYTES);
	payments_check_not_in_recovery();
	call->shard = payments_shard_enter(call->gid, "TCC transaction");

	call->rel = table_open(payments_relation(PAYMENTS_REL_TCC_FENCE),
						   RowExclusiveLock);
	call->pkey = index_open(payments_relation(PAYMENTS_REL_TCC_FENCE_PKEY),
							RowExclusiveLock);
	payments_check_columns(call->rel, fence_names, fence_types, FENCE_NCOLS,
						   call->attnums);
	payments_check_key_index(call->rel, call->pkey, call->attnums, FENCE_NKEYS);
	payments_direct_refuse_before_row(call->rel, true,
									  gettext_noop("A BEFORE ROW trigger could change or skip the row the TCC fence decides on."));
	call->row = table_slot_create(call->rel, NULL);
	call->snapshot = NULL;
}

/*
 * Read the branch's row as a new command with a fresh snapshot (under READ
 * COMMITTED, one that sees what a call waited for has committed), into
 * call->row and call->state.  Under REPEATABLE READ, a snapshot that shows
 * another row than the latest is a serialization failure.
 */
static void
fence_read(FenceCall *call)
{
	bool		found;

	if (call->snapshot != NULL)
	{
		PopActiveSnapshot();
		UnregisterSnapshot(call->snapshot);
	}
	CommandCounterIncrement();
	call->snapshot = RegisterSnapshot(GetTransactionSnapshot());
	PushActiveSnapshot(call->snapshot);

	found = fence_lookup(call, call->snapshot);
	if (IsolationUsesXactSnapshot())
	{
		ItemPointerData tid = call->row->tts_tid;
		Snapshot	latest = RegisterSnapshot(GetLatestSnapshot());
		bool		current = fence_lookup(call, latest);

		UnregisterSnapshot(latest);
		if (current != found ||
			(found && !ItemPointerEquals(&tid, &call->row->tts_tid)))
			report_changed(call);
	}
	call->state = found ? row_state(call) : NULL;
}

static void
fence_close(FenceCall *call)
{
	ExecDropSingleTupleTableSlot(call->row);
	if (call->snapshot != NULL)
	{
		PopActiveSnapshot();
		UnregisterSnapshot(call->snapshot);
	}
	index_close(call->pkey, NoLock);
	table_close(call->rel, NoLock);
	payments_shard_leave(call->shard);
}

/*
 * Lock the tried row just read, and read its state again from its latest
 * version, as an UPDATE's EvalPlanQual would.  Returns false if it was
 * deleted meanwhile (under READ COMMITTED; the caller reads again).
 */
static bool
fence_lock(FenceCall *call)
{
	TM_FailureData tmfd;
	ItemPointerData tid = call->row->tts_tid;
	TM_Result	res;

	res = table_tuple_lock(call->rel, &tid, call->snapshot, call->row,
						   GetCurrentCommandId(false), LockTupleNoKeyExclusive,
						   LockWaitBlock,
						   IsolationUsesXactSnapshot() ? 0 :
						   TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
						   &tmfd);
	switch (res)
	{
		case TM_Ok:
			call->state = row_state(call);
			return true;
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				report_changed(call);
			return false;
		case TM_Updated:
			/* READ COMMITTED follows updates: only snapshot isolation gets here */
			report_changed(call);
			break;
		default:
			elog(ERROR, "unexpected table_tuple_lock status %d in relation \"%s\"",
				 (int) res, RelationGetRelationName(call->rel));
	}
	return false;
}

/*
 * Insert the branch in state, with action (NULL if action_null), unless a
 * row of it exists by then.  Returns whether it was inserted.
 */
static bool
fence_insert(FenceCall *call, const char *state, Datum action, bool action_null)
{
	DirectWrite dw;
	TupleTableSlot *row;
	Datum		now = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	int			natts = RelationGetDescr(call->rel)->natts;
	bool		inserted;

	(void) PAYMENTS_FAULT(FAULT_TCC_FENCE_WRITE);
	payments_direct_begin_ext(&dw, call->rel, call->snapshot, CMD_INSERT,
							  NULL, 0, true);
	row = payments_direct_slot(&dw);
	memset(row->tts_isnull, true, sizeof(bool) * natts);
#define SET_COLUMN(col, value) \
	(row->tts_values[call->attnums[col] - 1] = (value), \
	 row->tts_isnull[call->attnums[col] - 1] = false)
	SET_COLUMN(FENCE_OWNER, ObjectIdGetDatum(call->owner));
	SET_COLUMN(FENCE_GID, PointerGetDatum(call->gid));
	SET_COLUMN(FENCE_BRANCH, PointerGetDatum(call->branch_id));
	if (!action_null)
		SET_COLUMN(FENCE_ACTION, action);
	SET_COLUMN(FENCE_STATE, CStringGetTextDatum(state));
	SET_COLUMN(FENCE_CREATED, now);
	SET_COLUMN(FENCE_UPDATED, now);
#undef SET_COLUMN
	ExecStoreVirtualTuple(row);
	inserted = payments_direct_insert_if_absent(&dw, row, call->pkey);
	payments_direct_end(&dw);
	return inserted;
}

/* Move the branch's tried row, locked by fence_lock, to state */
static void
fence_update(FenceCall *call, const char *state)
{
	AttrNumber	written[2];
	DirectWrite dw;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	(void) PAYMENTS_FAULT(FAULT_TCC_FENCE_WRITE);
	written[0] = call->attnums[FENCE_STATE];
	written[1] = call->attnums[FENCE_UPDATED];
	values[0] = CStringGetTextDatum(state);
	values[1] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	payments_direct_begin(&dw, call->rel, call->snapshot, CMD_UPDATE,
						  written, lengthof(written));
	payments_direct_update(&dw, call->row, values, nulls);
	payments_direct_end(&dw);
}

/* A branch that keeps changing under a call: ask for a retry */
static void
report_gone(FenceCall *call)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("TCC branch \"%s\" of transaction \"%s\" keeps changing",
					text_to_cstring(call->branch_id), text_to_cstring(call->gid)),
			 errhint("Retry the call.")));
}

/*
 * Read the branch for a Confirm or a Cancel: a tried row is locked and
 * judged again on its latest version.  Returns false if it went away
 * meanwhile, for the caller to look again.
 */
static bool
fence_read_for_change(FenceCall *call, int tries)
{
	if (tries == FENCE_MAX_TRIES)
		report_gone(call);
	fence_read(call);
	return call->state == NULL || strcmp(call->state, "tried") != 0 ||
		fence_lock(call);
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
	const char *answer = NULL;

	if (!PG_ARGISNULL(2))
		action = PointerGetDatum(payments_arg_text(fcinfo, 2, "action", TCC_ID_MAX_BYTES));
	fence_open(fcinfo, &call);
	for (int tries = 0; answer == NULL; tries++)
	{
		if (tries == FENCE_MAX_TRIES)
			report_gone(&call);
		fence_read(&call);
		if (call.state == NULL)
		{
			if (fence_insert(&call, "tried", action, PG_ARGISNULL(2)))
				answer = "proceed";
		}
		else if (strcmp(call.state, "tried") == 0 || strcmp(call.state, "confirmed") == 0)
			answer = "duplicate";
		else
			answer = "suspended";
	}
	fence_close(&call);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/* payments.tcc_confirm(gid, branch_id): proceed or duplicate. */
Datum
payments_tcc_confirm(PG_FUNCTION_ARGS)
{
	FenceCall	call;
	const char *answer = NULL;

	fence_open(fcinfo, &call);
	for (int tries = 0; answer == NULL; tries++)
	{
		if (!fence_read_for_change(&call, tries))
			continue;
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
		else if (strcmp(call.state, "confirmed") == 0)
			answer = "duplicate";
		else
			ereport(ERROR,
					(errcode(ERRCODE_PM_TCC_CANCELLED),
					 errmsg("TCC branch \"%s\" of transaction \"%s\" was cancelled",
							text_to_cstring(call.branch_id), text_to_cstring(call.gid)),
					 errdetail("A cancelled branch is never confirmed.")));
	}
	fence_close(&call);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/* payments.tcc_cancel(gid, branch_id): proceed, empty or duplicate. */
Datum
payments_tcc_cancel(PG_FUNCTION_ARGS)
{
	FenceCall	call;
	const char *answer = NULL;

	fence_open(fcinfo, &call);
	for (int tries = 0; answer == NULL; tries++)
	{
		if (!fence_read_for_change(&call, tries))
			continue;
		if (call.state == NULL)
		{
			if (fence_insert(&call, "suspended", (Datum) 0, true))
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
		else
			answer = "duplicate";
	}
	fence_close(&call);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/*
 * payments.purge_tcc_fence(max_rows): the worker's task.  Branches that
 * finished longer than payments.tcc_fence_retention ago go, a batch at a
 * time (the BRIN index on created_at, never later than updated_at, finds
 * the candidates); rows that a call holds are skipped, never waited for,
 * and a branch still tried stays (payments.tcc_branches shows it stuck).
 * While the tables are distributed, of the shards this node holds.
 */
static int32
purge_fence(int32 max_rows, void *arg)
{
	Datum		values[2];
	uint64		n;

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
	return (int32) n;
}

Datum
payments_purge_tcc_fence(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);

	payments_check_not_in_recovery();
	PG_RETURN_INT32(payments_shard_batches(max_rows, purge_fence, NULL));
}
