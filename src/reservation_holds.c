/*-------------------------------------------------------------------------
 *
 * reservation_holds.c
 *	  A hold's life, one payments.reservations row: reserved, then
 *	  confirmed, released, or expired when its TTL has run out.
 *
 * A reserve and a confirm run for every sale, so their rows are written
 * without SQL (reservation_tables.c); the rest runs SPI statements with
 * plans kept for the backend's lifetime.  A hold is confirmed in one
 * place, confirm_hold, for confirm_reservation and confirm_order alike.
 * The states are stored as the names in hold_state_names; the lock order
 * these functions keep is described in reservation.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reservation.h"
#include "citus_shards.h"
#include "extension_catalog.h"
#include "fault.h"
#include "spi_util.h"
#include "worker.h"

#include "access/genam.h"
#include "access/stratnum.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/timestamp.h"

/* payments.reservations.state of each stored HoldState */
static const char *const hold_state_names[] = {
	[HOLD_HELD] = "held",
	[HOLD_CONFIRMED] = "confirmed",
	[HOLD_RELEASED] = "released",
	[HOLD_EXPIRED] = "expired",
};

/* A row of payments.reservations as the order functions lock it */
typedef struct HoldRow
{
	int64		id;
	text	   *sku;
	int64		qty;
	HoldState	state;
} HoldRow;

/* Plans kept for the backend's lifetime; see spi_util.c */
static SPIPlanPtr reclaim_plan;
static SPIPlanPtr held_plan;
static SPIPlanPtr release_one_plan;
static SPIPlanPtr lookup_plan;
static SPIPlanPtr lock_order_plan;
static SPIPlanPtr resolve_plan;
static SPIPlanPtr due_plan;

/* The HoldState a stored state names; refuses a value the extension never writes */
static HoldState
hold_state_of(text *stored)
{
	int			len = VARSIZE_ANY_EXHDR(stored);

	for (int i = 0; i < lengthof(hold_state_names); i++)
		if (strlen(hold_state_names[i]) == len &&
			memcmp(hold_state_names[i], VARDATA_ANY(stored), len) == 0)
			return (HoldState) i;
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("invalid reservation state \"%s\"", text_to_cstring(stored)),
			 errdetail("A reservation is held, confirmed, released or expired.")));
	return HOLD_NONE;			/* keep the compiler quiet */
}

static Datum
hold_state_datum(HoldState state)
{
	Assert(state >= HOLD_HELD && state <= HOLD_EXPIRED);
	return CStringGetTextDatum(hold_state_names[state]);
}

void
payments_report_unknown_reservation(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_NOT_FOUND),
			 errmsg("reservation %lld does not exist", (long long) id)));
}

static void
report_released(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
			 errmsg("reservation %lld was released", (long long) id),
			 errdetail("Its stock has been given back; a released hold cannot be confirmed."),
			 errhint("Reserve the stock again.")));
}

static void
report_expired(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
			 errmsg("reservation %lld has expired", (long long) id),
			 errdetail("Its TTL ran out; its stock no longer belongs to the order."),
			 errhint("Reserve the stock again.")));
}

static void
report_confirmed(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_STATE_CONFLICT),
			 errmsg("cannot release reservation %lld", (long long) id),
			 errdetail("It has been confirmed; its stock is sold.")));
}

static void
report_order_expired(text *order_ref, int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
			 errmsg("order \"%s\" has an expired reservation",
					text_to_cstring(order_ref)),
			 errdetail("The TTL of reservation %lld ran out; its stock no longer belongs to the order.",
					   (long long) id),
			 errhint("Release the order and reserve it again.")));
}

void
payments_report_order_unknown(text *order_ref)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_NOT_FOUND),
			 errmsg("order \"%s\" has no reservations", text_to_cstring(order_ref))));
}

void
payments_report_order_released(text *order_ref)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
			 errmsg("order \"%s\" was released", text_to_cstring(order_ref)),
			 errdetail("All its reservations have been released; their stock has been given back."),
			 errhint("Reserve the stock again.")));
}

void
payments_report_order_confirmed(text *order_ref, int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_STATE_CONFLICT),
			 errmsg("cannot release order \"%s\"", text_to_cstring(order_ref)),
			 errdetail("Reservation %lld has been confirmed; its stock is sold.",
					   (long long) id)));
}

/*
 * Insert a hold of qty units of the SKU for the order, expiring ttl from
 * now; returns its id.  The caller has taken the units.
 */
static int64
insert_hold(text *order_ref, text *sku, int64 qty, Datum ttl)
{
	RowCall		call;
	TupleTableSlot *row;
	int64		id;

	reservation_call_begin(&call, RESERVATION_TABLE_RESERVATIONS, CMD_INSERT,
						   NULL, 0);
	row = payments_direct_slot(&call.dw);
	id = payments_shard_unique_id(nextval_internal(payments_relation(PAYMENTS_REL_RESERVATIONS_ID_SEQ),
												   false));
	memset(row->tts_isnull, false, sizeof(bool) * HOLDS_NATTS);
	row->tts_values[HOLD_ATT_ID - 1] = Int64GetDatum(id);
	row->tts_values[HOLD_ATT_ORDER_REF - 1] = PointerGetDatum(order_ref);
	row->tts_values[HOLD_ATT_SKU - 1] = PointerGetDatum(sku);
	row->tts_values[HOLD_ATT_QTY - 1] = Int64GetDatum(qty);
	row->tts_values[HOLD_ATT_STATE - 1] = hold_state_datum(HOLD_HELD);
	row->tts_values[HOLD_ATT_EXPIRES - 1] =
		DirectFunctionCall2(timestamptz_pl_interval,
							TimestampTzGetDatum(GetCurrentTimestamp()), ttl);
	payments_worker_due_at_commit(DatumGetTimestampTz(row->tts_values[HOLD_ATT_EXPIRES - 1]));
	row->tts_values[HOLD_ATT_CREATED - 1] =
		TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	row->tts_isnull[HOLD_ATT_RESOLVED - 1] = true;
	ExecStoreVirtualTuple(row);
	ExecSimpleRelationInsert(call.dw.rri, call.dw.estate, row);
	reservation_call_end(&call);
	return id;
}

/*
 * Hold qty units of one SKU for the order; returns the reservation id.
 * fn_oid is the reserve function called, whose owner runs the slow path.
 */
int64
payments_hold_reserve(Oid fn_oid, text *order_ref, text *sku, int64 qty,
					  Datum ttl)
{
	payments_slots_take(fn_oid, sku, qty);
	(void) PAYMENTS_FAULT(FAULT_RESERVE_AFTER_TAKE);
	return insert_hold(order_ref, sku, qty, ttl);
}

/* The state of the hold in row, HOLD_LAPSED for a hold past its TTL */
static HoldState
hold_state(TupleTableSlot *row)
{
	bool		isnull;
	HoldState	state;

	state = hold_state_of(DatumGetTextPP(slot_getattr(row, HOLD_ATT_STATE, &isnull)));
	if (state == HOLD_HELD &&
		DatumGetTimestampTz(slot_getattr(row, HOLD_ATT_EXPIRES, &isnull)) <=
		GetCurrentTimestamp())
		return HOLD_LAPSED;
	return state;
}

/*
 * Confirm reservation id if it is a live hold, as "UPDATE
 * payments.reservations SET state = 'confirmed', resolved_at =
 * clock_timestamp() WHERE id = $1 AND state = 'held' AND expires_at >
 * clock_timestamp()" would.  Returns what it found: HOLD_HELD (a live
 * hold, now confirmed), the final state of a hold that is not, or
 * HOLD_NONE.  Two confirms of one hold are serialized by its row lock.
 */
static HoldState
confirm_hold(int64 id, text *sku)
{
	static const AttrNumber written[] = {HOLD_ATT_STATE, HOLD_ATT_RESOLVED};
	RowCall		call;
	TupleTableSlot *row;
	ScanKeyData keys[2];
	int			nkeys = 0;
	IndexScanDesc scan;
	bool		found;
	bool		isnull;
	HoldState	state = HOLD_NONE;

	reservation_call_begin(&call, RESERVATION_TABLE_RESERVATIONS, CMD_UPDATE,
						   written, lengthof(written));
	row = payments_direct_table_slot(&call.dw);

	/*
	 * The key's columns are numbered as in the index: (id), or (sku, id)
	 * once distributed (reservation_tables.c checked which).
	 */
	if (IndexRelationGetNumberOfKeyAttributes(call.pkey) == 2)
	{
		if (sku == NULL)
			elog(ERROR, "a hold of a distributed table needs its SKU");
		ScanKeyInit(&keys[nkeys++], 1, BTEqualStrategyNumber, F_TEXTEQ,
					PointerGetDatum(sku));
	}
	ScanKeyInit(&keys[nkeys], nkeys + 1, BTEqualStrategyNumber, F_INT8EQ,
				Int64GetDatum(id));
	nkeys++;
	scan = index_beginscan(call.rel, call.pkey, call.snapshot, nkeys, 0);
	index_rescan(scan, keys, nkeys, NULL, 0);
	found = index_getnext_slot(scan, ForwardScanDirection, row);
	index_endscan(scan);

	/* a hold of another SKU is not the one the caller named */
	if (found && sku != NULL &&
		reservation_compare_sku(DatumGetTextPP(slot_getattr(row, HOLD_ATT_SKU, &isnull)),
								sku) != 0)
		found = false;

	/*
	 * Only a live hold can still be confirmed, so only it is locked:
	 * confirmed, released and expired are final, and so is a hold past its
	 * TTL, which is refused at once even while an expiry of it is in
	 * progress.
	 */
	if (found && hold_state(row) == HOLD_HELD)
	{
		ItemPointerData tid = row->tts_tid;

		found = (reservation_lock_latest(&call, &tid, row, LockWaitBlock) == ROW_LOCKED);
	}
	if (found)
		state = hold_state(row);
	if (state == HOLD_HELD)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		(void) PAYMENTS_FAULT(FAULT_RESERVATION_CONFIRM);
		values[0] = hold_state_datum(HOLD_CONFIRMED);	/* state */
		values[1] = TimestampTzGetDatum(GetCurrentTimestamp());	/* resolved_at */
		payments_direct_update(&call.dw, row, values, nulls);
	}
	reservation_call_end(&call);
	return state;
}

/*
 * confirm_reservation: true if the hold is now a sale, false if it was
 * confirmed before.  A hold that was released, expired, or is past its TTL
 * cannot be confirmed (PM102).
 */
bool
payments_hold_confirm(int64 id, text *sku)
{
	switch (confirm_hold(id, sku))
	{
		case HOLD_HELD:
			return true;
		case HOLD_CONFIRMED:
			return false;
		case HOLD_RELEASED:
			report_released(id);
			break;
		case HOLD_EXPIRED:
		case HOLD_LAPSED:
			report_expired(id);
			break;
		case HOLD_NONE:
			payments_report_unknown_reservation(id);
			break;
	}
	return false;				/* keep the compiler quiet */
}

/*
 * Read a reservation's state after an UPDATE of it found nothing to do;
 * HOLD_LAPSED for a hold past its TTL.  The caller is connected to SPI.
 */
static HoldState
lookup_state(int64 id, text *sku)
{
	static const Oid argtypes[] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(id), PointerGetDatum(sku)};
	const char	nulls[2] = {' ', sku ? ' ' : 'n'};
	HeapTuple	tup;
	bool		isnull;
	HoldState	state;

	payments_prepare(&lookup_plan,
					 "SELECT state, expires_at <= pg_catalog.clock_timestamp()"
					 " FROM @extschema@.reservations"
					 " WHERE id = $1 AND ($2 IS NULL OR sku = $2)",
					 2, argtypes);
	if (payments_execute(lookup_plan, values, nulls, SPI_OK_SELECT, 0) == 0)
		payments_report_unknown_reservation(id);
	tup = SPI_tuptable->vals[0];
	state = hold_state_of(DatumGetTextPP(SPI_getbinval(tup, SPI_tuptable->tupdesc,
													   1, &isnull)));
	if (state == HOLD_HELD &&
		DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
		return HOLD_LAPSED;
	return state;
}

/*
 * release_reservation: true if the stock is back, false if the hold was
 * released or expired before.  A confirmed hold cannot be released
 * (PM104).  A hold past its TTL that nothing has expired yet is released.
 */
bool
payments_hold_release(int64 id, text *sku)
{
	static const Oid argtypes[] = {INT8OID, TEXTOID};
	Datum		values[2] = {Int64GetDatum(id), PointerGetDatum(sku)};
	const char	nulls[2] = {' ', sku ? ' ' : 'n'};
	bool		result;

	SPI_connect();
	payments_prepare(&release_one_plan,
					 "UPDATE @extschema@.reservations"
					 " SET state = 'released', resolved_at = pg_catalog.clock_timestamp()"
					 " WHERE id = $1 AND ($2 IS NULL OR sku = $2) AND state = 'held'"
					 " RETURNING sku, qty",
					 2, argtypes);
	for (;;)
	{
		HoldState	state;

		if (payments_execute(release_one_plan, values, nulls,
							 SPI_OK_UPDATE_RETURNING, 0) == 1)
		{
			bool		isnull;
			text	   *sku = DatumGetTextPCopy(SPI_getbinval(SPI_tuptable->vals[0],
															 SPI_tuptable->tupdesc,
															 1, &isnull));
			int64		qty = reservation_spi_int64(2);

			payments_slots_put_back(sku, qty, true);
			result = true;
			break;
		}

		/*
		 * The UPDATE found no held row.  A hold committed after its
		 * snapshot still reads as held here, so it is tried again.
		 */
		state = lookup_state(id, sku);
		if (state == HOLD_CONFIRMED)
			report_confirmed(id);
		if (state == HOLD_RELEASED || state == HOLD_EXPIRED)
		{
			result = false;
			break;
		}
	}
	SPI_finish();
	return result;
}

/* Read the id, sku and qty of a hold (columns 1 to 3 of tup). */
static void
read_hold(HeapTuple tup, TupleDesc desc, HoldRow *row)
{
	bool		isnull;

	row->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
	row->sku = DatumGetTextPCopy(SPI_getbinval(tup, desc, 2, &isnull));
	row->qty = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
}

static int
compare_rows_by_sku(const void *a, const void *b)
{
	return reservation_compare_sku(((const HoldRow *) a)->sku,
								   ((const HoldRow *) b)->sku);
}

/*
 * The end of the run of rows that share rows[start]'s SKU, in rows sorted
 * by SKU: the caller gives each SKU's stock back in one go, in lock order.
 */
static int
sku_run_end(const HoldRow *rows, int n, int start)
{
	int			end = start;

	while (end < n && reservation_compare_sku(rows[end].sku, rows[start].sku) == 0)
		end++;
	return end;
}

/*
 * Lock every reservation of the order, in id order, and read them into
 * palloc'd rows (in the SPI context).  Returns how many.
 */
static int
lock_order(text *order_ref, HoldRow **rows)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(order_ref)};
	uint64		n;
	HoldRow    *r;

	payments_prepare(&lock_order_plan,
					 "SELECT id, sku, qty, state,"
					 " state = 'held' AND expires_at <= pg_catalog.clock_timestamp()"
					 " FROM @extschema@.reservations WHERE order_ref = $1"
					 " ORDER BY id FOR UPDATE",
					 1, argtypes);
	n = payments_execute(lock_order_plan, values, NULL, SPI_OK_SELECT, 0);
	if (n == 0)
		payments_report_order_unknown(order_ref);

	r = palloc(sizeof(HoldRow) * n);
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		read_hold(tup, desc, &r[i]);
		r[i].state = hold_state_of(DatumGetTextPP(SPI_getbinval(tup, desc, 4, &isnull)));
		if (DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull)))
			r[i].state = HOLD_LAPSED;
	}
	*rows = r;
	return (int) n;
}

/* Resolve the holds whose ids are given: state is released or expired. */
static uint64
resolve_holds(Datum *ids, int n, HoldState state)
{
	static const Oid argtypes[] = {INT8ARRAYOID, TEXTOID};
	Datum		values[2];

	payments_prepare(&resolve_plan,
					 "UPDATE @extschema@.reservations"
					 " SET state = $2, resolved_at = pg_catalog.clock_timestamp()"
					 " WHERE id = ANY ($1) AND state = 'held'",
					 2, argtypes);
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = hold_state_datum(state);
	return payments_execute(resolve_plan, values, NULL, SPI_OK_UPDATE, 0);
}

/*
 * confirm_order: confirms every live hold of the order and returns how
 * many.  An order with a hold that expired is refused as a whole (PM102):
 * confirming the rest would sell an incomplete order.  Released holds are
 * left alone; an order with nothing but released holds is refused too.  0
 * means the order was confirmed before.
 */
int
payments_order_confirm(text *order_ref)
{
	HoldRow    *rows;
	int			n;
	int64	   *ids;
	int			nheld = 0;
	bool		any_confirmed = false;

	SPI_connect();
	n = lock_order(order_ref, &rows);
	ids = palloc(sizeof(int64) * n);
	for (int i = 0; i < n; i++)
	{
		if (rows[i].state == HOLD_EXPIRED || rows[i].state == HOLD_LAPSED)
			report_order_expired(order_ref, rows[i].id);
		if (rows[i].state == HOLD_HELD)
			ids[nheld++] = rows[i].id;
		else if (rows[i].state == HOLD_CONFIRMED)
			any_confirmed = true;
	}
	if (nheld == 0 && !any_confirmed)
		payments_report_order_released(order_ref);

	/* every row is locked, so a hold can only have run past its TTL since */
	for (int i = 0; i < nheld; i++)
	{
		HoldState	found = confirm_hold(ids[i], NULL);

		if (found == HOLD_LAPSED)
			report_order_expired(order_ref, ids[i]);
		if (found != HOLD_HELD)
			elog(ERROR, "reservations of order \"%s\" changed while locked",
				 text_to_cstring(order_ref));
	}
	SPI_finish();
	return nheld;
}

/*
 * release_order: releases every hold of the order, lapsed or not, and
 * returns how many.  An order with a confirmed hold is refused as a whole
 * (PM104).
 */
int
payments_order_release(text *order_ref)
{
	HoldRow    *rows;
	int			n;
	Datum	   *ids;
	int			nheld = 0;

	SPI_connect();
	n = lock_order(order_ref, &rows);
	for (int i = 0; i < n; i++)
		if (rows[i].state == HOLD_CONFIRMED)
			payments_report_order_confirmed(order_ref, rows[i].id);

	/* give the stock back SKU by SKU, in the one lock order */
	qsort(rows, n, sizeof(HoldRow), compare_rows_by_sku);
	ids = palloc(sizeof(Datum) * n);
	for (int i = 0, end; i < n; i = end)
	{
		int64		qty = 0;

		end = sku_run_end(rows, n, i);
		for (int j = i; j < end; j++)
			if (rows[j].state == HOLD_HELD || rows[j].state == HOLD_LAPSED)
			{
				qty += rows[j].qty;
				ids[nheld++] = Int64GetDatum(rows[j].id);
			}
		if (qty > 0)
			payments_slots_put_back(rows[i].sku, qty, true);
	}
	if (nheld > 0 && resolve_holds(ids, nheld, HOLD_RELEASED) != nheld)
		elog(ERROR, "reservations of order \"%s\" changed while locked",
			 text_to_cstring(order_ref));
	SPI_finish();
	return nheld;
}

/*
 * expire_reservations: gives back the stock of up to max_rows holds past
 * their TTL, oldest first, and returns how many it expired.  It never
 * waits: holds locked by a confirm or release in progress, and holds of a
 * SKU whose slots are all busy, are left for the next run (a reserve that
 * finds the stock short reclaims them itself meanwhile).
 */
int
payments_holds_expire(int32 max_rows)
{
	static const Oid argtypes[] = {INT4OID, TIMESTAMPTZOID};
	Datum		values[2] = {Int32GetDatum(max_rows),
	TimestampTzGetDatum(GetCurrentTimestamp())};
	uint64		n;
	HoldRow    *rows;
	Datum	   *ids;
	int			nexpired = 0;

	SPI_connect();
	payments_prepare(&due_plan,
					 "SELECT id, sku, qty FROM @extschema@.reservations"
					 " WHERE state = 'held' AND expires_at <= $2"
					 " ORDER BY expires_at LIMIT $1"
					 " FOR UPDATE SKIP LOCKED",
					 2, argtypes);
	n = payments_execute(due_plan, values, NULL, SPI_OK_SELECT, 0);
	if (n == 0)
	{
		SPI_finish();
		return 0;
	}

	rows = palloc(sizeof(HoldRow) * n);
	for (uint64 i = 0; i < n; i++)
		read_hold(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &rows[i]);
	(void) PAYMENTS_FAULT(FAULT_RESERVATION_EXPIRE_BATCH);

	qsort(rows, n, sizeof(HoldRow), compare_rows_by_sku);
	ids = palloc(sizeof(Datum) * n);
	for (int i = 0, end; i < (int) n; i = end)
	{
		int64		qty = 0;

		end = sku_run_end(rows, (int) n, i);
		for (int j = i; j < end; j++)
			qty += rows[j].qty;
		if (payments_slots_put_back(rows[i].sku, qty, false))
			for (int j = i; j < end; j++)
				ids[nexpired++] = Int64GetDatum(rows[j].id);
	}
	if (nexpired > 0 && resolve_holds(ids, nexpired, HOLD_EXPIRED) != nexpired)
		elog(ERROR, "expiring reservations changed while locked");
	SPI_finish();
	return nexpired;
}

/* Run sql, a query of one bigint about the SKU $1, and return its result */
static int64
sku_query(SPIPlanPtr *plan, const char *sql, text *sku)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(sku)};

	payments_execute(payments_prepare(plan, sql, 1, argtypes), values, NULL,
					 SPI_OK_SELECT, 0);
	return reservation_spi_int64(1);
}

/*
 * Mark the SKU's holds that are past their TTL 'expired' and return their
 * units, which the caller (holding all the SKU's slots) puts back.  Holds
 * locked by a confirm or release in progress are skipped, not waited for.
 * The caller is connected to SPI.
 */
int64
payments_holds_reclaim_lapsed(text *sku)
{
	return sku_query(&reclaim_plan,
					 "WITH x AS ("
					 " UPDATE @extschema@.reservations"
					 " SET state = 'expired', resolved_at = pg_catalog.clock_timestamp()"
					 " WHERE id IN (SELECT id FROM @extschema@.reservations"
					 "  WHERE sku = $1 AND state = 'held'"
					 "  AND expires_at <= pg_catalog.clock_timestamp()"
					 "  FOR UPDATE SKIP LOCKED)"
					 " AND state = 'held'"
					 " RETURNING qty)"
					 " SELECT coalesce(sum(qty), 0)::bigint FROM x",
					 sku);
}

/*
 * Units of the SKU in 'held' rows, lapsed or not.  The caller is connected
 * to SPI.
 */
int64
payments_holds_held_units(text *sku)
{
	return sku_query(&held_plan,
					 "SELECT coalesce(sum(qty), 0)::bigint FROM @extschema@.reservations"
					 " WHERE sku = $1 AND state = 'held'",
					 sku);
}
