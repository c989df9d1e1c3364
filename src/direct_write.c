/*-------------------------------------------------------------------------
 *
 * direct_write.c
 *	  Writing one row of the extension's own tables without SQL.
 *
 * A hot path that writes one row it already knows (a history row, the new
 * state of a hold it has locked) does not need the planner or a full
 * executor: an SPI statement revalidates its cached plan and starts and
 * ends an executor every call, which measured as most of the cost of such
 * a write.  These helpers set up just what PostgreSQL's own single-row
 * writers need, ExecSimpleRelationInsert and ExecSimpleRelationUpdate (the
 * routines logical replication applies rows with): an EState with a range
 * table of one relation, its ResultRelInfo and open indexes.  The write
 * itself is then PostgreSQL's: heap and every index, constraints, and any
 * triggers a DBA added to the table, whose AFTER events are fired when the
 * write ends.
 *
 * The caller opens and locks the relation, and checks privileges: these
 * run as whoever calls them.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"

#include "access/xact.h"
#include "catalog/pg_class.h"
#include "commands/trigger.h"
#include "nodes/makefuncs.h"
#include "utils/rel.h"

void
payments_direct_begin(DirectWrite *dw, Relation rel, Snapshot snapshot)
{
	RangeTblEntry *rte = makeNode(RangeTblEntry);

	dw->estate = CreateExecutorState();
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	ExecInitRangeTable(dw->estate, list_make1(rte));

	dw->rri = makeNode(ResultRelInfo);
	InitResultRelInfo(dw->rri, rel, 1, NULL, 0);
	/* so that the trigger machinery reuses rri rather than opening a copy */
	dw->estate->es_opened_result_relations = list_make1(dw->rri);
	dw->estate->es_output_cid = GetCurrentCommandId(true);
	dw->estate->es_snapshot = snapshot;
	ExecOpenIndices(dw->rri, false);
	EvalPlanQualInit(&dw->epqstate, dw->estate, NULL, NIL, -1);
	AfterTriggerBeginQuery();
}

/* A virtual slot of the relation's row type, freed by payments_direct_end */
TupleTableSlot *
payments_direct_slot(DirectWrite *dw)
{
	TupleTableSlot *slot;

	slot = ExecInitExtraTupleSlot(dw->estate,
								  RelationGetDescr(dw->rri->ri_RelationDesc),
								  &TTSOpsVirtual);
	ExecClearTuple(slot);
	return slot;
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
