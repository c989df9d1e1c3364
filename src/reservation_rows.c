/*-------------------------------------------------------------------------
 *
 * reservation_rows.c
 *	  The rows of a sale's hot path, read and written without SQL: taking
 *	  units from a free slot, inserting a hold, confirming a hold.
 *
 * Every reservation runs these once (a reserve, then a confirm), so they
 * are written with the table access method and ExecSimpleRelation* (see
 * direct_write.c) rather than as SPI statements, whose plan revalidation
 * and executor start-up cost more than the writes themselves.  Each
 * behaves as the SQL it replaces would when run through SPI:
 *
 * - a new command and a fresh snapshot per call (CommandCounterIncrement,
 *   then the transaction snapshot), so a call sees what its own statement
 *   wrote before it;
 * - a row is locked only if it qualifies on the snapshot, and under READ
 *   COMMITTED a row a concurrent transaction has changed is followed to
 *   the version it committed and judged again (as EvalPlanQual does);
 *   under REPEATABLE READ or SERIALIZABLE that is a serialization failure;
 * - SKIP LOCKED where the SQL said so.
 *
 * One difference, on purpose: a slot is judged before it is locked, not
 * after (lock_slot_if_enough), so the hot path never keeps a lock on a
 * slot it does not take units from.
 *
 * They run as whoever called reserve or confirm_reservation, which are
 * not SECURITY DEFINER (see src/sql/20_reservation.sql): nothing here checks a
 * privilege or applies row-level security, EXECUTE on those functions is
 * the check.
 *
 * The layout of the tables is checked on every call (a few comparisons),
 * so a table altered by hand gets a clear error, not a row with values in
 * the wrong columns.  Semantics and errors a caller sees (PM1xx) are
 * reservation.c's: these functions only report what they found.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "direct_write.h"
#include "extension_catalog.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "reservation.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

/* payments.stock_slots, in table order */
#define SLOTS_NATTS		3
#define SLOT_ATT_SLOT	2
#define SLOT_ATT_AVAIL	3
static const char *const slots_names[SLOTS_NATTS] = {"sku", "slot", "available"};
static const Oid slots_types[SLOTS_NATTS] = {TEXTOID, INT4OID, INT8OID};

/* payments.reservations, in table order */
#define HOLDS_NATTS		8
#define HOLD_ATT_STATE	5
#define HOLD_ATT_EXPIRES 6
#define HOLD_ATT_RESOLVED 8
static const char *const holds_names[HOLDS_NATTS] = {
	"id", "order_ref", "sku", "qty", "state", "expires_at", "created_at",
	"resolved_at"
};
static const Oid holds_types[HOLDS_NATTS] = {
	INT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID
};

/* What one call works on */
typedef struct RowCall
{
	Relation	rel;
	Snapshot	snapshot;
	DirectWrite dw;
	Relation	pkey;
} RowCall;

/*
 * The scans below build their keys for the primary keys the extension
 * creates: the first npkey columns, in table order, text ones in the "C"
 * collation (the collation ScanKeyInit gives a key).  A key rebuilt by
 * hand any other way is refused rather than scanned with keys that do not
 * fit it.
 */
static void
check_primary_key(RowCall *call, const char *relname, int npkey)
{
	Relation	pkey = call->pkey;
	bool		ok = (pkey != NULL &&
					  IndexRelationGetNumberOfKeyAttributes(pkey) == npkey);

	for (int i = 0; ok && i < npkey; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(call->rel), i);

		ok = pkey->rd_index->indkey.values[i] == i + 1 &&
			(att->atttypid != TEXTOID ||
			 pkey->rd_indcollation[i] == C_COLLATION_OID);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"payments.%s\" does not have the primary key the extension created",
						relname),
				 errhint("Undo the change to the table, or reinstall the extension.")));
}

/*
 * Open one of the extension's tables for a write of the columns given, as
 * a new command with a fresh snapshot (see the file header).
 */
static void
call_begin(RowCall *call, PaymentsRelation which, const char *const *names,
		   const Oid *types, int natts, int npkey, CmdType cmd,
		   const AttrNumber *cols, int ncols)
{
	call->rel = table_open(payments_relation(which), RowExclusiveLock);
	payments_direct_check_columns(call->rel, names, types, natts);

	CommandCounterIncrement();
	call->snapshot = RegisterSnapshot(GetTransactionSnapshot());
	PushActiveSnapshot(call->snapshot);
	payments_direct_begin(&call->dw, call->rel, call->snapshot, cmd,
						  cols, ncols);

	call->pkey = NULL;
	for (int i = 0; i < call->dw.rri->ri_NumIndices; i++)
		if (call->dw.rri->ri_IndexRelationDescs[i]->rd_index->indisprimary)
			call->pkey = call->dw.rri->ri_IndexRelationDescs[i];
	check_primary_key(call, RelationGetRelationName(call->rel), npkey);
}

static void
call_end(RowCall *call)
{
	payments_direct_end(&call->dw);
	PopActiveSnapshot();
	UnregisterSnapshot(call->snapshot);
	table_close(call->rel, NoLock);
}

/*
 * Lock the row version at tid, and leave the latest version in slot.
 * LOCKED: locked.  GONE: deleted meanwhile (READ COMMITTED).  BUSY: wait
 * was LockWaitSkip and another transaction holds it.
 */
typedef enum RowLock
{
	ROW_LOCKED,
	ROW_GONE,
	ROW_BUSY
} RowLock;

static RowLock
lock_latest(RowCall *call, ItemPointer tid, TupleTableSlot *slot,
			LockWaitPolicy wait)
{
	TM_FailureData tmfd;
	TM_Result	res;

	res = table_tuple_lock(call->rel, tid, call->snapshot, slot,
						   GetCurrentCommandId(false), LockTupleNoKeyExclusive,
						   wait,
						   IsolationUsesXactSnapshot() ? 0 :
						   TUPLE_LOCK_FLAG_FIND_LAST_VERSION,
						   &tmfd);
	switch (res)
	{
		case TM_Ok:
			return ROW_LOCKED;
		case TM_WouldBlock:
			return ROW_BUSY;
		case TM_Updated:
			/* READ COMMITTED follows updates: only snapshot isolation gets here */
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update")));
			break;
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent delete")));
			return ROW_GONE;
		default:

			/*
			 * TM_SelfModified and TM_Invisible cannot happen: the snapshot
			 * was taken after CommandCounterIncrement, so it sees every
			 * earlier write of this transaction and none is newer.
			 */
			elog(ERROR, "unexpected table_tuple_lock status %d in relation \"%s\"",
				 (int) res, RelationGetRelationName(call->rel));
	}
	return ROW_GONE;			/* keep the compiler quiet */
}

static int64
slot_units(TupleTableSlot *row)
{
	bool		isnull;

	return DatumGetInt64(slot_getattr(row, SLOT_ATT_AVAIL, &isnull));
}

/* Whether row is slot number slotno of the SKU */
static bool
slot_is(TupleTableSlot *row, text *sku, int32 slotno)
{
	bool		isnull;
	text	   *rsku = DatumGetTextPP(slot_getattr(row, 1, &isnull));

	return DatumGetInt32(slot_getattr(row, SLOT_ATT_SLOT, &isnull)) == slotno &&
		VARSIZE_ANY_EXHDR(rsku) == VARSIZE_ANY_EXHDR(sku) &&
		memcmp(VARDATA_ANY(rsku), VARDATA_ANY(sku), VARSIZE_ANY_EXHDR(sku)) == 0;
}

/* A slot that may serve a reserve, and where it stands in the try order */
typedef struct SlotCandidate
{
	ItemPointerData tid;
	int32		slot;
	int32		order;
} SlotCandidate;

static int
compare_candidates(const void *a, const void *b)
{
	int32		x = ((const SlotCandidate *) a)->order;
	int32		y = ((const SlotCandidate *) b)->order;

	return (x > y) - (x < y);
}

/*
 * Lock, without waiting, the latest version of the slot whose snapshot
 * version is at tid, if that version still holds at least qty units; leave
 * it in row.  Returns false, having locked nothing, if the slot is busy,
 * gone, or no longer has enough.
 *
 * Unlike SKIP LOCKED in SQL (and lock_latest), which locks the latest
 * version first and judges it after, this judges a version before locking
 * it: a version committed since the snapshot is read, judged again on
 * every condition of the scan (as EvalPlanQual would), and locked only if
 * it still qualifies, and then only if it is still the latest.  So a slot
 * this call locks is a slot it takes units from.  That is the lock order's
 * premise (see src/reservation.c): a row lock cannot be given back before
 * the transaction ends, and a reserve that kept a slot it could not use
 * and went on to wait for the SKU's stock row would close a cycle with
 * the holder of that row waiting for the slot.
 */
static bool
lock_slot_if_enough(RowCall *call, ItemPointer tid, text *sku, int32 slotno,
					int64 qty, TupleTableSlot *row)
{
	ItemPointerData cur = *tid;

	for (;;)
	{
		TM_FailureData tmfd;
		TM_Result	res;

		/*
		 * Without TUPLE_LOCK_FLAG_FIND_LAST_VERSION this locks the version
		 * at cur only if nobody has updated it, so the row locked holds
		 * what was judged (the scan judged the first one).
		 */
		res = table_tuple_lock(call->rel, &cur, call->snapshot, row,
							   GetCurrentCommandId(false),
							   LockTupleNoKeyExclusive, LockWaitSkip, 0,
							   &tmfd);
		switch (res)
		{
			case TM_Ok:
				Assert(slot_units(row) >= qty && slot_is(row, sku, slotno));
				return true;
			case TM_WouldBlock:
				return false;
			case TM_Updated:
				if (IsolationUsesXactSnapshot())
					ereport(ERROR,
							(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
							 errmsg("could not serialize access due to concurrent update")));
				/* the updater committed: judge its version before locking it */
				cur = tmfd.ctid;
				if (!table_tuple_fetch_row_version(call->rel, &cur, SnapshotAny, row) ||
					slot_units(row) < qty || !slot_is(row, sku, slotno))
					return false;
				break;
			case TM_Deleted:
				if (IsolationUsesXactSnapshot())
					ereport(ERROR,
							(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
							 errmsg("could not serialize access due to concurrent delete")));
				return false;
			default:

				/*
				 * TM_SelfModified and TM_Invisible cannot happen, as in
				 * lock_latest.
				 */
				elog(ERROR, "unexpected table_tuple_lock status %d in relation \"%s\"",
					 (int) res, RelationGetRelationName(call->rel));
		}
	}
}

/*
 * Lock, without waiting, a slot of the SKU that holds at least qty units:
 * slot number only (>= 0) if given, else any, tried in the order of
 * hashint4(slot # seed).  Leaves it in row; false if none could be locked.
 */
static bool
lock_free_slot(RowCall *call, text *sku, int64 qty, int32 only, int32 seed,
			   TupleTableSlot *row)
{
	ScanKeyData keys[2];
	int			nkeys = 1;
	IndexScanDesc scan;
	SlotCandidate *cand = NULL;
	int			ncand = 0;
	int			maxcand = 0;

	ScanKeyInit(&keys[0], 1, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(sku));
	if (only >= 0)
		ScanKeyInit(&keys[nkeys++], SLOT_ATT_SLOT, BTEqualStrategyNumber,
					F_INT4EQ, Int32GetDatum(only));

	scan = index_beginscan(call->rel, call->pkey, call->snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	while (index_getnext_slot(scan, ForwardScanDirection, row))
	{
		bool		isnull;
		int32		slotno;

		if (slot_units(row) < qty)
			continue;
		if (ncand == maxcand)
		{
			maxcand = Max(8, maxcand * 2);
			cand = cand == NULL ? palloc(sizeof(SlotCandidate) * maxcand) :
				repalloc(cand, sizeof(SlotCandidate) * maxcand);
		}
		slotno = DatumGetInt32(slot_getattr(row, SLOT_ATT_SLOT, &isnull));
		cand[ncand].tid = row->tts_tid;
		cand[ncand].slot = slotno;
		cand[ncand].order = DatumGetInt32(DirectFunctionCall1(hashint4,
															  Int32GetDatum(slotno ^ seed)));
		ncand++;
	}
	index_endscan(scan);

	if (ncand > 1)
		qsort(cand, ncand, sizeof(SlotCandidate), compare_candidates);
	for (int i = 0; i < ncand; i++)
		if (lock_slot_if_enough(call, &cand[i].tid, sku, cand[i].slot, qty, row))
			return true;
	return false;
}

/*
 * Take qty units from a slot of the SKU that can be locked at once and has
 * enough: slot number hint first if hint >= 0 (a one-row lookup), then any
 * (see lock_free_slot).  Returns the slot's number, or -1 if there was
 * none.
 */
int32
payments_take_units(text *sku, int64 qty, int32 hint, int32 seed)
{
	static const AttrNumber written[] = {SLOT_ATT_AVAIL};
	RowCall		call;
	TupleTableSlot *row;
	int32		taken = -1;

	call_begin(&call, PAYMENTS_REL_STOCK_SLOTS, slots_names, slots_types, SLOTS_NATTS,
			   2, CMD_UPDATE, written, lengthof(written));
	row = payments_direct_table_slot(&call.dw);
	if ((hint >= 0 && lock_free_slot(&call, sku, qty, hint, seed, row)) ||
		lock_free_slot(&call, sku, qty, -1, seed, row))
	{
		Datum		units = Int64GetDatum(slot_units(row) - qty);
		bool		notnull = false;
		bool		isnull;

		taken = DatumGetInt32(slot_getattr(row, SLOT_ATT_SLOT, &isnull));
		payments_direct_update(&call.dw, row, &units, &notnull);
	}
	call_end(&call);
	return taken;
}

/*
 * Insert a hold of qty units of the SKU for the order, expiring ttl from
 * now; returns its id.  The caller has taken the units.
 */
int64
payments_insert_hold(text *order_ref, text *sku, int64 qty, Datum ttl)
{
	RowCall		call;
	TupleTableSlot *row;
	int64		id;

	call_begin(&call, PAYMENTS_REL_RESERVATIONS, holds_names, holds_types, HOLDS_NATTS,
			   1, CMD_INSERT, NULL, 0);
	row = payments_direct_slot(&call.dw);
	id = nextval_internal(payments_relation(PAYMENTS_REL_RESERVATIONS_ID_SEQ), false);
	memset(row->tts_isnull, false, sizeof(bool) * HOLDS_NATTS);
	row->tts_values[0] = Int64GetDatum(id);
	row->tts_values[1] = PointerGetDatum(order_ref);
	row->tts_values[2] = PointerGetDatum(sku);
	row->tts_values[3] = Int64GetDatum(qty);
	row->tts_values[4] = CStringGetTextDatum("held");
	row->tts_values[5] = DirectFunctionCall2(timestamptz_pl_interval,
											 TimestampTzGetDatum(GetCurrentTimestamp()),
											 ttl);
	row->tts_values[6] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	row->tts_isnull[7] = true;
	ExecStoreVirtualTuple(row);
	ExecSimpleRelationInsert(call.dw.rri, call.dw.estate, row);
	call_end(&call);
	return id;
}

/* The first letter of the state of the hold in row */
static char
hold_state(TupleTableSlot *row)
{
	bool		isnull;
	text	   *state = DatumGetTextPP(slot_getattr(row, HOLD_ATT_STATE, &isnull));

	return VARSIZE_ANY_EXHDR(state) > 0 ? *VARDATA_ANY(state) : '\0';
}

static bool
hold_lapsed(TupleTableSlot *row)
{
	bool		isnull;

	return DatumGetTimestampTz(slot_getattr(row, HOLD_ATT_EXPIRES, &isnull)) <=
		GetCurrentTimestamp();
}

/*
 * Confirm reservation id if it is a live hold: "UPDATE payments.reservations
 * SET state = 'confirmed', resolved_at = clock_timestamp() WHERE id = $1
 * AND state = 'held' AND expires_at > clock_timestamp()".  Returns what it
 * found: 'h' (a live hold, now confirmed), 'c', 'r' or 'e' (its final
 * state), 'L' (a hold past its TTL), or '\0' (no such reservation).
 */
char
payments_confirm_hold(int64 id)
{
	static const AttrNumber written[] = {HOLD_ATT_STATE, HOLD_ATT_RESOLVED};
	RowCall		call;
	TupleTableSlot *row;
	ScanKeyData key;
	IndexScanDesc scan;
	bool		found;
	char		state = '\0';

	call_begin(&call, PAYMENTS_REL_RESERVATIONS, holds_names, holds_types, HOLDS_NATTS,
			   1, CMD_UPDATE, written, lengthof(written));
	row = payments_direct_table_slot(&call.dw);

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, Int64GetDatum(id));
	scan = index_beginscan(call.rel, call.pkey, call.snapshot, 1, 0);
	index_rescan(scan, &key, 1, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, row);
	index_endscan(scan);

	/*
	 * Only a live hold can still be confirmed, so only it is locked:
	 * confirmed, released and expired are final, and so is a hold past its
	 * TTL, which is refused at once even while an expiry of it is in
	 * progress.
	 */
	if (found && hold_state(row) == 'h' && !hold_lapsed(row))
	{
		ItemPointerData tid = row->tts_tid;

		found = (lock_latest(&call, &tid, row, LockWaitBlock) == ROW_LOCKED);
	}
	if (found)
	{
		state = hold_state(row);
		if (state == 'h' && hold_lapsed(row))
			state = 'L';
	}
	if (state == 'h')
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = CStringGetTextDatum("confirmed");	/* state */
		values[1] = TimestampTzGetDatum(GetCurrentTimestamp());	/* resolved_at */
		payments_direct_update(&call.dw, row, values, nulls);
	}
	call_end(&call);
	return state;
}
