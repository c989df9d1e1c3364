/*-------------------------------------------------------------------------
 *
 * direct_write.c
 *	  Writing one row of the extension's own tables without SQL.
 *
 * A hot path that writes one row it already knows (a history row, the new
 * state of a hold it has locked) does not need the planner or a full
 * executor: an SPI statement revalidates its cached plan and starts and
 * ends an executor every call, which is most of the work of such a
 * write.  These helpers set up just what PostgreSQL's own single-row
 * writers need, ExecSimpleRelationInsert and ExecSimpleRelationUpdate (the
 * routines logical replication applies rows with): an EState with a range
 * table of one relation, its ResultRelInfo and open indexes.  The write
 * itself is then PostgreSQL's: heap and every index, constraints, and the
 * row-level triggers a DBA adds to the table, whose AFTER events are fired
 * when the write ends.  Statement-level triggers (and so transition
 * tables) do not fire: there is no statement.
 *
 * What the executor would check before any write is checked here too: a
 * read-only transaction and parallel mode refuse it (25006), as
 * ExecCheckXactReadOnly refuses an INSERT or UPDATE.  The caller opens and
 * locks the relation, checks its columns (payments_check_columns, strict form)
 * and decides who may write: these run as whoever calls them, with no
 * privilege check.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "direct_write.h"

#include "access/sysattr.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/lmgr.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

/*
 * Set up a write of one row of rel: cmd is CMD_INSERT, of a whole row (cols
 * NULL), or CMD_UPDATE of the columns cols (attribute numbers), which
 * decide the UPDATE OF triggers that fire.  cols must outlive the write.
 */
void
payments_direct_begin(DirectWrite *dw, Relation rel, Snapshot snapshot,
					  CmdType cmd, const AttrNumber *cols, int ncols)
{
	payments_direct_begin_ext(dw, rel, snapshot, cmd, cols, ncols, false);
}

/*
 * payments_direct_begin, and with speculative, the unique indexes ready
 * for payments_direct_insert_if_absent.
 */
void
payments_direct_begin_ext(DirectWrite *dw, Relation rel, Snapshot snapshot,
						  CmdType cmd, const AttrNumber *cols, int ncols,
						  bool speculative)
{
	const char *cmdname = (cmd == CMD_INSERT) ? "INSERT" : "UPDATE";
	RangeTblEntry *rte;
	Bitmapset  *written = NULL;
	MemoryContext old;

	Assert(cmd == CMD_INSERT ? cols == NULL : (cmd == CMD_UPDATE && ncols > 0));
	if (XactReadOnly && !RelationUsesLocalBuffers(rel))
		PreventCommandIfReadOnly(cmdname);
	PreventCommandIfParallelMode(cmdname);
	dw->cols = cols;
	dw->ncols = ncols;

	dw->estate = CreateExecutorState();
	old = MemoryContextSwitchTo(dw->estate->es_query_cxt);

	if (cmd == CMD_INSERT)
		written = bms_add_range(NULL,
								1 - FirstLowInvalidHeapAttributeNumber,
								RelationGetNumberOfAttributes(rel) -
								FirstLowInvalidHeapAttributeNumber);
	for (int i = 0; i < ncols; i++)
		written = bms_add_member(written,
								 cols[i] - FirstLowInvalidHeapAttributeNumber);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	if (cmd == CMD_INSERT)
		rte->insertedCols = written;
	else
		rte->updatedCols = written;
	ExecInitRangeTable(dw->estate, list_make1(rte));

	dw->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(dw->rri, rel, 1, NULL, 0);
	/* so that the trigger machinery reuses rri rather than opening a copy */
	dw->estate->es_opened_result_relations = list_make1(dw->rri);
	dw->estate->es_output_cid = GetCurrentCommandId(true);
	dw->estate->es_snapshot = snapshot;
	ExecOpenIndices(dw->rri, speculative);
	EvalPlanQualInit(&dw->epqstate, dw->estate, NULL, NIL, -1);

	MemoryContextSwitchTo(old);
	AfterTriggerBeginQuery();
}

/*
 * A virtual slot of the relation's row type, empty, to build a row in;
 * freed by payments_direct_end
 */
TupleTableSlot *
payments_direct_slot(DirectWrite *dw)
{
	MemoryContext old = MemoryContextSwitchTo(dw->estate->es_query_cxt);
	TupleTableSlot *slot;

	slot = ExecInitExtraTupleSlot(dw->estate,
								  RelationGetDescr(dw->rri->ri_RelationDesc),
								  &TTSOpsVirtual);
	ExecClearTuple(slot);
	MemoryContextSwitchTo(old);
	return slot;
}

/*
 * A slot of the relation's own kind, to read a stored row into (the table
 * access method locks and fetches into it); freed by payments_direct_end
 */
TupleTableSlot *
payments_direct_table_slot(DirectWrite *dw)
{
	MemoryContext old = MemoryContextSwitchTo(dw->estate->es_query_cxt);
	TupleTableSlot *slot;

	slot = table_slot_create(dw->rri->ri_RelationDesc,
							 &dw->estate->es_tupleTable);
	MemoryContextSwitchTo(old);
	return slot;
}

/*
 * Write a new version of row, a row of the relation locked by the caller:
 * the same values but for the columns given to payments_direct_begin,
 * which get values[i] (NULL if nulls[i]) in their order.
 */
void
payments_direct_update(DirectWrite *dw, TupleTableSlot *row,
					   const Datum *values, const bool *nulls)
{
	TupleTableSlot *newrow = payments_direct_slot(dw);
	int			natts = RelationGetDescr(dw->rri->ri_RelationDesc)->natts;

	slot_getallattrs(row);
	memcpy(newrow->tts_values, row->tts_values, sizeof(Datum) * natts);
	memcpy(newrow->tts_isnull, row->tts_isnull, sizeof(bool) * natts);
	for (int i = 0; i < dw->ncols; i++)
	{
		newrow->tts_values[dw->cols[i] - 1] = values[i];
		newrow->tts_isnull[dw->cols[i] - 1] = nulls[i];
	}
	ExecStoreVirtualTuple(newrow);
	ExecSimpleRelationUpdate(dw->rri, dw->estate, &dw->epqstate, row, newrow);
}

/*
 * Insert row unless a row with its key in the unique index key_index
 * exists, as INSERT ... ON CONFLICT (key) DO NOTHING does: a conflicting
 * insert in progress is waited for, and under REPEATABLE READ a
 * conflicting row the snapshot cannot see is a serialization failure.
 * Returns false, inserting nothing, on a conflict; the caller looks again.
 * The relation has no BEFORE ROW trigger (the caller refuses them with
 * payments_direct_refuse_before_row); its
 * constraints, indexes and AFTER ROW triggers apply.  Begun with
 * speculative set.
 */
bool
payments_direct_insert_if_absent(DirectWrite *dw, TupleTableSlot *row,
								 Relation key_index)
{
	ResultRelInfo *rri = dw->rri;
	EState	   *estate = dw->estate;
	Relation	rel = rri->ri_RelationDesc;
	List	   *arbiter = list_make1_oid(RelationGetRelid(key_index));
	ItemPointerData conflict;
	TransactionId xid = GetCurrentTransactionId();
	uint32		token;
	bool		spec_conflict = false;
	List	   *recheck;

	if (rel->rd_att->constr)
		ExecConstraints(rri, row, estate);
	if (!ExecCheckIndexConstraints(rri, row, estate, &conflict, arbiter))
	{
		if (IsolationUsesXactSnapshot())
		{
			TupleTableSlot *other = payments_direct_table_slot(dw);

			if (!table_tuple_fetch_row_version(rel, &conflict, SnapshotAny, other) ||
				!table_tuple_satisfies_snapshot(rel, other, estate->es_snapshot))
				ereport(ERROR,
						(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
						 errmsg("could not serialize access due to concurrent update")));
		}
		return false;
	}

	token = SpeculativeInsertionLockAcquire(xid);
	table_tuple_insert_speculative(rel, row, estate->es_output_cid, 0, NULL, token);
	recheck = ExecInsertIndexTuples(rri, row, estate, false, true,
									&spec_conflict, arbiter);
	table_tuple_complete_speculative(rel, row, token, !spec_conflict);
	SpeculativeInsertionLockRelease(xid);
	if (spec_conflict)
	{
		list_free(recheck);
		return false;
	}
	ExecARInsertTriggers(estate, rri, row, recheck, NULL);
	list_free(recheck);
	return true;
}

/*
 * Refuse a relation with a BEFORE ROW INSERT trigger (and, if update, a
 * BEFORE ROW UPDATE trigger): such a trigger could change or skip the row
 * its caller decided on.  detail says what the caller decides, marked with
 * gettext_noop.
 */
void
payments_direct_refuse_before_row(Relation rel, bool update, const char *detail)
{
	TriggerDesc *trig = rel->trigdesc;

	if (trig != NULL &&
		(trig->trig_insert_before_row || (update && trig->trig_update_before_row)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" has a BEFORE ROW trigger",
						get_namespace_name(RelationGetNamespace(rel)),
						RelationGetRelationName(rel)),
				 errdetail_internal("%s", _(detail)),
				 errhint("Use an AFTER ROW trigger instead.")));
}

/*
 * Fire the AFTER triggers the write queued and release everything but the
 * relation, which the caller closes.
 */
void
payments_direct_end(DirectWrite *dw)
{
	AfterTriggerEndQuery(dw->estate);
	EvalPlanQualEnd(&dw->epqstate);
	ExecCloseResultRelations(dw->estate);
	ExecResetTupleTable(dw->estate->es_tupleTable, false);
	FreeExecutorState(dw->estate);
}
