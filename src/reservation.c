/*-------------------------------------------------------------------------
 *
 * reservation.c
 *	  Inventory reservations with TTL: holds that never oversell, even when
 *	  every buyer wants the same SKU.  This file holds the SQL functions
 *	  and their argument checks; reservation.h lists the others.
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
 * The hot path (written without SQL: it runs for every sale; see
 * reservation_tables.c).  A reserve updates one slot that it can lock
 * without waiting and that has enough units: first the slot this backend
 * took from last time (a one-row lookup), then the others in an order that
 * depends on the backend's PID, so concurrent buyers settle on different
 * rows (reservation_slots.c, move_units).  With at least as many slots as
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
 * (payments_slots_take), which is what SECURITY DEFINER SET search_path
 * would do.
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
 * call uses.  The slot choice therefore judges a slot before it locks it
 * (lock_slot_if_enough in reservation_slots.c), where FOR UPDATE SKIP
 * LOCKED would lock the latest version first and judge it after: a
 * reserve that lost the slot's last units to a concurrent commit would
 * keep its lock, take the slow path and wait for the stock row, whose
 * holder (a slow reserve, a release or stock_adjust) waits for that slot.
 * Only the waiting form of the slot choice keeps a lock on a slot it then
 * finds short, and it runs only while the stock row is held.  Reclaiming
 * lapsed holds and expiring them skip locked rows (expire_reservations
 * never waits at all), so no wait closes a cycle.  A transaction that
 * makes several calls on one SKU may still deadlock with another one
 * (PostgreSQL detects it, SQLSTATE 40P01): its second call can wait for
 * the stock row holding a slot its first call took.  Reserve all of an
 * order's items in one call.
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
#include "citus_shards.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "reservation.h"

#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

PG_FUNCTION_INFO_V1(payments_stock_set);
PG_FUNCTION_INFO_V1(payments_stock_adjust);
PG_FUNCTION_INFO_V1(payments_reserve);
PG_FUNCTION_INFO_V1(payments_reserve_items);
PG_FUNCTION_INFO_V1(payments_confirm_reservation);
PG_FUNCTION_INFO_V1(payments_confirm_order);
PG_FUNCTION_INFO_V1(payments_release_reservation);
PG_FUNCTION_INFO_V1(payments_release_order);
PG_FUNCTION_INFO_V1(payments_expire_reservations);

/* One item of a reserve, in the caller's order (index) */
typedef struct ReserveItem
{
	text	   *sku;
	int64		qty;
	int			index;
} ReserveItem;

static text *
arg_sku(FunctionCallInfo fcinfo, int argno)
{
	return payments_arg_text(fcinfo, argno, "SKU", RESERVATION_SKU_MAX_BYTES);
}

static text *
arg_order_ref(FunctionCallInfo fcinfo, int argno)
{
	return payments_arg_text(fcinfo, argno, "order reference",
							 RESERVATION_ORDER_REF_MAX_BYTES);
}

static Datum
arg_ttl(FunctionCallInfo fcinfo, int argno)
{
	return payments_arg_interval(fcinfo, argno, "reservation TTL",
								 RESERVATION_TTL_MAX_USECS);
}

static int64
arg_reservation_id(FunctionCallInfo fcinfo, int argno)
{
	payments_arg_not_null(fcinfo, argno, "reservation id");
	return PG_GETARG_INT64(argno);
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
	text	   *sku;
	int64		on_hand;
	int32		slots = -1;
	PaymentsShardContext shard;

	sku = arg_sku(fcinfo, 0);
	on_hand = payments_arg_int64_range(fcinfo, 1, "on_hand", 0,
									   RESERVATION_STOCK_MAX);
	if (!PG_ARGISNULL(2))
		slots = payments_arg_int_range(fcinfo, 2, "slots", 1,
									   RESERVATION_SLOTS_MAX);
	payments_check_not_in_recovery();

	shard = payments_shard_enter(sku, "SKU");
	SPI_connect();
	payments_stock_set_units(sku, on_hand, slots);
	SPI_finish();
	payments_shard_leave(shard);
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
	int64		on_hand;
	PaymentsShardContext shard;

	sku = arg_sku(fcinfo, 0);
	delta = payments_arg_int64_range(fcinfo, 1, "delta",
									 -RESERVATION_STOCK_MAX,
									 RESERVATION_STOCK_MAX);
	if (delta == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("delta must not be zero")));
	payments_check_not_in_recovery();

	shard = payments_shard_enter(sku, "SKU");
	SPI_connect();
	on_hand = payments_stock_adjust_units(sku, delta);
	SPI_finish();
	payments_shard_leave(shard);
	PG_RETURN_INT64(on_hand);
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
	PaymentsShardContext shard;
	int64		id;

	order_ref = arg_order_ref(fcinfo, 0);
	sku = arg_sku(fcinfo, 1);
	qty = payments_arg_int64_range(fcinfo, 2, "quantity", 1,
								   RESERVATION_STOCK_MAX);
	ttl = arg_ttl(fcinfo, 3);
	payments_check_not_in_recovery();

	shard = payments_shard_enter(sku, "SKU");
	id = payments_hold_reserve(fcinfo->flinfo->fn_oid, order_ref, sku, qty,
							   ttl);
	payments_shard_leave(shard);
	PG_RETURN_INT64(id);
}

/*
 * Refuse item n (1-based) of a reserve's items; detail says what is wrong
 * with it, in a complete sentence.
 */
#define report_bad_item(n, ...) \
	ereport(ERROR, \
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE), \
			 errmsg("invalid reservation item %d", (n)), \
			 errdetail(__VA_ARGS__), \
			 errhint("Pass items as [{\"sku\": \"A\", \"qty\": 2}, ...].")))

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
	if (skuv.val.string.len == 0 ||
		skuv.val.string.len > RESERVATION_SKU_MAX_BYTES)
		report_bad_item(n, "Its \"sku\" must be 1 to %d bytes long.",
						RESERVATION_SKU_MAX_BYTES);
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
										 NumericGetDatum(int64_to_numeric(RESERVATION_STOCK_MAX)))))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("quantity of reservation item %d must be between 1 and %lld",
						n, (long long) RESERVATION_STOCK_MAX)));
	item->qty = DatumGetInt64(DirectFunctionCall1(numeric_int8, NumericGetDatum(num)));
	item->index = i;
}

static int
compare_items(const void *a, const void *b)
{
	return reservation_compare_sku(((const ReserveItem *) a)->sku,
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
	bool		distributed;

	order_ref = arg_order_ref(fcinfo, 0);
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
	if (nitems > RESERVATION_ITEMS_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("too many reservation items"),
				 errdetail("There are %d items; the limit is %d.",
						   nitems, RESERVATION_ITEMS_MAX)));

	sorted = palloc(sizeof(ReserveItem) * nitems);
	for (int i = 0; i < nitems; i++)
		parse_item(items, i, &sorted[i]);
	qsort(sorted, nitems, sizeof(ReserveItem), compare_items);
	for (int i = 1; i < nitems; i++)
		if (reservation_compare_sku(sorted[i - 1].sku, sorted[i].sku) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("SKU \"%s\" appears in more than one reservation item",
							text_to_cstring(sorted[i].sku)),
					 errhint("Add up its quantities in one item.")));
	payments_check_not_in_recovery();

	ids = palloc(sizeof(Datum) * nitems);
	distributed = payments_shards_distributed();
	for (int i = 0; i < nitems; i++)
		ids[sorted[i].index] = Int64GetDatum(distributed ?
											 payments_hold_reserve_citus(fcinfo->flinfo->fn_oid,
																		 order_ref, sorted[i].sku,
																		 sorted[i].qty, ttl) :
											 payments_hold_reserve(fcinfo->flinfo->fn_oid,
																   order_ref, sorted[i].sku,
																   sorted[i].qty, ttl));

	PG_RETURN_ARRAYTYPE_P(construct_array(ids, nitems, INT8OID, sizeof(int64),
										  FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * Confirm (or release) the hold id, of the SKU in argument 1 if the call
 * names one.  Distributed, the two-argument form runs on the SKU's node;
 * the other finds the hold over every shard first (reservation_citus.c).
 */
static bool
resolve_hold(FunctionCallInfo fcinfo, bool confirm)
{
	int64		id = arg_reservation_id(fcinfo, 0);
	text	   *sku = PG_NARGS() > 1 ? arg_sku(fcinfo, 1) : NULL;
	PaymentsShardContext shard;
	bool		result;

	payments_check_not_in_recovery();
	if (sku == NULL && payments_shards_distributed())
		return payments_hold_resolve_citus(fcinfo->flinfo->fn_oid, id, confirm);
	shard = payments_shard_enter(sku, "SKU");
	result = confirm ? payments_hold_confirm(id, sku) : payments_hold_release(id, sku);
	payments_shard_leave(shard);
	return result;
}

/*
 * payments.confirm_reservation(id [, sku])
 *
 * true: the hold is now a sale.  false: it was confirmed before.  A hold
 * that was released, expired, or is past its TTL cannot be confirmed
 * (PM102).  With a SKU, a hold of another SKU is unknown.
 */
Datum
payments_confirm_reservation(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(resolve_hold(fcinfo, true));
}

/*
 * payments.release_reservation(id [, sku])
 *
 * true: the stock is back.  false: it was released or expired before.  A
 * confirmed hold cannot be released (PM104).
 */
Datum
payments_release_reservation(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(resolve_hold(fcinfo, false));
}

/*
 * payments.confirm_order(order_ref)
 *
 * Confirms every live hold of the order, or none (PM102 if one has
 * expired), and returns how many.
 */
Datum
payments_confirm_order(PG_FUNCTION_ARGS)
{
	text	   *order_ref = arg_order_ref(fcinfo, 0);

	payments_check_not_in_recovery();
	if (payments_shards_distributed())
		PG_RETURN_INT32(payments_order_confirm_citus(order_ref));
	PG_RETURN_INT32(payments_order_confirm(order_ref));
}

/*
 * payments.release_order(order_ref)
 *
 * Releases every hold of the order, or none (PM104 if one is confirmed),
 * and returns how many.
 */
Datum
payments_release_order(PG_FUNCTION_ARGS)
{
	text	   *order_ref = arg_order_ref(fcinfo, 0);

	payments_check_not_in_recovery();
	if (payments_shards_distributed())
		PG_RETURN_INT32(payments_order_release_citus(order_ref));
	PG_RETURN_INT32(payments_order_release(order_ref));
}

static int32
expire_batch(int32 max_rows, void *arg)
{
	return payments_holds_expire(max_rows);
}

/*
 * payments.expire_reservations(max_rows)
 *
 * Gives back the stock of up to max_rows holds past their TTL and returns
 * how many it expired, without ever waiting for a lock.  While the tables
 * are distributed, of the shards this node holds.
 */
Datum
payments_expire_reservations(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows",
												  1, PG_INT32_MAX);

	payments_check_not_in_recovery();
	PG_RETURN_INT32(payments_shard_batches(max_rows, expire_batch, NULL));
}
