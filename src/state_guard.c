/*-------------------------------------------------------------------------
 *
 * state_guard.c
 *	  The state guard's trigger: each move of a guarded column is checked
 *	  against its state machine and, if accepted, recorded.
 *
 * payments.guard_state (state_guard_ddl.c) attaches one row trigger to a
 * table, AFTER INSERT OR UPDATE OF col, running payments.state_guard()
 * with the machine's name as its one argument and the guarded column as
 * its one UPDATE OF column (tgattr, so a renamed column stays guarded).
 * For each row it checks the move, raising PM201 / PM202, and records it
 * in payments.state_history.  It is an AFTER trigger because that is where
 * a row is final:
 *
 * - It sees the row as written: after every BEFORE trigger (one that
 *   changes the state is checked too, one that skips the row leaves no
 *   history), and after INSERT ... ON CONFLICT has chosen between insert,
 *   update and nothing.
 *
 * - When two transactions race on a row under READ COMMITTED, the second
 *   one waits, re-evaluates its UPDATE on the version the first committed
 *   (EvalPlanQual), and its AFTER trigger gets that version as OLD, so the
 *   move is judged against the committed state.
 *
 * - It is cheaper: for a BEFORE ROW UPDATE trigger PostgreSQL locks each
 *   row before firing it, one more WAL record per row.
 *
 * An error raised by it rolls the statement back like any other, so a
 * refused move changes nothing.
 *
 * A partitioned table is guarded at the root of its partition tree, never
 * partition by partition: PostgreSQL clones the trigger to every
 * partition, and the clones also fire AFTER DELETE so that a row an UPDATE
 * moves to another partition (a DELETE and an INSERT to triggers) is
 * checked and recorded as one move; see "Rows that move between
 * partitions" below.  Its history names the partitioned table.
 *
 * The trigger runs as the user who writes the row; it reads the machines
 * (state_machine.c) and writes the history as the owner of the extension's
 * tables, as PostgreSQL's foreign key triggers do.  The hot path is one
 * hash lookup per row (the guard's entry, which points to its machine),
 * two binary searches for the move, and the history row, which is built
 * in C and inserted without SQL (record_move).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "direct_write.h"
#include "citus_shards.h"
#include "extension_catalog.h"
#include "owner_rights.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "state_guard.h"

PG_FUNCTION_INFO_V1(payments_state_guard);

#define HISTORY_NATTS	9

/*
 * A row that a cross-partition UPDATE deleted from a guarded partition,
 * waiting for its insert into the new partition (see move_remember).
 */
typedef struct PendingMove
{
	Oid			root_tgoid;
	TransactionId xid;			/* who deleted the old row ... */
	CommandId	cid;			/* ... and in which command */
	Oid			from_relid;		/* the partition it left, for messages */
	char	   *from;			/* the old row's state, or NULL */
} PendingMove;

/* Pending moves, all of transaction moves_lxid, in move_cxt */
static MemoryContext move_cxt = NULL;
static List *pending_moves = NIL;
static LocalTransactionId moves_lxid = InvalidLocalTransactionId;

/* The state a row holds, or NULL. */
static char *
row_state(GuardEntry *g, HeapTuple tuple, TupleDesc desc)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, g->attnum, desc, &isnull);
	char	   *s;

	if (isnull)
		return NULL;
	s = OutputFunctionCall(&g->out, d);
	if (g->bpchar)
	{
		int			len = strlen(s);

		while (len > 0 && s[len - 1] == ' ')
			s[--len] = '\0';
	}
	return s;
}

/*
 * The primary key's value as text: the value itself for a one-column key;
 * for a composite key, a row literal such as (1,"a b") quoted as record_out
 * quotes it, so that it reads back with a cast to the key's row type.
 */
static char *
row_key(GuardEntry *g, HeapTuple tuple, TupleDesc desc, bool for_message)
{
	StringInfoData buf;

	initStringInfo(&buf);
	if (g->npk == 1 && !for_message)
	{
		bool		isnull;

		return OutputFunctionCall(&g->pk_out[0],
								  heap_getattr(tuple, g->pk_attnums[0], desc,
											   &isnull));
	}
	if (for_message)
		appendStringInfo(&buf, "(%s)=", g->pk_names);
	appendStringInfoChar(&buf, '(');
	for (int i = 0; i < g->npk; i++)
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, g->pk_attnums[i], desc, &isnull);
		char	   *v = isnull ? "" : OutputFunctionCall(&g->pk_out[i], d);
		bool		quote = (*v == '\0');

		if (i > 0)
			appendStringInfoString(&buf, for_message ? ", " : ",");
		if (for_message)
		{
			/* as PostgreSQL prints a key in "Key (id)=(42) already exists." */
			appendStringInfoString(&buf, v);
			continue;
		}
		for (char *c = v; *c && !quote; c++)
			quote = (*c == '"' || *c == '\\' || *c == '(' || *c == ')' ||
					 *c == ',' || isspace((unsigned char) *c));
		if (quote)
			appendStringInfoChar(&buf, '"');
		for (char *c = v; *c; c++)
		{
			if (quote && (*c == '"' || *c == '\\'))
				appendStringInfoChar(&buf, *c);
			appendStringInfoChar(&buf, *c);
		}
		if (quote)
			appendStringInfoChar(&buf, '"');
	}
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* States of m by index, each in quotes, for a message: "a", "b" */
static char *
state_list(const Machine *m, const int *idx, int n)
{
	StringInfoData buf;

	Assert(n > 0);
	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s\"%s\"", i > 0 ? ", " : "",
						 m->states[idx[i]]);
	return buf.data;
}

/*
 * The detail of an invalid transition out of state fi: the states the row
 * may move to, or that it may move nowhere.  Like errdetail, for use in an
 * ereport; moved_from is as in check_move.
 */
static int
errdetail_next_states(const Machine *m, int fi, const char *key,
					  Oid moved_from)
{
	const char *from = m->states[fi];

	if (m->nnext[fi] == 0)
		return OidIsValid(moved_from) ?
			errdetail("Row %s, moving from partition \"%s\", is in terminal state \"%s\", which it cannot leave.",
					  key, get_rel_name(moved_from), from) :
			errdetail("Row %s is in terminal state \"%s\", which it cannot leave.",
					  key, from);
	return OidIsValid(moved_from) ?
		errdetail("Row %s, moving from partition \"%s\", is \"%s\", which can move only to %s.",
				  key, get_rel_name(moved_from), from,
				  state_list(m, m->next[fi], m->nnext[fi])) :
		errdetail("Row %s is \"%s\", which can move only to %s.",
				  key, from, state_list(m, m->next[fi], m->nnext[fi]));
}

/*
 * Returns normally if the move is allowed; otherwise raises PM201 (no such
 * edge, or not an initial state) or PM202 (a state the machine does not
 * define).  moved_from is the partition a row moving between partitions
 * left, or InvalidOid.
 */
static void
check_move(GuardEntry *g, Relation rel, HeapTuple newtuple,
		   const char *from, const char *to, bool is_insert, Oid moved_from)
{
	TupleDesc	desc = RelationGetDescr(rel);
	const char *col = NameStr(TupleDescAttr(desc, g->attnum - 1)->attname);
	/* a Citus shard is named by its distributed table (state_machine.c) */
	const char *relname = (g->root_relid != RelationGetRelid(rel) &&
						   !rel->rd_rel->relispartition) ?
		get_rel_name(g->root_relid) : RelationGetRelationName(rel);
	Machine    *m = state_guard_machine(g, rel);
	int			ti = to == NULL ? -1 : state_machine_find(m, to);
	int			fi;

	if (to == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("invalid state null for column \"%s\" of relation \"%s\"",
						col, relname),
				 errdetail("Row %s would have a null state, which no state machine defines.",
						   row_key(g, newtuple, desc, true)),
				 errtablecol(rel, g->attnum)));
	if (ti < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("invalid state \"%s\" for column \"%s\" of relation \"%s\"",
						to, col, relname),
				 errdetail("Row %s would be in state \"%s\", which state machine \"%s\" does not define.",
						   row_key(g, newtuple, desc, true), to,
						   g->machine_name),
				 errtablecol(rel, g->attnum)));

	if (is_insert)
	{
		int		   *initial = palloc(sizeof(int) * m->nstates);
		int			n = 0;

		if (m->initial[ti])
			return;
		for (int s = 0; s < m->nstates; s++)
			if (m->initial[s])
				initial[n++] = s;
		ereport(ERROR,
				(errcode(ERRCODE_PM_INVALID_TRANSITION),
				 errmsg("invalid initial state \"%s\" for column \"%s\" of relation \"%s\"",
						to, col, relname),
				 errdetail_plural("Row %s is new, and a new row must start in state %s.",
								  "Row %s is new, and a new row must start in one of the states %s.",
								  n, row_key(g, newtuple, desc, true),
								  state_list(m, initial, n)),
				 errtablecol(rel, g->attnum)));
	}

	fi = from == NULL ? -1 : state_machine_find(m, from);
	if (fi < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 from == NULL ?
				 errmsg("current state null of column \"%s\" of relation \"%s\" is not a state of state machine \"%s\"",
						col, relname, g->machine_name) :
				 errmsg("current state \"%s\" of column \"%s\" of relation \"%s\" is not a state of state machine \"%s\"",
						from, col, relname, g->machine_name),
				 OidIsValid(moved_from) ?
				 errdetail("Row %s, moving from partition \"%s\", cannot move out of a state the machine does not define.",
						   row_key(g, newtuple, desc, true),
						   get_rel_name(moved_from)) :
				 errdetail("Row %s cannot move out of a state the machine does not define.",
						   row_key(g, newtuple, desc, true)),
				 errhint("Add the state to the machine with payments.define_state_machine, or correct the row with the guard detached."),
				 errtablecol(rel, g->attnum)));
	if (!state_machine_has_edge(m, fi, ti))
		ereport(ERROR,
				(errcode(ERRCODE_PM_INVALID_TRANSITION),
				 errmsg("invalid transition from \"%s\" to \"%s\" for column \"%s\" of relation \"%s\"",
						from, to, col, relname),
				 errdetail_next_states(m, fi, row_key(g, newtuple, desc, true),
									   moved_from),
				 errtablecol(rel, g->attnum)));
}

/*
 * The columns of payments.state_history, in table order, as record_move
 * fills them.  The table's DEFAULTs describe the same values for anyone
 * inserting by hand; the trigger computes them itself.
 */
static const char *const history_names[HISTORY_NATTS] = {
	"id",						/* nextval of state_history_id_seq */
	"tbl", "col", "row_key", "from_state", "to_state",
	"changed_at",				/* now() */
	"txid",						/* pg_current_xact_id() */
	"changed_by"
};
static const Oid history_types[HISTORY_NATTS] = {
	INT8OID, REGCLASSOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID, XID8OID, TEXTOID
};

/*
 * One history row per accepted move.
 *
 * The row is written without SQL (see direct_write.c), because an SPI
 * INSERT per row would cost more than all the rest of the guard.  It runs
 * as the owner of the extension's tables, so a trigger someone adds to the
 * history table does too.
 */
static void
record_move(GuardEntry *g, Relation rel, HeapTuple newtuple,
			const char *from, const char *to)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Datum		changed_by;
	PaymentsSavedUser saved;
	Datum		key;
	Relation	hist;
	Oid			history_seq;
	DirectWrite dw;
	TupleTableSlot *slot;
	Datum	   *values;
	bool	   *nulls;

	/*
	 * The key's output functions may be the table owner's own: they run as
	 * the writer, before the switch to the extension's owner.
	 */
	key = CStringGetTextDatum(row_key(g, newtuple, desc, false));
	changed_by = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	payments_begin_as_owner(state_guard_tables_owner(), false, &saved);

	hist = table_open(payments_relation(PAYMENTS_REL_STATE_HISTORY),
					  RowExclusiveLock);
	history_seq = payments_relation(PAYMENTS_REL_STATE_HISTORY_ID_SEQ);
	payments_check_columns(hist, history_names, history_types,
						   HISTORY_NATTS, NULL);
	payments_direct_begin(&dw, hist, GetActiveSnapshot(), CMD_INSERT,
						  NULL, 0);
	slot = payments_direct_slot(&dw);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, false, sizeof(bool) * HISTORY_NATTS);
	values[0] = Int64GetDatum(payments_shard_unique_id(nextval_internal(history_seq, false)));
	values[1] = ObjectIdGetDatum(g->root_relid);
	values[2] = CStringGetTextDatum(NameStr(TupleDescAttr(desc, g->attnum - 1)->attname));
	values[3] = key;
	if (from == NULL)
		nulls[4] = true;
	else
		values[4] = CStringGetTextDatum(from);
	values[5] = CStringGetTextDatum(to);
	values[6] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());
	values[7] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	values[8] = changed_by;
	ExecStoreVirtualTuple(slot);
	ExecSimpleRelationInsert(dw.rri, dw.estate, slot);
	payments_direct_end(&dw);
	table_close(hist, NoLock);

	payments_end_as_owner(&saved);
}

/* ---------------------------------------------------------------------
 * Rows that move between partitions
 *
 * An UPDATE of a partitioned table that moves a row to another partition
 * deletes it from the old partition and inserts it into the new one, and
 * fires the row triggers of a DELETE and an INSERT (the UPDATE triggers of
 * the partitioned table itself fire only for foreign keys).  Nothing in the
 * trigger data links the two, so the guard of a partitioned table also
 * fires AFTER DELETE and pairs them itself:
 *
 * - heap_delete marks a row deleted by a move (its t_ctid "moved
 *   partitions"), so the DELETE half knows it is one and remembers the
 *   old state with the transaction and command that deleted the row;
 *
 * - the row is inserted by the same transaction in the same command (the
 *   UPDATE's), so the INSERT half takes the entry whose xid and command id
 *   are the new row's xmin and cmin.  Its after-trigger event is queued
 *   right after the DELETE's and fires right after it; a statement run by
 *   another trigger in between has a command id of its own.
 *
 * The pair is then checked and recorded as one UPDATE from the old state
 * to the new.  This needs the INSERT half to fire wherever the row lands,
 * which is why a partitioned table is guarded as a whole, at its root
 * (state_guard_entry).  Entries are plain backend memory: an error
 * discards the statement's, and those of another transaction are dropped
 * unused.
 * ---------------------------------------------------------------------
 */

static void
moves_begin(void)
{
	if (move_cxt == NULL)
		move_cxt = AllocSetContextCreate(TopMemoryContext,
										 "payments state guard moves",
										 ALLOCSET_SMALL_SIZES);
	if (moves_lxid != MyProc->lxid)
	{
		MemoryContextReset(move_cxt);
		pending_moves = NIL;
		moves_lxid = MyProc->lxid;
	}
}

/* The DELETE half: remember the old row's state if the row moved. */
static void
move_remember(GuardEntry *g, TriggerData *td)
{
	HeapTupleHeader old = td->tg_trigtuple->t_data;
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	char	   *from = row_state(g, td->tg_trigtuple, desc);
	PendingMove *pm;
	ListCell   *lc;
	MemoryContext oldcxt;

	moves_begin();
	oldcxt = MemoryContextSwitchTo(move_cxt);
	pm = palloc(sizeof(PendingMove));
	pm->root_tgoid = g->root_tgoid;
	pm->xid = HeapTupleHeaderGetUpdateXid(old);
	pm->cid = HeapTupleHeaderGetCmax(old);
	pm->from_relid = RelationGetRelid(td->tg_relation);
	pm->from = from == NULL ? NULL : pstrdup(from);

	/*
	 * An entry of the same command still here belongs to an earlier row
	 * whose insert fired no guard (a BEFORE INSERT trigger skipped it): it
	 * must not be taken for this one's.
	 */
	foreach(lc, pending_moves)
	{
		PendingMove *other = lfirst(lc);

		if (other->root_tgoid == pm->root_tgoid && other->xid == pm->xid &&
			other->cid == pm->cid)
			pending_moves = foreach_delete_current(pending_moves, lc);
	}
	pending_moves = lappend(pending_moves, pm);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * The INSERT half: true if the new row is the second half of a move, with
 * *from set to the state it had and *from_relid to the partition it left.
 */
static bool
move_take(GuardEntry *g, TriggerData *td, char **from, Oid *from_relid)
{
	HeapTupleHeader newtup = td->tg_trigtuple->t_data;
	TransactionId xid;
	CommandId	cid;
	ListCell   *lc;

	moves_begin();
	if (pending_moves == NIL)
		return false;
	xid = HeapTupleHeaderGetXmin(newtup);
	cid = HeapTupleHeaderGetCmin(newtup);
	foreach(lc, pending_moves)
	{
		PendingMove *pm = lfirst(lc);

		if (pm->root_tgoid == g->root_tgoid && pm->xid == xid &&
			pm->cid == cid)
		{
			*from = pm->from == NULL ? NULL : pstrdup(pm->from);
			*from_relid = pm->from_relid;
			pending_moves = foreach_delete_current(pending_moves, lc);
			return true;
		}
	}
	return false;
}

/*
 * payments.state_guard(): the guard trigger's function.
 */
Datum
payments_state_guard(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	TupleDesc	desc;
	bool		is_insert;
	HeapTuple	newtuple;
	GuardEntry *g;
	char	   *from = NULL;
	char	   *to;
	Oid			moved_from = InvalidOid;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"state_guard\" was not called by trigger manager")));
	if (!TRIGGER_FIRED_AFTER(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		TRIGGER_FIRED_BY_TRUNCATE(td->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"state_guard\" must be fired AFTER INSERT, UPDATE or DELETE, for each row"),
				 errhint("Attach the state guard with payments.guard_state.")));

	/*
	 * A DELETE matters only as the first half of a move between partitions
	 * (see move_remember); others cost no more than this test.  A row not
	 * in a heap buffer cannot carry the mark, so state_guard_entry refuses
	 * a partition that is not a heap table.
	 */
	if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		if (td->tg_relation->rd_rel->relispartition &&
			(!TTS_IS_BUFFERTUPLE(td->tg_trigslot) ||
			 HeapTupleHeaderIndicatesMovedPartitions(td->tg_trigtuple->t_data)))
		{
			state_guard_cache_begin_statement();
			g = state_guard_entry(td);
			if (!TTS_IS_BUFFERTUPLE(td->tg_trigslot))
				elog(ERROR, "state guard got a row of partition \"%s\" not in a heap buffer",
					 RelationGetRelationName(td->tg_relation));
			move_remember(g, td);
		}
		return PointerGetDatum(NULL);
	}

	is_insert = TRIGGER_FIRED_BY_INSERT(td->tg_event);
	newtuple = is_insert ? td->tg_trigtuple : td->tg_newtuple;
	desc = RelationGetDescr(td->tg_relation);

	state_guard_cache_begin_statement();
	g = state_guard_entry(td);
	to = row_state(g, newtuple, desc);

	/* the new half of a move between partitions is checked as an UPDATE */
	if (is_insert && pending_moves != NIL &&
		td->tg_relation->rd_rel->relispartition &&
		TTS_IS_BUFFERTUPLE(td->tg_trigslot) &&
		move_take(g, td, &from, &moved_from))
		is_insert = false;

	if (!is_insert)
	{
		if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
			from = row_state(g, td->tg_trigtuple, desc);
		/* an unchanged state is always accepted, and not recorded */
		if ((from == NULL && to == NULL) ||
			(from != NULL && to != NULL && strcmp(from, to) == 0))
			return PointerGetDatum(NULL);
	}

	check_move(g, td->tg_relation, newtuple, from, to, is_insert, moved_from);
	record_move(g, td->tg_relation, newtuple, from, to);
	return PointerGetDatum(NULL);
}
