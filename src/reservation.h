/*-------------------------------------------------------------------------
 *
 * reservation.h
 *	  Inventory reservations: declarations shared by the files of the
 *	  component.
 *
 *	  reservation.c			the SQL functions, their arguments, and the
 *							design: storage, hot path and lock order
 *	  reservation_holds.c	a hold's life: reserve, confirm, release, expire
 *	  reservation_slots.c	a SKU's stock slots: the slot choice, giving
 *							units back, stock_set and stock_adjust
 *	  reservation_tables.c	the tables' layout, and reading or writing one
 *							of their rows without SQL
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_RESERVATION_H
#define PAYMENTS_RESERVATION_H

#include "payments.h"
#include "direct_write.h"

#include "datatype/timestamp.h"

/* Limits on arguments; the install script's CHECK constraints agree */
#define RESERVATION_SKU_MAX_BYTES		255
#define RESERVATION_ORDER_REF_MAX_BYTES	255
#define RESERVATION_SLOTS_MAX			1024
#define RESERVATION_ITEMS_MAX			1000
/* bounds every quantity so that no sum of them can overflow a bigint */
#define RESERVATION_STOCK_MAX			INT64CONST(1000000000000000)
/*
 * The longest TTL a hold may be given: stock held for a month is stock
 * lost to every other buyer, while an idempotency key is kept for up to a
 * year (IDEMPOTENCY_TTL_MAX_USECS) because retries may come that late.
 */
#define RESERVATION_TTL_MAX_USECS		(INT64CONST(30) * USECS_PER_DAY)

/*
 * Where a hold stands.  payments.reservations.state stores the first four
 * by name (hold_state_names in reservation_holds.c); HOLD_LAPSED is how a
 * 'held' row past its TTL reads, and HOLD_NONE stands for a reservation
 * that does not exist.  SQL text names a state as a literal, so that the
 * planner can use the partial indexes on state = 'held'.
 */
typedef enum HoldState
{
	HOLD_HELD,
	HOLD_CONFIRMED,
	HOLD_RELEASED,
	HOLD_EXPIRED,
	HOLD_LAPSED,
	HOLD_NONE
} HoldState;

/* SKUs in byte order: the one fixed order in which they are locked */
static inline int
reservation_compare_sku(const text *a, const text *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

/* reservation_holds.c */
extern int64 payments_hold_reserve(Oid fn_oid, text *order_ref, text *sku,
								   int64 qty, Datum ttl);
extern bool payments_hold_confirm(int64 id, text *sku);
extern bool payments_hold_release(int64 id, text *sku);
extern int	payments_order_confirm(text *order_ref);
extern int	payments_order_release(text *order_ref);
extern int	payments_holds_expire(int32 max_rows);
extern int64 payments_holds_reclaim_lapsed(text *sku);
extern int64 payments_holds_held_units(text *sku);
extern void payments_report_unknown_reservation(int64 id);
extern void payments_report_order_unknown(text *order_ref);
extern void payments_report_order_released(text *order_ref);
extern void payments_report_order_confirmed(text *order_ref, int64 id);

/* reservation_slots.c */
extern void payments_slots_take(Oid fn_oid, text *sku, int64 qty);
extern bool payments_slots_put_back(text *sku, int64 qty, bool wait);
extern void payments_stock_set_units(text *sku, int64 on_hand, int32 slots);
extern int64 payments_stock_adjust_units(text *sku, int64 delta);
extern void payments_report_unknown_sku(text *sku);

/* reservation_citus.c: the calls over several SKUs or by id, distributed */
extern int	payments_order_confirm_citus(text *order_ref);
extern int	payments_order_release_citus(text *order_ref);
extern int64 payments_hold_reserve_citus(Oid fn_oid, text *order_ref, text *sku,
										 int64 qty, Datum ttl);
extern bool payments_hold_resolve_citus(Oid fn_oid, int64 id, bool confirm);

/* reservation_tables.c: one row of a reservation table, without SQL */
typedef enum ReservationTable
{
	RESERVATION_TABLE_STOCK_SLOTS,
	RESERVATION_TABLE_RESERVATIONS
} ReservationTable;

/* payments.stock_slots, in table order */
#define SLOT_ATT_SKU		1
#define SLOT_ATT_SLOT		2
#define SLOT_ATT_AVAIL		3
#define SLOTS_NATTS			3

/* payments.reservations, in table order */
#define HOLD_ATT_ID			1
#define HOLD_ATT_ORDER_REF	2
#define HOLD_ATT_SKU		3
#define HOLD_ATT_QTY		4
#define HOLD_ATT_STATE		5
#define HOLD_ATT_EXPIRES	6
#define HOLD_ATT_CREATED	7
#define HOLD_ATT_RESOLVED	8
#define HOLDS_NATTS			8

/* What one read or write of a row works on */
typedef struct RowCall
{
	Relation	rel;
	Snapshot	snapshot;
	DirectWrite dw;
	Relation	pkey;
} RowCall;

/* How reservation_lock_latest found the row */
typedef enum RowLock
{
	ROW_LOCKED,					/* locked; its latest version is in the slot */
	ROW_GONE,					/* deleted meanwhile (READ COMMITTED) */
	ROW_BUSY					/* another transaction holds it, and we skip */
} RowLock;

extern void reservation_call_begin(RowCall *call, ReservationTable table,
								   CmdType cmd, const AttrNumber *cols,
								   int ncols);
extern void reservation_call_end(RowCall *call);
extern RowLock reservation_lock_latest(RowCall *call, ItemPointer tid,
									   TupleTableSlot *slot,
									   LockWaitPolicy wait);
extern void reservation_report_concurrent_update(void);
extern void reservation_report_concurrent_delete(void);
extern int64 reservation_spi_int64(int col);

#endif							/* PAYMENTS_RESERVATION_H */
