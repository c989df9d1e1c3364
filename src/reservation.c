/*-------------------------------------------------------------------------
 *
 * reservation.c
 *	  Inventory reservations with TTL: holds that never oversell, even when
 *	  every buyer wants the same SKU.
 *
 * Storage.  A SKU's unreserved units live in payments.stock_slots, split
 * across its slot rows (1 to 1024, set by stock_set(..., slots => N)).
 * Held units live only in payments.reservations rows in state 'held'.  So
 * for every SKU, at every commit:
 *
 *		sum(slot.available) + held + sold = received
 *
 * where held and sold are the qty of its 'held' and 'confirmed' rows and
 * received is what stock_set and stock_adjust put in.  Every function moves
 * units between these terms in one transaction, and slot.available has a
 * CHECK (>= 0), so nothing is ever oversold and available is never
 * negative.  on_hand (not yet sold) is sum(slot.available) + held; the
 * stock_levels view computes it.
 *
 *	- reserve:	slot.available -= qty, insert a 'held' row
 *	- confirm:	'held' -> 'confirmed'; no slot is touched, so a confirm
 *				never queues behind reserves of the same SKU
 *	- release, expire:	'held' -> 'released' / 'expired', and qty goes back
 *				to any one slot of the SKU
 *	- stock_set, stock_adjust:	rewrite all slots of the SKU
 *
 * A reservation does not remember the slot it came from: units in slots are
 * interchangeable, which is what lets confirm stay off the slots and lets
 * release put stock back wherever it can lock a row.
 *
 * The hot path (reservation_rows.c, written without SQL: it runs for every
 * sale).  A reserve updates one slot that it can lock without waiting (as
 * FOR NO KEY UPDATE SKIP LOCKED would) and that has enough units: first
 * the slot this backend took from last time (a one-row lookup), then the
 * others in an order that depends on the backend's PID, so concurrent
 * buyers settle on different rows.  With at least as many slots as
 * concurrent buyers, it never waits.  Only when no slot can be taken that
 * way (all busy, the SKU nearly sold out, or the stock fragmented across
 * slots) does it take the slow path: lock the SKU's payments.stock row,
 * retry a free slot, then wait for one slot that has enough units, and
 * only if no single slot has enough lock all the SKU's slots in slot
 * order, reclaim holds past their TTL if the total is short, take the
 * units and spread what is left evenly across the slots again.  Units are
 * therefore never stranded: that last step sees them all.  Waiting for one
 * slot before locking them all matters: a reserve that held every slot
 * would push every concurrent reserve onto the slow path too.  Before all
 * this, a reserve for a SKU whose committed stock (counting lapsed holds)
 * is already short fails at once with PM101, so a sold-out SKU costs a
 * read, not a queue.
 *
 * Rights.  reserve and confirm_reservation are not SECURITY DEFINER: the
 * hot path runs no SQL and so needs no rights, and a SET search_path
 * clause would cost every call a scan of every setting.  The slow path
 * runs SQL, as the function's owner with search_path pinned
 * (reserve_slow), which is what SECURITY DEFINER SET search_path would do.
 *
 * Lock order, and why calls in their own transactions never deadlock.
 * Waiting happens only on (1) reservation rows, (2) a SKU's payments.stock
 * row, and (3) a SKU's slots.  Within one call, locks are waited for in
 * the order: reservation rows (by id), then per SKU in byte order its
 * stock row, then its slots.  Two rules make that one order across
 * transactions too:
 *
 *	- a transaction waits for a SKU's slots only while it holds that SKU's
 *	  stock row, so at most one transaction at a time waits for them;
 *	- a transaction that holds a slot without holding the SKU's stock row
 *	  locked it without waiting, took units from it or gave units to it,
 *	  and is done with that SKU: it never waits for that SKU's stock row
 *	  while holding one of its slots.
 *
 * A row lock cannot be given back before the transaction ends, so the
 * second rule needs every slot locked without waiting to be a slot the
 * call uses.  The hot path therefore judges a slot before it locks it
 * (reservation_rows.c).  It used to lock the latest version first and
 * judge it after, as FOR UPDATE SKIP LOCKED does: a reserve that lost the
 * slot's last units to a concurrent commit kept its lock, took the slow
 * path, and waited for the stock row, whose holder (a slow reserve, a
 * release or stock_adjust) waited for that slot: a deadlock under load on
 * one hot SKU.  The SQL form (MOVE_UNITS_SQL with SKIP LOCKED) still keeps
 * such locks, so it runs only where that is harmless: in the slow path,
 * after the stock row is locked, and in put_back with need 0, which every
 * slot meets.  Reclaiming lapsed holds and expiring them skip locked rows
 * (expire_reservations never waits at all), so no wait closes a cycle.  A
 * transaction that makes several calls on one SKU may still deadlock with
 * another one (PostgreSQL detects it, SQLSTATE 40P01): its second call can
 * wait for the stock row holding a slot its first call took.  Reserve all
 * of an order's items in one call.
 *
 * stock_adjust and stock_set hold the SKU's stock row and every slot while
 * they decide, so the held quantity they check against cannot grow under
 * them (a reserve cannot take a slot) and PM103 is exact.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "reservation.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_stock_set);
PG_FUNCTION_INFO_V1(payments_stock_adjust);
PG_FUNCTION_INFO_V1(payments_reserve);
PG_FUNCTION_INFO_V1(payments_reserve_items);
PG_FUNCTION_INFO_V1(payments_confirm_reservation);
PG_FUNCTION_INFO_V1(payments_confirm_order);
PG_FUNCTION_INFO_V1(payments_release_reservation);
PG_FUNCTION_INFO_V1(payments_release_order);
PG_FUNCTION_INFO_V1(payments_expire_reservations);

#define SKU_MAX_BYTES			255
#define ORDER_REF_MAX_BYTES		255
#define SLOTS_MAX				1024
#define ITEMS_MAX				1000
/* bounds every quantity so that no sum of them can overflow a bigint */
#define STOCK_MAX				INT64CONST(1000000000000000)
#define TTL_MAX_USECS			(INT64CONST(30) * USECS_PER_DAY)

/* One item of a reserve, in the caller's order (index) */
typedef struct ReserveItem
{
	text	   *sku;
	int64		qty;
	int			index;
} ReserveItem;

/* A row of payments.reservations as the order functions lock it */
typedef struct HoldRow
{
	int64		id;
	text	   *sku;
	int64		qty;
	char		state;			/* first letter: h, c, r, e */
	bool		lapsed;			/* past its TTL */
} HoldRow;

/* Plans kept for the backend's lifetime; see spi_util.c */
static SPIPlanPtr move_plan;
static SPIPlanPtr move_wait_plan;
static SPIPlanPtr shortfall_plan;
static SPIPlanPtr lock_stock_plan;
static SPIPlanPtr lock_slots_plan;
static SPIPlanPtr reclaim_plan;
static SPIPlanPtr spread_plan;
static SPIPlanPtr trim_plan;
static SPIPlanPtr held_plan;
static SPIPlanPtr upsert_stock_plan;
static SPIPlanPtr release_one_plan;
static SPIPlanPtr lookup_plan;
static SPIPlanPtr lock_order_plan;
static SPIPlanPtr resolve_plan;
static SPIPlanPtr due_plan;

/*
 * Taking a slot that is free and has enough units.  The slots are tried in
 * an order that depends on the seed (the backend's PID), so concurrent
 * backends start on different rows, and a backend keeps coming back to the
 * same row while nobody else holds it.  It is used as a scalar subquery
 * (an InitPlan, run once): as the inner side of a join it could be
 * rescanned and lock more than one slot.
 */
#define PICK_SLOT_SQL(need, seed, how) \
	"SELECT slot FROM @extschema@.stock_slots" \
	" WHERE sku = $1 AND available >= " need \
	" ORDER BY pg_catalog.hashint4(slot # " seed ") LIMIT 1" \
	" FOR UPDATE" how
#define MOVE_UNITS_SQL(how) \
	"UPDATE @extschema@.stock_slots" \
	" SET available = available + $2" \
	" WHERE sku = $1 AND slot = (" PICK_SLOT_SQL("$3", "$4", how) ")"

static int32
slot_seed(void)
{
	return (int32) MyProcPid;
}

static void
report_unknown_sku(text *sku)
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
			 errdetail("Requested " INT64_FORMAT ", available " INT64_FORMAT ".",
					   requested, available)));
}

static void
report_below_held(text *sku, int64 on_hand, int64 held)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_STOCK_BELOW_HELD),
			 errmsg("on-hand stock of SKU \"%s\" cannot be less than what is held",
					text_to_cstring(sku)),
			 errdetail_plural("On hand would be " INT64_FORMAT ", but " INT64_FORMAT " unit is held.",
							  "On hand would be " INT64_FORMAT ", but " INT64_FORMAT " units are held.",
							  (unsigned long) held, on_hand, held)));
}

static int64
get_int64(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

/*
 * Add delta units (negative to take them) to one slot of the SKU that
 * holds at least need units.  Without wait, only a slot that can be locked
 * at once will do; with wait, the caller must hold the SKU's stock row (see
 * the lock order above).  Returns false if no slot qualifies.
 */
static bool
move_units(text *sku, int64 delta, int64 need, bool wait)
{
	static const Oid argtypes[] = {TEXTOID, INT8OID, INT8OID, INT4OID};
	Datum		values[4];
	SPIPlanPtr	plan;

	if (wait)
		plan = payments_prepare(&move_wait_plan, MOVE_UNITS_SQL(""),
								4, argtypes);
	else
		plan = payments_prepare(&move_plan, MOVE_UNITS_SQL(" SKIP LOCKED"),
								4, argtypes);
	values[0] = PointerGetDatum(sku);
	values[1] = Int64GetDatum(delta);
	values[2] = Int64GetDatum(need);
	values[3] = Int32GetDatum(slot_seed());
	return payments_execute(plan, values, NULL, SPI_OK_UPDATE, 0) == 1;
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
		report_unknown_sku(sku);
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
 * Mark the SKU's holds that are past their TTL 'expired' and return their
 * units, which the caller (holding all the SKU's slots) puts back.  Holds
 * locked by a confirm or release in progress are skipped, not waited for.
 */
static int64
reclaim_lapsed(text *sku)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(sku)};

	payments_prepare(&reclaim_plan,
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
					 1, argtypes);
	payments_execute(reclaim_plan, values, NULL, SPI_OK_SELECT, 0);
	return get_int64(1);
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

/* Units of the SKU in 'held' rows, lapsed or not. */
static int64
held_units(text *sku)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(sku)};

	payments_prepare(&held_plan,
					 "SELECT coalesce(sum(qty), 0)::bigint FROM @extschema@.reservations"
					 " WHERE sku = $1 AND state = 'held'",
					 1, argtypes);
	payments_execute(held_plan, values, NULL, SPI_OK_SELECT, 0);
	return get_int64(1);
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
	if (get_int64(1) > 0 && get_int64(2) < qty)
		report_short(sku, qty, get_int64(2));

	nslots = lock_stock(sku);
	if (move_units(sku, -qty, qty, false) || move_units(sku, -qty, qty, true))
		return;

	total = lock_all_slots(sku, nslots);
	if (total < qty)
		total += reclaim_lapsed(sku);
	if (total < qty)
		report_short(sku, qty, total);
	spread_units(sku, total - qty, nslots);
}

/*
 * reserve_slow runs its SQL as the function's owner with search_path
 * pinned, as a SECURITY DEFINER function would: reserve itself is not one,
 * so that the hot path, which runs no SQL, does not pay for it (see
 * payments_begin_as_owner).
 */
static void
reserve_slow(Oid fn_oid, text *sku, int64 qty)
{
	PaymentsSavedUser saved;

	payments_begin_as_owner(payments_function_owner(fn_oid), true, &saved);
	SPI_connect();
	take_units_slow(sku, qty);
	SPI_finish();
	payments_end_as_owner(&saved);
}

/*
 * The slot this backend last took units from, and its SKU.  A backend
 * tries that slot first, with a one-row lookup: concurrent backends thus
 * settle on different slots, and the common case skips reading and
 * ordering all of a hot SKU's slots.  It is only a hint: a stale entry
 * (another SKU, a slot that is busy, empty or gone) just costs the lookup.
 */
static char last_sku[SKU_MAX_BYTES];
static int	last_sku_len = -1;
static int32 last_slot;

/*
 * Hold qty units of one SKU; returns the reservation id.  The hot path
 * (reservation_rows.c) takes the units from a slot it can lock at once:
 * the one this backend used last, then any.  Only if none can serve does
 * it take the slow path, as the owner of fn_oid (the reserve function
 * called).
 */
static int64
reserve_one(Oid fn_oid, text *order_ref, text *sku, int64 qty, Datum ttl)
{
	int			len = VARSIZE_ANY_EXHDR(sku);
	bool		same_sku = (last_sku_len == len &&
							memcmp(last_sku, VARDATA_ANY(sku), len) == 0);
	int32		slot;

	slot = payments_take_units(sku, qty, same_sku ? last_slot : -1,
							   slot_seed());
	if (slot >= 0)
	{
		memcpy(last_sku, VARDATA_ANY(sku), len);
		last_sku_len = len;
		last_slot = slot;
	}
	else
		reserve_slow(fn_oid, sku, qty);
	return payments_insert_hold(order_ref, sku, qty, ttl);
}

/*
 * Give qty units back to the SKU.  Any slot that can be locked without
 * waiting will do (need 0: every slot it locks passes the re-check, so it
 * keeps no slot it does not use before it may wait for the stock row).  If
 * all are busy and wait is true, wait for one, holding the SKU's stock row
 * first as the lock order requires; if wait is false, return false and
 * change nothing.
 */
static bool
put_back(text *sku, int64 qty, bool wait)
{
	if (move_units(sku, qty, 0, false))
		return true;
	if (!wait)
		return false;

	(void) lock_stock(sku);
	if (!move_units(sku, qty, 0, true))
		elog(ERROR, "SKU \"%s\" has no slot rows", text_to_cstring(sku));
	return true;
}

static text *
arg_sku(FunctionCallInfo fcinfo, int argno)
{
	return payments_arg_text(fcinfo, argno, "SKU", SKU_MAX_BYTES);
}

static int32
arg_slots(FunctionCallInfo fcinfo, int argno)
{
	return payments_arg_int_range(fcinfo, argno, "slots", 1, SLOTS_MAX);
}

static Datum
arg_ttl(FunctionCallInfo fcinfo, int argno)
{
	return payments_arg_interval(fcinfo, argno, "reservation TTL", TTL_MAX_USECS);
}

/*
 * payments.stock_set(sku, on_hand, slots)
 *
 * on_hand counts held units too, so it may not go below them (PM103).  A
 * NULL slots keeps the SKU's current number (1 for a new SKU).
 */
Datum
payments_stock_set(PG_FUNCTION_ARGS)
{
	static const Oid upsert_argtypes[] = {TEXTOID, INT4OID};
	static const Oid trim_argtypes[] = {TEXTOID, INT4OID};
	text	   *sku;
	int64		on_hand;
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	int32		nslots;
	int32		nlocked;
	int64		held;
	bool		isnull;

	sku = arg_sku(fcinfo, 0);
	on_hand = payments_arg_int64_range(fcinfo, 1, "on_hand", 0, STOCK_MAX);
	if (PG_ARGISNULL(2))
		nulls[1] = 'n';
	else
		values[1] = Int32GetDatum(arg_slots(fcinfo, 2));
	payments_check_writable("set stock");

	SPI_connect();

	/* Create or lock the SKU's row; this also serializes two creators. */
	payments_prepare(&upsert_stock_plan,
					 "INSERT INTO @extschema@.stock AS s (sku, slots)"
					 " VALUES ($1, coalesce($2, 1))"
					 " ON CONFLICT (sku) DO UPDATE"
					 " SET slots = coalesce($2, s.slots), updated_at = now()"
					 " RETURNING slots",
					 2, upsert_argtypes);
	values[0] = PointerGetDatum(sku);
	payments_execute(upsert_stock_plan, values, nulls,
					 SPI_OK_INSERT_RETURNING, 0);
	nslots = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));

	(void) lock_slots(sku, &nlocked);
	held = held_units(sku);
	if (on_hand < held)
		held -= reclaim_lapsed(sku);
	if (on_hand < held)
		report_below_held(sku, on_hand, held);

	spread_units(sku, on_hand - held, nslots);
	if (nlocked > nslots)
	{
		payments_prepare(&trim_plan,
						 "DELETE FROM @extschema@.stock_slots WHERE sku = $1 AND slot >= $2",
						 2, trim_argtypes);
		values[1] = Int32GetDatum(nslots);
		payments_execute(trim_plan, values, NULL, SPI_OK_DELETE, 0);
	}

	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * payments.stock_adjust(sku, delta)
 *
 * Returns the new on-hand quantity.  A write-off may not take on_hand below
 * what is held (PM103); holds past their TTL are reclaimed first.
 */
Datum
payments_stock_adjust(PG_FUNCTION_ARGS)
{
	text	   *sku;
	int64		delta;
	int32		nslots;
	int64		units;
	int64		held;

	sku = arg_sku(fcinfo, 0);
	delta = payments_arg_int64_range(fcinfo, 1, "delta", -STOCK_MAX, STOCK_MAX);
	if (delta == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delta must not be zero")));
	payments_check_writable("adjust stock");

	SPI_connect();
	nslots = lock_stock(sku);
	units = lock_all_slots(sku, nslots);
	if (units + delta < 0)
		units += reclaim_lapsed(sku);
	held = held_units(sku);
	if (units + delta < 0)
		report_below_held(sku, units + held + delta, held);
	if (units + held + delta > STOCK_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("on-hand stock of SKU \"%s\" would exceed " INT64_FORMAT,
						text_to_cstring(sku), STOCK_MAX)));
	spread_units(sku, units + delta, nslots);
	SPI_finish();
	PG_RETURN_INT64(units + held + delta);
}

/*
 * payments.reserve(order_ref, sku, qty, ttl)
 */
Datum
payments_reserve(PG_FUNCTION_ARGS)
{
	text	   *order_ref;
	text	   *sku;
	int64		qty;
	Datum		ttl;
	int64		id;

	order_ref = payments_arg_text(fcinfo, 0, "order reference", ORDER_REF_MAX_BYTES);
	sku = arg_sku(fcinfo, 1);
	qty = payments_arg_int64_range(fcinfo, 2, "quantity", 1, STOCK_MAX);
	ttl = arg_ttl(fcinfo, 3);
	payments_check_writable("reserve stock");

	id = reserve_one(fcinfo->flinfo->fn_oid, order_ref, sku, qty, ttl);
	PG_RETURN_INT64(id);
}

static void
report_bad_item(int n, const char *msg)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid reservation item %d", n),
			 errdetail("%s", msg),
			 errhint("Pass items as [{\"sku\": \"A\", \"qty\": 2}, ...].")));
}

/* Read item i (0-based) of the items array, checking its shape. */
static void
parse_item(Jsonb *items, int i, ReserveItem *item)
{
	JsonbValue *elem = getIthJsonbValueFromContainer(&items->root, i);
	JsonbContainer *obj;
	JsonbValue	skuv;
	JsonbValue	qtyv;
	Numeric		num;
	int			n = i + 1;

	if (elem->type != jbvBinary || !JsonContainerIsObject(elem->val.binary.data))
		report_bad_item(n, "The item is not a JSON object.");
	obj = elem->val.binary.data;
	if (getKeyJsonValueFromContainer(obj, "sku", 3, &skuv) == NULL ||
		getKeyJsonValueFromContainer(obj, "qty", 3, &qtyv) == NULL ||
		JsonContainerSize(obj) != 2)
		report_bad_item(n, "Each item must have exactly the keys \"sku\" and \"qty\".");

	if (skuv.type != jbvString)
		report_bad_item(n, "Its \"sku\" is not a string.");
	if (skuv.val.string.len == 0 || skuv.val.string.len > SKU_MAX_BYTES)
		report_bad_item(n, "Its \"sku\" must be 1 to 255 bytes long.");
	item->sku = cstring_to_text_with_len(skuv.val.string.val, skuv.val.string.len);

	if (qtyv.type != jbvNumeric)
		report_bad_item(n, "Its \"qty\" is not a number.");
	num = qtyv.val.numeric;
	if (!DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(num),
										  DirectFunctionCall2(numeric_trunc,
															  NumericGetDatum(num),
															  Int32GetDatum(0)))))
		report_bad_item(n, "Its \"qty\" is not an integer.");
	if (DatumGetBool(DirectFunctionCall2(numeric_lt, NumericGetDatum(num),
										 NumericGetDatum(int64_to_numeric(1)))) ||
		DatumGetBool(DirectFunctionCall2(numeric_gt, NumericGetDatum(num),
										 NumericGetDatum(int64_to_numeric(STOCK_MAX)))))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("quantity of reservation item %d must be between 1 and " INT64_FORMAT,
						n, STOCK_MAX)));
	item->qty = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(num)));
	item->index = i;
}

/* SKUs in byte order: the one fixed order in which they are locked */
static int
compare_sku(const text *a, const text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

static int
compare_items(const void *a, const void *b)
{
	return compare_sku(((const ReserveItem *) a)->sku,
					   ((const ReserveItem *) b)->sku);
}

/*
 * payments.reserve(order_ref, items, ttl)
 *
 * All or nothing: an error on any item (a short SKU included) aborts the
 * call and with it every hold it took.  SKUs are locked in byte order,
 * whatever the order of items, so two orders over the same SKUs never wait
 * for each other in a cycle.
 */
Datum
payments_reserve_items(PG_FUNCTION_ARGS)
{
	text	   *order_ref;
	Jsonb	   *items;
	Datum		ttl;
	int			nitems;
	ReserveItem *sorted;
	Datum	   *ids;

	order_ref = payments_arg_text(fcinfo, 0, "order reference", ORDER_REF_MAX_BYTES);
	payments_arg_not_null(fcinfo, 1, "items");
	items = PG_GETARG_JSONB_P(1);
	ttl = arg_ttl(fcinfo, 2);

	if (!JB_ROOT_IS_ARRAY(items) || JB_ROOT_IS_SCALAR(items))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("items must be a JSON array"),
				 errhint("Pass items as [{\"sku\": \"A\", \"qty\": 2}, ...].")));
	nitems = JB_ROOT_COUNT(items);
	if (nitems == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("items must not be empty")));
	if (nitems > ITEMS_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many reservation items"),
				 errdetail("There are %d items; the limit is %d.", nitems, ITEMS_MAX)));

	sorted = palloc(sizeof(ReserveItem) * nitems);
	for (int i = 0; i < nitems; i++)
		parse_item(items, i, &sorted[i]);
	qsort(sorted, nitems, sizeof(ReserveItem), compare_items);
	for (int i = 1; i < nitems; i++)
		if (compare_sku(sorted[i - 1].sku, sorted[i].sku) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("SKU \"%s\" appears in more than one reservation item",
							text_to_cstring(sorted[i].sku)),
					 errhint("Add up its quantities in one item.")));
	payments_check_writable("reserve stock");

	ids = palloc(sizeof(Datum) * nitems);
	for (int i = 0; i < nitems; i++)
		ids[sorted[i].index] = Int64GetDatum(reserve_one(fcinfo->flinfo->fn_oid,
														 order_ref, sorted[i].sku,
														 sorted[i].qty, ttl));

	PG_RETURN_ARRAYTYPE_P(construct_array(ids, nitems, INT8OID, sizeof(int64),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static void
report_expired(int64 id, bool released)
{
	if (released)
		ereport(ERROR,
				(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
				 errmsg("reservation " INT64_FORMAT " was released", id),
				 errdetail("Its stock has been given back; a released hold cannot be confirmed."),
				 errhint("Reserve the stock again.")));
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
			 errmsg("reservation " INT64_FORMAT " has expired", id),
			 errdetail("Its TTL ran out; its stock no longer belongs to the order."),
			 errhint("Reserve the stock again.")));
}

static void
report_confirmed(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_STATE_CONFLICT),
			 errmsg("cannot release reservation " INT64_FORMAT, id),
			 errdetail("It has been confirmed; its stock is sold.")));
}

static void
report_unknown_reservation(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_RESERVATION_NOT_FOUND),
			 errmsg("reservation " INT64_FORMAT " does not exist", id)));
}

/*
 * Read a reservation's state after an UPDATE of it found nothing to do.
 * Returns the state's first letter, or 'L' for a hold past its TTL.
 */
static char
lookup_state(int64 id)
{
	static const Oid argtypes[] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	HeapTuple	tup;
	bool		isnull;
	char	   *state;

	payments_prepare(&lookup_plan,
					 "SELECT state, expires_at <= pg_catalog.clock_timestamp()"
					 " FROM @extschema@.reservations WHERE id = $1",
					 1, argtypes);
	if (payments_execute(lookup_plan, values, NULL, SPI_OK_SELECT, 0) == 0)
		report_unknown_reservation(id);
	tup = SPI_tuptable->vals[0];
	state = SPI_getvalue(tup, SPI_tuptable->tupdesc, 1);
	if (state[0] == 'h' &&
		DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 2, &isnull)))
		return 'L';
	return state[0];
}

/*
 * payments.confirm_reservation(id)
 *
 * true: the hold is now a sale.  false: it was confirmed before.  A hold
 * that was released, expired, or is past its TTL cannot be confirmed
 * (PM102).  Two confirms of one hold are serialized by its row lock; see
 * payments_confirm_hold.
 */
Datum
payments_confirm_reservation(PG_FUNCTION_ARGS)
{
	int64		id;
	char		state;

	payments_arg_not_null(fcinfo, 0, "reservation id");
	id = PG_GETARG_INT64(0);
	payments_check_writable("confirm a reservation");

	state = payments_confirm_hold(id);
	if (state == '\0')
		report_unknown_reservation(id);
	if (state == 'c')
		PG_RETURN_BOOL(false);
	if (state != 'h')
		report_expired(id, state == 'r');
	PG_RETURN_BOOL(true);
}

/*
 * payments.release_reservation(id)
 *
 * true: the stock is back.  false: it was released or expired before.  A
 * confirmed hold cannot be released (PM104).  A hold past its TTL that
 * nothing has expired yet is released.
 */
Datum
payments_release_reservation(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {INT8OID};
	int64		id;
	Datum		values[1];
	bool		result;

	payments_arg_not_null(fcinfo, 0, "reservation id");
	id = PG_GETARG_INT64(0);
	payments_check_writable("release a reservation");

	SPI_connect();
	payments_prepare(&release_one_plan,
					 "UPDATE @extschema@.reservations"
					 " SET state = 'released', resolved_at = pg_catalog.clock_timestamp()"
					 " WHERE id = $1 AND state = 'held'"
					 " RETURNING sku, qty",
					 1, argtypes);
	values[0] = Int64GetDatum(id);
	for (;;)
	{
		char		state;

		if (payments_execute(release_one_plan, values, NULL,
							 SPI_OK_UPDATE_RETURNING, 0) == 1)
		{
			bool		isnull;
			text	   *sku = DatumGetTextPCopy(SPI_getbinval(SPI_tuptable->vals[0],
															 SPI_tuptable->tupdesc,
															 1, &isnull));
			int64		qty = get_int64(2);

			put_back(sku, qty, true);
			result = true;
			break;
		}
		state = lookup_state(id);
		if (state == 'c')
			report_confirmed(id);
		if (state == 'r' || state == 'e')
		{
			result = false;
			break;
		}
	}
	SPI_finish();
	PG_RETURN_BOOL(result);
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

/*
 * The end of the run of rows that share rows[start]'s SKU, in rows sorted
 * by SKU: the caller gives each SKU's stock back in one go, in lock order.
 */
static int
sku_run_end(const HoldRow *rows, int n, int start)
{
	int			end = start;

	while (end < n && compare_sku(rows[end].sku, rows[start].sku) == 0)
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
		ereport(ERROR,
				(errcode(ERRCODE_PM_RESERVATION_NOT_FOUND),
				 errmsg("order \"%s\" has no reservations", text_to_cstring(order_ref))));

	r = palloc(sizeof(HoldRow) * n);
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		read_hold(tup, desc, &r[i]);
		r[i].state = SPI_getvalue(tup, desc, 4)[0];
		r[i].lapsed = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
	}
	*rows = r;
	return (int) n;
}

/* Set the state of the reservations whose ids are given. */
static uint64
resolve_holds(Datum *ids, int n, const char *state)
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
	values[1] = CStringGetTextDatum(state);
	return payments_execute(resolve_plan, values, NULL, SPI_OK_UPDATE, 0);
}

/*
 * payments.confirm_order(order_ref)
 *
 * Confirms every live hold of the order and returns how many.  An order
 * with a hold that expired is refused as a whole (PM102): confirming the
 * rest would sell an incomplete order.  Released holds are left alone; an
 * order with nothing but released holds is refused too.  0 means the
 * order was confirmed before.
 */
Datum
payments_confirm_order(PG_FUNCTION_ARGS)
{
	text	   *order_ref;
	HoldRow    *rows;
	int			n;
	Datum	   *ids;
	int			nheld = 0;
	bool		any_confirmed = false;

	order_ref = payments_arg_text(fcinfo, 0, "order reference", ORDER_REF_MAX_BYTES);
	payments_check_writable("confirm an order");

	SPI_connect();
	n = lock_order(order_ref, &rows);
	ids = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		if (rows[i].state == 'e' || rows[i].lapsed)
			ereport(ERROR,
					(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
					 errmsg("order \"%s\" has an expired reservation",
							text_to_cstring(order_ref)),
					 errdetail("The TTL of reservation " INT64_FORMAT " ran out; its stock no longer belongs to the order.",
							   rows[i].id),
					 errhint("Release the order and reserve it again.")));
		if (rows[i].state == 'h')
			ids[nheld++] = Int64GetDatum(rows[i].id);
		else if (rows[i].state == 'c')
			any_confirmed = true;
	}
	if (nheld == 0 && !any_confirmed)
		ereport(ERROR,
				(errcode(ERRCODE_PM_RESERVATION_EXPIRED),
				 errmsg("order \"%s\" was released", text_to_cstring(order_ref)),
				 errdetail("All its reservations have been released; their stock has been given back."),
				 errhint("Reserve the stock again.")));
	if (nheld > 0 && resolve_holds(ids, nheld, "confirmed") != nheld)
		elog(ERROR, "reservations of order \"%s\" changed while locked",
			 text_to_cstring(order_ref));
	SPI_finish();
	PG_RETURN_INT32(nheld);
}

static int
compare_rows_by_sku(const void *a, const void *b)
{
	return compare_sku(((const HoldRow *) a)->sku, ((const HoldRow *) b)->sku);
}

/*
 * payments.release_order(order_ref)
 *
 * Releases every hold of the order, lapsed or not, and returns how many.
 * An order with a confirmed hold is refused as a whole (PM104).
 */
Datum
payments_release_order(PG_FUNCTION_ARGS)
{
	text	   *order_ref;
	HoldRow    *rows;
	int			n;
	Datum	   *ids;
	int			nheld = 0;

	order_ref = payments_arg_text(fcinfo, 0, "order reference", ORDER_REF_MAX_BYTES);
	payments_check_writable("release an order");

	SPI_connect();
	n = lock_order(order_ref, &rows);
	for (int i = 0; i < n; i++)
		if (rows[i].state == 'c')
			ereport(ERROR,
					(errcode(ERRCODE_PM_RESERVATION_STATE_CONFLICT),
					 errmsg("cannot release order \"%s\"", text_to_cstring(order_ref)),
					 errdetail("Reservation " INT64_FORMAT " has been confirmed; its stock is sold.",
							   rows[i].id)));

	/* give the stock back SKU by SKU, in the one lock order */
	qsort(rows, n, sizeof(HoldRow), compare_rows_by_sku);
	ids = palloc(sizeof(Datum) * n);
	for (int i = 0, end; i < n; i = end)
	{
		int64		qty = 0;

		end = sku_run_end(rows, n, i);
		for (int j = i; j < end; j++)
			if (rows[j].state == 'h')
			{
				qty += rows[j].qty;
				ids[nheld++] = Int64GetDatum(rows[j].id);
			}
		if (qty > 0)
			put_back(rows[i].sku, qty, true);
	}
	if (nheld > 0 && resolve_holds(ids, nheld, "released") != nheld)
		elog(ERROR, "reservations of order \"%s\" changed while locked",
			 text_to_cstring(order_ref));
	SPI_finish();
	PG_RETURN_INT32(nheld);
}

/*
 * payments.expire_reservations(max_rows)
 *
 * Gives back the stock of up to max_rows holds past their TTL, oldest
 * first, and returns how many it expired.  It never waits: holds locked by
 * a confirm or release in progress, and holds of a SKU whose slots are all
 * busy, are left for the next run (a reserve that finds the stock short
 * reclaims them itself meanwhile).
 */
Datum
payments_expire_reservations(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {INT4OID};
	Datum		values[1];
	uint64		n;
	HoldRow    *rows;
	Datum	   *ids;
	int			nexpired = 0;

	values[0] = Int32GetDatum(payments_arg_int_range(fcinfo, 0, "max_rows",
													 1, PG_INT32_MAX));
	payments_check_writable("expire reservations");

	SPI_connect();
	payments_prepare(&due_plan,
					 "SELECT id, sku, qty FROM @extschema@.reservations"
					 " WHERE state = 'held' AND expires_at <= pg_catalog.clock_timestamp()"
					 " ORDER BY expires_at LIMIT $1"
					 " FOR UPDATE SKIP LOCKED",
					 1, argtypes);
	n = payments_execute(due_plan, values, NULL, SPI_OK_SELECT, 0);
	if (n == 0)
	{
		SPI_finish();
		PG_RETURN_INT32(0);
	}

	rows = palloc(sizeof(HoldRow) * n);
	for (uint64 i = 0; i < n; i++)
		read_hold(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, &rows[i]);

	qsort(rows, n, sizeof(HoldRow), compare_rows_by_sku);
	ids = palloc(sizeof(Datum) * n);
	for (int i = 0, end; i < (int) n; i = end)
	{
		int64		qty = 0;

		end = sku_run_end(rows, (int) n, i);
		for (int j = i; j < end; j++)
			qty += rows[j].qty;
		if (put_back(rows[i].sku, qty, false))
			for (int j = i; j < end; j++)
				ids[nexpired++] = Int64GetDatum(rows[j].id);
	}
	if (nexpired > 0 && resolve_holds(ids, nexpired, "expired") != nexpired)
		elog(ERROR, "expiring reservations changed while locked");
	SPI_finish();
	PG_RETURN_INT32(nexpired);
}
