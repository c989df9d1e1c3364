/*-------------------------------------------------------------------------
 *
 * reservation_tables.c
 *	  The layout of payments.stock_slots and payments.reservations, and
 *	  reading or writing one of their rows without SQL.
 *
 * Every sale takes units from a slot, inserts a hold and confirms it, so
 * those rows are written with the table access method and
 * ExecSimpleRelation* (see direct_write.c): an SPI statement's plan
 * revalidation and executor start-up cost more than the write itself.
 * Each such call behaves as the SQL it replaces would when run through
 * SPI:
 *
 * - a new command and a fresh snapshot per call (CommandCounterIncrement,
 *   then the transaction snapshot), so a call sees what its own statement
 *   wrote before it;
 * - a row is locked only if it qualifies on the snapshot, and under READ
 *   COMMITTED a row a concurrent transaction has changed is followed to
 *   the version it committed and judged again (as EvalPlanQual does);
 *   under REPEATABLE READ or SERIALIZABLE that is a serialization failure;
 * - SKIP LOCKED where the SQL would say so.
 *
 * These calls run as whoever called the SQL function: nothing here checks
 * a privilege or applies row-level security (see the rights paragraph in
 * reservation.c).  The tables' layout is checked on every call, which
 * costs a few comparisons, so that a table altered by hand gets a clear
 * error, not a row with values in the wrong columns.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reservation.h"
#include "citus_shards.h"
#include "extension_catalog.h"
#include "spi_util.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

static const char *const slots_names[SLOTS_NATTS] = {"sku", "slot", "available"};
static const Oid slots_types[SLOTS_NATTS] = {TEXTOID, INT4OID, INT8OID};

static const AttrNumber sharded_hold_key[2] = {HOLD_ATT_SKU, HOLD_ATT_ID};

static const char *const holds_names[HOLDS_NATTS] = {
	"id", "order_ref", "sku", "qty", "state", "expires_at", "created_at",
	"resolved_at"
};
static const Oid holds_types[HOLDS_NATTS] = {
	INT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID
};

/*
 * Open one of the tables for a read and a write of the columns cols (all
 * of them for an INSERT), as a new command with a fresh snapshot.
 */
void
reservation_call_begin(RowCall *call, ReservationTable table, CmdType cmd,
					   const AttrNumber *cols, int ncols)
{
	bool		slots = (table == RESERVATION_TABLE_STOCK_SLOTS);

	call->rel = table_open(payments_relation(slots ? PAYMENTS_REL_STOCK_SLOTS :
											 PAYMENTS_REL_RESERVATIONS),
						   RowExclusiveLock);
	if (slots)
		payments_check_columns(call->rel, slots_names, slots_types,
							   SLOTS_NATTS, NULL);
	else
		payments_check_columns(call->rel, holds_names, holds_types,
							   HOLDS_NATTS, NULL);

	CommandCounterIncrement();
	call->snapshot = RegisterSnapshot(GetTransactionSnapshot());
	PushActiveSnapshot(call->snapshot);
	payments_direct_begin(&call->dw, call->rel, call->snapshot, cmd,
						  cols, ncols);

	call->pkey = NULL;
	for (int i = 0; i < call->dw.rri->ri_NumIndices; i++)
		if (call->dw.rri->ri_IndexRelationDescs[i]->rd_index->indisprimary)
			call->pkey = call->dw.rri->ri_IndexRelationDescs[i];
	/* (sku, slot) and (id), or (sku, id) once distributed by sku */
	if (slots)
		payments_check_key_index(call->rel, call->pkey, NULL, 2);
	else if (payments_shards_distributed())
		payments_check_key_index(call->rel, call->pkey, sharded_hold_key, 2);
	else
		payments_check_key_index(call->rel, call->pkey, NULL, 1);
}

void
reservation_call_end(RowCall *call)
{
	payments_direct_end(&call->dw);
	PopActiveSnapshot();
	UnregisterSnapshot(call->snapshot);
	table_close(call->rel, NoLock);
}

void
reservation_report_concurrent_update(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent update")));
}

void
reservation_report_concurrent_delete(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("could not serialize access due to concurrent delete")));
}

/*
 * Lock the latest version of the row whose snapshot version is at tid, as
 * FOR NO KEY UPDATE does (with wait LockWaitSkip, SKIP LOCKED), and leave
 * that version in slot.
 */
RowLock
reservation_lock_latest(RowCall *call, ItemPointer tid, TupleTableSlot *slot,
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
			reservation_report_concurrent_update();
			break;
		case TM_Deleted:
			if (IsolationUsesXactSnapshot())
				reservation_report_concurrent_delete();
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

/* Column col of the first row an SPI query returned, as a bigint; 0 if NULL */
int64
reservation_spi_int64(int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
								  col, &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}
