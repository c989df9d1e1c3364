/*-------------------------------------------------------------------------
 *
 * reservation_slots.c
 *	  A SKU's stock slots: which slot a reserve takes units from and a
 *	  release gives them back to, the slow path of a reserve, and
 *	  stock_set and stock_adjust, which rewrite all of a SKU's slots.
 *
 * The slot choice is written once, in move_units: a slot that can be
 * locked at once and holds enough units, tried in an order that depends
 * on the backend's PID, so that concurrent backends settle on different
 * rows.  The storage, the slow path and the lock order these functions
 * keep are described in reservation.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reservation.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/* Plans kept for the backend's lifetime; see spi_util.c */
static SPIPlanPtr shortfall_plan;
static SPIPlanPtr lock_stock_plan;
static SPIPlanPtr lock_slots_plan;
static SPIPlanPtr spread_plan;
static SPIPlanPtr trim_plan;
static SPIPlanPtr upsert_stock_plan;
static SPIPlanPtr received_plan;

/*
 * The slot this backend last took units from, and its SKU.  A backend
 * tries that slot first, with a one-row lookup: concurrent backends thus
 * settle on different slots, and the common case skips reading and
 * ordering all of a hot SKU's slots.  It is only a hint: a stale entry
 * (another SKU, a slot that is busy, empty or gone) just costs the lookup.
 */
static char last_sku[RESERVATION_SKU_MAX_BYTES];
static int	last_sku_len = -1;
static int32 last_slot;

void
payments_report_unknown_sku(text *sku)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_NOT_FOUND),
			 errmsg("SKU \"%s\" does not exist", text_to_cstring(sku)),
			 errhint("Create it with payments.stock_set.")));
}

static void
report_short(text *sku, int64 requested, int64 available)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_INSUFFICIENT_STOCK),
			 errmsg("not enough stock of SKU \"%s\"", text_to_cstring(sku)),
			 errdetail("The requested quantity is %lld and the available quantity is %lld.",
					   (long long) requested, (long long) available)));
}

static void
report_below_held(text *sku, int64 on_hand, int64 held)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_STOCK_BELOW_HELD),
			 errmsg("on-hand stock of SKU \"%s\" cannot be less than what is held",
					text_to_cstring(sku)),
			 errdetail_plural("On hand would be %lld, but %lld unit is held.",
							  "On hand would be %lld, but %lld units are held.",
							  (unsigned long) held,
							  (long long) on_hand, (long long) held)));
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
	text	   *rsku = DatumGetTextPP(slot_getattr(row, SLOT_ATT_SKU, &isnull));

	return DatumGetInt32(slot_getattr(row, SLOT_ATT_SLOT, &isnull)) == slotno &&
		VARSIZE_ANY_EXHDR(rsku) == VARSIZE_ANY_EXHDR(sku) &&
		memcmp(VARDATA_ANY(rsku), VARDATA_ANY(sku), VARSIZE_ANY_EXHDR(sku)) == 0;
}

/* A slot that may serve a call, and where it stands in the try order */
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
 * version is at tid, if that version still holds at least need units;
 * leave it in row.  Returns false, having locked nothing, if the slot is
 * busy, gone, or no longer has enough.
 *
 * Unlike SKIP LOCKED in SQL (and reservation_lock_latest), which locks the
 * latest version first and judges it after, this judges a version before
 * locking it: a version committed since the snapshot is read, judged
 * again on every condition of the scan (as EvalPlanQual would), and locked
 * only if it still qualifies, and then only if it is still the latest.  So
 * a slot locked without waiting is a slot the call moves units to or from,
 * which is the lock order's premise (reservation.c): a row lock cannot be
 * given back before the transaction ends, and a reserve that kept a slot
 * it could not use and went on to wait for the SKU's stock row would
 * close a cycle with the holder of that row waiting for the slot.
 */
static bool
lock_slot_if_enough(RowCall *call, ItemPointer tid, text *sku, int32 slotno,
					int64 need, TupleTableSlot *row)
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
				Assert(slot_units(row) >= need && slot_is(row, sku, slotno));
				return true;
			case TM_WouldBlock:
				return false;
			case TM_Updated:
				if (IsolationUsesXactSnapshot())
					reservation_report_concurrent_update();
				/* the updater committed: judge its version before locking it */
				cur = tmfd.ctid;
				if (!table_tuple_fetch_row_version(call->rel, &cur, SnapshotAny, row) ||
					slot_units(row) < need || !slot_is(row, sku, slotno))
					return false;
				break;
			case TM_Deleted:
				if (IsolationUsesXactSnapshot())
					reservation_report_concurrent_delete();
				return false;
			default:

				/*
				 * TM_SelfModified and TM_Invisible cannot happen, as in
				 * reservation_lock_latest.
				 */
				elog(ERROR, "unexpected table_tuple_lock status %d in relation \"%s\"",
					 (int) res, RelationGetRelationName(call->rel));
		}
	}
}

/*
 * Lock a slot of the SKU that holds at least need units: slot number only
 * if only >= 0, else any, tried in the order of hashint4(slot # PID).
 * Without wait, only a slot that can be locked at once will do, and a slot
 * that does not is left unlocked.  With wait, each slot in turn is waited
 * for and judged once locked, as FOR UPDATE would; the caller holds the
 * SKU's stock row (see the lock order in reservation.c).  Leaves the slot
 * in row; false if none qualified.
 */
static bool
lock_slot(RowCall *call, text *sku, int64 need, int32 only, bool wait,
		  TupleTableSlot *row)
{
	int32		seed = (int32) MyProcPid;
	ScanKeyData keys[2];
	int			nkeys = 1;
	IndexScanDesc scan;
	SlotCandidate *cand = NULL;
	int			ncand = 0;
	int			maxcand = 0;

	ScanKeyInit(&keys[0], SLOT_ATT_SKU, BTEqualStrategyNumber, F_TEXTEQ,
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

		if (slot_units(row) < need)
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
	{
		if (!wait)
		{
			if (lock_slot_if_enough(call, &cand[i].tid, sku, cand[i].slot,
									need, row))
				return true;
		}
		else if (reservation_lock_latest(call, &cand[i].tid, row,
										 LockWaitBlock) == ROW_LOCKED &&
				 slot_units(row) >= need && slot_is(row, sku, cand[i].slot))
			return true;
	}
	return false;
}

/*
 * Add delta units (negative to take them) to one slot of the SKU that
 * holds at least need units: slot number hint first if hint >= 0 (a
 * one-row lookup), then any (see lock_slot).  Returns the slot's number,
 * or -1 if no slot qualified.
 */
static int32
move_units(text *sku, int64 delta, int64 need, int32 hint, bool wait)
{
	static const AttrNumber written[] = {SLOT_ATT_AVAIL};
	RowCall		call;
	TupleTableSlot *row;
	int32		moved = -1;

	reservation_call_begin(&call, RESERVATION_TABLE_STOCK_SLOTS, CMD_UPDATE,
						   written, lengthof(written));
	row = payments_direct_table_slot(&call.dw);
	if ((hint >= 0 && lock_slot(&call, sku, need, hint, wait, row)) ||
		lock_slot(&call, sku, need, -1, wait, row))
	{
		Datum		units = Int64GetDatum(slot_units(row) + delta);
		bool		notnull = false;
		bool		isnull;

		moved = DatumGetInt32(slot_getattr(row, SLOT_ATT_SLOT, &isnull));
		payments_direct_update(&call.dw, row, &units, &notnull);
	}
	reservation_call_end(&call);
	return moved;
}

/*
 * Lock the SKU's payments.stock row; returns its number of slots.  Every
 * caller that may wait for the SKU's slots holds this lock first, so only
 * one transaction at a time waits for them.
 */
static int32
lock_stock(text *sku)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(sku)};
	bool		isnull;

	payments_prepare(&lock_stock_plan,
					 "SELECT slots FROM @extschema@.stock WHERE sku = $1 FOR UPDATE",
					 1, argtypes);
	if (payments_execute(lock_stock_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
		payments_report_unknown_sku(sku);
	return DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
									   SPI_tuptable->tupdesc, 1, &isnull));
}

/*
 * Lock every slot of the SKU, in slot order, and return the units they
 * hold.  The caller holds the SKU's stock row.
 */
static int64
lock_slots(text *sku, int32 *nslots)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(sku)};
	uint64		n;
	int64		total = 0;

	payments_prepare(&lock_slots_plan,
					 "SELECT available FROM @extschema@.stock_slots"
					 " WHERE sku = $1 ORDER BY slot FOR UPDATE",
					 1, argtypes);
	n = payments_execute(lock_slots_plan, values, NULL, SPI_OK_SELECT, 0);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		total += DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	*nslots = (int32) n;
	return total;
}

/* lock_slots, for a caller that knows how many slots the SKU has */
static int64
lock_all_slots(text *sku, int32 nslots)
{
	int32		nlocked;
	int64		total = lock_slots(sku, &nlocked);

	if (nlocked != nslots)
		elog(ERROR, "SKU \"%s\" has %d slot rows, expected %d",
			 text_to_cstring(sku), nlocked, nslots);
	return total;
}

/*
 * Count delta more units as received for the SKU (fewer if negative): what
 * payments.check() balances against the slots, the holds and the sales.
 * The caller holds the SKU's stock row.
 */
static void
add_received(text *sku, int64 delta)
{
	static const Oid argtypes[] = {TEXTOID, INT8OID};
	Datum		values[2];

	if (delta == 0)
		return;
	payments_prepare(&received_plan,
					 "UPDATE @extschema@.stock SET received = received + $2"
					 " WHERE sku = $1",
					 2, argtypes);
	values[0] = PointerGetDatum(sku);
	values[1] = Int64GetDatum(delta);
	payments_execute(received_plan, values, NULL, SPI_OK_UPDATE, 0);
}

/*
 * Write total units across slots 0 .. nslots - 1, evenly, creating missing
 * slots.  The caller holds the SKU's stock row and every slot.
 */
static void
spread_units(text *sku, int64 total, int32 nslots)
{
	static const Oid argtypes[] = {TEXTOID, INT8OID, INT4OID};
	Datum		values[3];

	payments_prepare(&spread_plan,
					 "INSERT INTO @extschema@.stock_slots AS s (sku, slot, available)"
					 " SELECT $1, g, $2 / $3 + (g < $2 % $3)::integer"
					 " FROM pg_catalog.generate_series(0, $3 - 1) AS g"
					 " ON CONFLICT (sku, slot) DO UPDATE"
					 " SET available = excluded.available"
					 " WHERE s.available <> excluded.available",
					 3, argtypes);
	values[0] = PointerGetDatum(sku);
	values[1] = Int64GetDatum(total);
	values[2] = Int32GetDatum(nslots);
	payments_execute(spread_plan, values, NULL, SPI_OK_INSERT, 0);
}

/*
 * The slow path of a reserve: no slot could be taken without waiting.
 * Fail at once if even the committed stock is short.  Otherwise lock the
 * SKU's stock row and try, in turn: a slot that has come free; waiting for
 * one slot that has enough units; and, when no single slot has enough,
 * locking every slot, reclaiming lapsed holds if the total is short, taking
 * qty and spreading the rest evenly so that later reserves find it in any
 * slot.  Only that last step blocks every slot of the SKU, so one slow
 * reserve does not push the concurrent ones onto the slow path too.
 */
static void
take_units_slow(text *sku, int64 qty)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(sku)};
	int32		nslots;
	int64		total;

	payments_prepare(&shortfall_plan,
					 "SELECT count(*),"
					 " coalesce(sum(available), 0)::bigint"
					 " + (SELECT coalesce(sum(qty), 0)::bigint FROM @extschema@.reservations"
					 "    WHERE sku = $1 AND state = 'held'"
					 "    AND expires_at <= pg_catalog.clock_timestamp())"
					 " FROM @extschema@.stock_slots WHERE sku = $1",
					 1, argtypes);
	payments_execute(shortfall_plan, values, NULL, SPI_OK_SELECT, 0);
	if (reservation_spi_int64(1) > 0 && reservation_spi_int64(2) < qty)
		report_short(sku, qty, reservation_spi_int64(2));

	nslots = lock_stock(sku);
	if (move_units(sku, -qty, qty, -1, false) >= 0 ||
		move_units(sku, -qty, qty, -1, true) >= 0)
		return;

	total = lock_all_slots(sku, nslots);
	if (total < qty)
		total += payments_holds_reclaim_lapsed(sku);
	if (total < qty)
		report_short(sku, qty, total);
	spread_units(sku, total - qty, nslots);
}

/*
 * Take qty units of the SKU for a reserve.  The hot path takes them from a
 * slot it can lock at once: the one this backend used last, then any.
 * Only if none can serve does it take the slow path, whose SQL runs as the
 * owner of fn_oid (the reserve function called) with search_path pinned,
 * as a SECURITY DEFINER function would: reserve itself is not one, so
 * that the hot path, which runs no SQL, does not pay for it.
 */
void
payments_slots_take(Oid fn_oid, text *sku, int64 qty)
{
	int			len = VARSIZE_ANY_EXHDR(sku);
	bool		same_sku = (last_sku_len == len &&
							memcmp(last_sku, VARDATA_ANY(sku), len) == 0);
	int32		slot;
	PaymentsSavedUser saved;

	slot = move_units(sku, -qty, qty, same_sku ? last_slot : -1, false);
	if (slot >= 0)
	{
		memcpy(last_sku, VARDATA_ANY(sku), len);
		last_sku_len = len;
		last_slot = slot;
		return;
	}

	payments_begin_as_owner(payments_function_owner(fn_oid), true, &saved);
	SPI_connect();
	take_units_slow(sku, qty);
	SPI_finish();
	payments_end_as_owner(&saved);
}

/*
 * Give qty units back to the SKU.  Any slot that can be locked without
 * waiting will do (need 0: every slot qualifies, so none is locked without
 * being used before this may wait for the stock row).  If all are busy and
 * wait is true, wait for one, holding the SKU's stock row first as the
 * lock order requires; if wait is false, return false and change nothing.
 * The caller is connected to SPI.
 */
bool
payments_slots_put_back(text *sku, int64 qty, bool wait)
{
	if (move_units(sku, qty, 0, -1, false) >= 0)
		return true;
	if (!wait)
		return false;

	(void) lock_stock(sku);
	if (move_units(sku, qty, 0, -1, true) < 0)
		elog(ERROR, "SKU \"%s\" has no slot rows", text_to_cstring(sku));
	return true;
}

/*
 * stock_set: make the SKU's on-hand stock on_hand, held units included,
 * across slots slots (-1: keep the SKU's number, 1 for a new SKU).  The
 * caller is connected to SPI.
 */
void
payments_stock_set_units(text *sku, int64 on_hand, int32 slots)
{
	static const Oid argtypes[] = {TEXTOID, INT4OID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	int32		nslots;
	int32		nlocked;
	int64		units;
	int64		held;
	int64		received_delta;
	bool		isnull;

	/* Create or lock the SKU's row; this also serializes two creators. */
	payments_prepare(&upsert_stock_plan,
					 "INSERT INTO @extschema@.stock AS s (sku, slots)"
					 " VALUES ($1, coalesce($2, 1))"
					 " ON CONFLICT (sku) DO UPDATE"
					 " SET slots = coalesce($2, s.slots), updated_at = now()"
					 " RETURNING slots",
					 2, argtypes);
	values[0] = PointerGetDatum(sku);
	values[1] = Int32GetDatum(slots);
	if (slots < 0)
		nulls[1] = 'n';
	payments_execute(upsert_stock_plan, values, nulls,
					 SPI_OK_INSERT_RETURNING, 0);
	nslots = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));

	units = lock_slots(sku, &nlocked);
	held = payments_holds_held_units(sku);
	/* on hand was the slots' units and every held unit, lapsed or not */
	received_delta = on_hand - (units + held);
	if (on_hand < held)
		held -= payments_holds_reclaim_lapsed(sku);
	if (on_hand < held)
		report_below_held(sku, on_hand, held);

	spread_units(sku, on_hand - held, nslots);
	if (nlocked > nslots)
	{
		payments_prepare(&trim_plan,
						 "DELETE FROM @extschema@.stock_slots WHERE sku = $1 AND slot >= $2",
						 2, argtypes);
		values[1] = Int32GetDatum(nslots);
		payments_execute(trim_plan, values, NULL, SPI_OK_DELETE, 0);
	}
	add_received(sku, received_delta);
}

/*
 * stock_adjust: add delta units to the SKU's on-hand stock and return the
 * new on-hand quantity.  The caller is connected to SPI.
 */
int64
payments_stock_adjust_units(text *sku, int64 delta)
{
	int32		nslots;
	int64		units;
	int64		held;

	nslots = lock_stock(sku);
	units = lock_all_slots(sku, nslots);
	if (units + delta < 0)
		units += payments_holds_reclaim_lapsed(sku);
	held = payments_holds_held_units(sku);
	if (units + delta < 0)
		report_below_held(sku, units + held + delta, held);
	if (units + held + delta > RESERVATION_STOCK_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("on-hand stock of SKU \"%s\" would exceed %lld",
						text_to_cstring(sku),
						(long long) RESERVATION_STOCK_MAX)));
	spread_units(sku, units + delta, nslots);
	add_received(sku, delta);
	return units + held + delta;
}
