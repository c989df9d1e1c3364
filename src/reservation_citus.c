/*-------------------------------------------------------------------------
 *
 * reservation_citus.c
 *	  The calls over several SKUs, or by a hold's id alone, while the
 *	  tables are distributed: reserve with items, confirm_order,
 *	  release_order, and confirm_reservation and release_reservation
 *	  without a SKU.
 *
 * Each of them works SKU by SKU, in byte order (the one lock order), and
 * calls the single-SKU function as Citus delegates a distributed function
 * (payments_execute_delegated): Citus sends the call to the node holding
 * the SKU's shard, where it runs on the shard as it would when called on
 * its own (citus_shards.c), as a write of the caller's transaction.  The
 * parts commit together with it, on every node it reached or on none
 * (two-phase commit), and a statement that fails after them leaves none.
 * Holds are found by order_ref or by id with one query over every shard
 * (an index on each).

 * The single-SKU functions check and lock each hold, so a hold that
 * changes between the read of the order and its own call is judged by
 * what it is then: an order is still confirmed or released as a whole,
 * or the transaction fails.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reservation.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"

/* One SKU of an order: its holds still held, and one confirmed, if any */
typedef struct OrderSku
{
	text	   *sku;
	int64		held;
	int64		confirmed_id;	/* 0 if none */
} OrderSku;

/*
 * The SKUs of the order's holds, in byte order, palloc'd in the caller's
 * context; *n of them.  The caller is connected to SPI.
 */
static OrderSku *
order_skus(text *order_ref, int *n)
{
	static const Oid argtypes[] = {TEXTOID};
	Datum		values[1] = {PointerGetDatum(order_ref)};
	OrderSku   *skus;
	uint64		rows;

	rows = payments_execute_citus("SELECT sku,"
								  " count(*) FILTER (WHERE state = 'held'),"
								  " coalesce(min(id) FILTER (WHERE state = 'confirmed'), 0)"
								  " FROM @extschema@.reservations WHERE order_ref = $1"
								  " GROUP BY sku ORDER BY sku COLLATE \"C\"",
								  1, argtypes, values, NULL, SPI_OK_SELECT);
	if (rows == 0)
		payments_report_order_unknown(order_ref);
	skus = SPI_palloc(sizeof(OrderSku) * rows);
	for (uint64 i = 0; i < rows; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		skus[i].sku = (text *) SPI_datumTransfer(SPI_getbinval(tup, desc, 1, &isnull),
												 false, -1);
		skus[i].held = DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull));
		skus[i].confirmed_id = DatumGetInt64(SPI_getbinval(tup, desc, 3, &isnull));
	}
	*n = (int) rows;
	return skus;
}

/*
 * Confirm (or release) one hold on the node of its SKU: the two-argument
 * function, called as Citus delegates a distributed function, so that it
 * commits or aborts with the caller's transaction.  Returns its result.
 * The caller is connected to SPI.
 */
static bool
resolve_hold(Datum id, Datum sku, bool confirm)
{
	static const Oid argtypes[] = {INT8OID, TEXTOID};
	Datum		values[2] = {id, sku};
	bool		isnull;

	payments_execute_delegated(confirm ? "confirm_reservation" : "release_reservation",
							   2, argtypes, values, NULL);
	return DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									  1, &isnull));
}

/*
 * Confirm (or release) every held hold of the order, SKU by SKU, each on
 * its SKU's node by the two-argument function; returns how many it
 * confirmed (released) now.  The caller is connected to SPI.
 */
static int
resolve_order(text *order_ref, const OrderSku *skus, int n, bool confirm)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID};
	int			done = 0;

	for (int i = 0; i < n; i++)
	{
		Datum		values[2] = {PointerGetDatum(skus[i].sku), PointerGetDatum(order_ref)};
		SPITupleTable *holds;
		uint64		rows;

		if (skus[i].held == 0)
			continue;
		rows = payments_execute_citus("SELECT id, sku FROM @extschema@.reservations"
									  " WHERE sku = $1 AND order_ref = $2 AND state = 'held'"
									  " ORDER BY id",
									  2, argtypes, values, NULL, SPI_OK_SELECT);
		holds = SPI_tuptable;
		for (uint64 j = 0; j < rows; j++)
		{
			bool		isnull;

			if (resolve_hold(SPI_getbinval(holds->vals[j], holds->tupdesc, 1, &isnull),
							 SPI_getbinval(holds->vals[j], holds->tupdesc, 2, &isnull),
							 confirm))
				done++;
		}
	}
	return done;
}

/*
 * confirm_order, distributed: confirms every live hold of the order, SKU
 * by SKU, and returns how many.  A lapsed hold fails the whole call
 * (PM102, from confirm_reservation), as do an unknown order and one with
 * nothing but released holds.
 */
int
payments_order_confirm_citus(text *order_ref)
{
	OrderSku   *skus;
	int			n;
	int			confirmed;
	bool		any = false;

	SPI_connect();
	skus = order_skus(order_ref, &n);
	for (int i = 0; i < n; i++)
		any = any || skus[i].held > 0 || skus[i].confirmed_id != 0;
	if (!any)
		payments_report_order_released(order_ref);
	confirmed = resolve_order(order_ref, skus, n, true);
	SPI_finish();
	return confirmed;
}

/*
 * release_order, distributed: releases every hold of the order, lapsed or
 * not, SKU by SKU, and returns how many.  An order with a confirmed hold
 * is refused as a whole (PM104).
 */
int
payments_order_release_citus(text *order_ref)
{
	OrderSku   *skus;
	int			n;
	int			released;

	SPI_connect();
	skus = order_skus(order_ref, &n);
	for (int i = 0; i < n; i++)
		if (skus[i].confirmed_id != 0)
			payments_report_order_confirmed(order_ref, skus[i].confirmed_id);
	released = resolve_order(order_ref, skus, n, false);
	SPI_finish();
	return released;
}

/*
 * One item of reserve with items, distributed: reserve on the SKU's node,
 * called as the owner of the function called (fn_oid), who may read the
 * tables Citus reads to route it.  reserve checks no privilege of its caller
 * (reservation.c), so running it as that owner changes nothing it does.
 * Returns the hold's id.
 */
int64
payments_hold_reserve_citus(Oid fn_oid, text *order_ref, text *sku, int64 qty,
							Datum ttl)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, INT8OID, INTERVALOID};
	Datum		values[4] = {PointerGetDatum(order_ref), PointerGetDatum(sku),
	Int64GetDatum(qty), ttl};
	bool		isnull;
	int64		id;
	PaymentsSavedUser saved;

	payments_begin_as_owner(payments_function_owner(fn_oid), true, &saved);
	SPI_connect();
	payments_execute_delegated("reserve", 4, argtypes, values, NULL);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									 1, &isnull));
	SPI_finish();
	payments_end_as_owner(&saved);
	return id;
}

/*
 * confirm_reservation(id) or release_reservation(id), distributed: the
 * two-argument form, called on the shard that has the hold, found by id
 * over every shard.  Runs as the owner of the function called (fn_oid),
 * who may read the table; neither function checks a privilege of its
 * caller.
 */
bool
payments_hold_resolve_citus(Oid fn_oid, int64 id, bool confirm)
{
	static const Oid argtypes[] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	bool		isnull;
	bool		result;
	PaymentsSavedUser saved;

	payments_begin_as_owner(payments_function_owner(fn_oid), true, &saved);
	SPI_connect();
	if (payments_execute_citus("SELECT id, sku FROM @extschema@.reservations WHERE id = $1",
							   1, argtypes, values, NULL, SPI_OK_SELECT) == 0)
		payments_report_unknown_reservation(id);
	result = resolve_hold(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										1, &isnull),
						  SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										2, &isnull),
						  confirm);
	SPI_finish();
	payments_end_as_owner(&saved);
	return result;
}
