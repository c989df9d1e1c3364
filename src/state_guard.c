/*-------------------------------------------------------------------------
 *
 * state_guard.c
 *	  State guard: a status column that only moves along the edges of a
 *	  declared state machine, with every accepted move recorded.
 *
 * payments.guard_state attaches one row trigger to a table,
 * payments_state_guard_<attnum>, AFTER INSERT OR UPDATE OF col, running
 * payments.state_guard() with the machine's name as its one argument and
 * the guarded column as its one UPDATE OF column (tgattr, so a renamed
 * column stays guarded).  For each row it checks the move, raising PM201 /
 * PM202, and records it in payments.state_history.  It is an AFTER trigger
 * because that is where a row is final:
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

 * Machines are cached per backend in a memory context under
 * CacheMemoryContext.  define_state_machine sends a relcache invalidation
 * for payments.state_machine_definitions, which PostgreSQL delivers to
 * every backend when the defining transaction commits (and replays locally
 * if it aborts); our relcache callback only marks the cache stale.  The
 * trigger accepts pending invalidations once per top-level statement and,
 * if the cache is stale, drops it, so a redefinition takes effect at every
 * session's next statement, even in the middle of a transaction, while a
 * statement that has started keeps the machine it began with.  Machines are
 * read with the latest snapshot, not the transaction's, so a REPEATABLE
 * READ transaction cannot fill the cache with a definition that is already
 * out of date.  This works without shared_preload_libraries.
 *
 * The trigger runs as the user who writes the row; it reads the machines
 * and writes the history as the owner of the extension's tables (as
 * PostgreSQL's foreign key triggers do).  Its one query, which loads a
 * machine, qualifies every name and operator, so the caller's search_path
 * cannot change it; the history row is built in C and inserted without
 * SQL (record_move).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "args.h"
#include "direct_write.h"
#include "extension_catalog.h"
#include "owner_rights.h"
#include "spi_util.h"

#include <ctype.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/partition.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

PG_FUNCTION_INFO_V1(payments_define_state_machine);
PG_FUNCTION_INFO_V1(payments_guard_state);
PG_FUNCTION_INFO_V1(payments_unguard_state);
PG_FUNCTION_INFO_V1(payments_state_guard);

#define MACHINE_NAME_MAX_BYTES	(NAMEDATALEN - 1)
#define STATE_MAX_BYTES			255
#define MAX_STATES				1000

/*
 * A parsed machine.  States are sorted (strcmp) so a state's index is found
 * by binary search; each state's next states keep the order they were
 * given in, which is the order messages list them in.
 */
typedef struct Machine
{
	int			nstates;
	char	  **states;
	bool	   *initial;
	int		   *nnext;
	int		  **next;
} Machine;

typedef struct MachineEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	Machine    *machine;
} MachineEntry;

/* What one guard trigger needs per row, built on its first use. */
typedef struct GuardEntry
{
	Oid			tgoid;			/* hash key */
	bool		valid;			/* cleared by a relcache invalidation */
	Oid			relid;
	AttrNumber	attnum;
	bool		bpchar;			/* char(n): ignore the padding */
	FmgrInfo	out;			/* the state column's output function */
	char		machine_name[NAMEDATALEN];
	Machine    *machine;		/* resolved on first use */
	int			npk;
	AttrNumber	pk_attnums[INDEX_MAX_KEYS];
	FmgrInfo	pk_out[INDEX_MAX_KEYS];
	char	   *pk_names;		/* "id" or "a, b", for messages */
	Oid			root_tgoid;		/* the trigger guard_state created: this one,
								 * or the one on the partitioned table this
								 * one is a clone of */
	Oid			root_relid;		/* its table, named in the history */
} GuardEntry;

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

static MemoryContext guard_cxt = NULL;
static HTAB *machine_hash = NULL;
static HTAB *guard_hash = NULL;
static bool cache_stale = true;
static Oid	definitions_relid = InvalidOid;
static Oid	tables_owner = InvalidOid;
static Oid	history_relid = InvalidOid;
static Oid	history_seqid = InvalidOid;

#define HISTORY_NATTS	9

/* The top-level statement the cache was last checked for */
static LocalTransactionId checked_lxid = InvalidLocalTransactionId;
static TimestampTz checked_stmt_start = 0;

/* Pending moves, all of transaction moves_lxid, in move_cxt */
static MemoryContext move_cxt = NULL;
static List *pending_moves = NIL;
static LocalTransactionId moves_lxid = InvalidLocalTransactionId;

static SPIPlanPtr load_plan;
static SPIPlanPtr upsert_plan;

/* ---------------------------------------------------------------------
 * Machines: parsing and lookup
 * ---------------------------------------------------------------------
 */

static int
state_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* A state's index in m, or -1 if the machine does not define it. */
static int
machine_find(const Machine *m, const char *state)
{
	int			lo = 0;
	int			hi = m->nstates - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;
		int			c = strcmp(state, m->states[mid]);

		if (c == 0)
			return mid;
		if (c < 0)
			hi = mid - 1;
		else
			lo = mid + 1;
	}
	return -1;
}

static bool
machine_has_edge(const Machine *m, int from, int to)
{
	for (int i = 0; i < m->nnext[from]; i++)
		if (m->next[from][i] == to)
			return true;
	return false;
}

static char *
checked_state_name(const char *s, int len)
{
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("state names must not be empty")));
	if (len > STATE_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("state name \"%.*s...\" is too long",
						pg_mbcliplen(s, len, 20), s),
				 errdetail("The name is %d bytes long; the limit is %d bytes.",
						   len, STATE_MAX_BYTES)));
	return pnstrdup(s, len);
}

static void
report_bad_edges(const char *from)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("next states of state \"%s\" must be a JSON array of state names",
					from),
			 errhint("Write the transitions like {\"created\": [\"paid\", \"cancelled\"], \"paid\": []}.")));
}

/*
 * Parse and check a definition, allocating the machine in the current
 * memory context.  Every state named anywhere (as a key or as a target) is
 * a state; states without outgoing edges are terminal.  Without an initial
 * list, the initial states are those no other state leads to.
 */
static Machine *
machine_build(const char *name, Jsonb *transitions, ArrayType *initial)
{
	Machine    *m = palloc0(sizeof(Machine));
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	List	   *froms = NIL;
	List	   *tolists = NIL;
	int			nall = 0;
	char	  **all;
	bool	   *seen;
	ListCell   *lf,
			   *lt;

	if (!JB_ROOT_IS_OBJECT(transitions))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("transitions must be a JSON object"),
				 errhint("Write the transitions like {\"created\": [\"paid\", \"cancelled\"], \"paid\": []}.")));
	if (JB_ROOT_COUNT(transitions) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("transitions must define at least one state")));

	/* Pass 1: read the object into (from, [to, ...]) lists. */
	it = JsonbIteratorInit(&transitions->root);
	(void) JsonbIteratorNext(&it, &v, false);	/* WJB_BEGIN_OBJECT */
	while ((tok = JsonbIteratorNext(&it, &v, false)) == WJB_KEY)
	{
		char	   *from = checked_state_name(v.val.string.val, v.val.string.len);
		List	   *tos = NIL;

		if (JsonbIteratorNext(&it, &v, false) != WJB_BEGIN_ARRAY)
			report_bad_edges(from);
		while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_END_ARRAY)
		{
			if (tok != WJB_ELEM || v.type != jbvString)
				report_bad_edges(from);
			tos = lappend(tos, checked_state_name(v.val.string.val,
												  v.val.string.len));
		}
		froms = lappend(froms, from);
		tolists = lappend(tolists, tos);
		nall += 1 + list_length(tos);
	}

	/* Pass 2: the sorted set of every state named. */
	all = palloc(sizeof(char *) * nall);
	nall = 0;
	forboth(lf, froms, lt, tolists)
	{
		ListCell   *lc;

		all[nall++] = lfirst(lf);
		foreach(lc, (List *) lfirst(lt))
			all[nall++] = lfirst(lc);
	}
	qsort(all, nall, sizeof(char *), state_cmp);
	m->nstates = 0;
	for (int i = 0; i < nall; i++)
		if (m->nstates == 0 || strcmp(all[i], all[m->nstates - 1]) != 0)
			all[m->nstates++] = all[i];
	if (m->nstates > MAX_STATES)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("state machine \"%s\" has too many states", name),
				 errdetail("It has %d states; the limit is %d.",
						   m->nstates, MAX_STATES)));
	m->states = all;
	m->initial = palloc0(sizeof(bool) * m->nstates);
	m->nnext = palloc0(sizeof(int) * m->nstates);
	m->next = palloc0(sizeof(int *) * m->nstates);

	/* Pass 3: edges by index, each target once. */
	seen = palloc0(sizeof(bool) * m->nstates);
	forboth(lf, froms, lt, tolists)
	{
		int			from = machine_find(m, lfirst(lf));
		List	   *tos = lfirst(lt);
		ListCell   *lc;

		m->next[from] = palloc(sizeof(int) * Max(list_length(tos), 1));
		foreach(lc, tos)
		{
			int			to = machine_find(m, lfirst(lc));

			if (!seen[to])
			{
				seen[to] = true;
				m->next[from][m->nnext[from]++] = to;
			}
		}
		for (int i = 0; i < m->nnext[from]; i++)
			seen[m->next[from][i]] = false;
	}

	if (initial != NULL)
	{
		Datum	   *elems;
		bool	   *nulls;
		int			n;

		deconstruct_array(initial, TEXTOID, -1, false, TYPALIGN_INT,
						  &elems, &nulls, &n);
		if (n == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("initial states must list at least one state")));
		for (int i = 0; i < n; i++)
		{
			char	   *s;
			int			idx;

			if (nulls[i])
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("initial states must not contain nulls")));
			s = TextDatumGetCString(elems[i]);
			idx = machine_find(m, s);
			if (idx < 0)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("initial state \"%s\" is not a state of state machine \"%s\"",
								s, name),
						 errhint("Name the state in the transitions, as a key or as a next state.")));
			m->initial[idx] = true;
		}
	}
	else
	{
		bool		any = false;

		/* seen[] is all false again: reuse it as "has an incoming edge" */
		for (int s = 0; s < m->nstates; s++)
			for (int i = 0; i < m->nnext[s]; i++)
				if (m->next[s][i] != s)
					seen[m->next[s][i]] = true;
		for (int s = 0; s < m->nstates; s++)
		{
			m->initial[s] = !seen[s];
			any |= m->initial[s];
		}
		if (!any)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("state machine \"%s\" has no initial state", name),
					 errdetail("Every state has an incoming edge, so none is initial by default."),
					 errhint("Pass the states a new row may start in as the argument \"initial\".")));
	}
	return m;
}

/* The normal form stored in payments.state_machine_definitions */
static Datum
machine_transitions_jsonb(const Machine *m)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int s = 0; s < m->nstates; s++)
	{
		if (s > 0)
			appendStringInfoString(&buf, ", ");
		escape_json(&buf, m->states[s]);
		appendStringInfoString(&buf, ": [");
		for (int i = 0; i < m->nnext[s]; i++)
		{
			if (i > 0)
				appendStringInfoString(&buf, ", ");
			escape_json(&buf, m->states[m->next[s][i]]);
		}
		appendStringInfoChar(&buf, ']');
	}
	appendStringInfoChar(&buf, '}');
	return DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data));
}

static Datum
machine_initial_array(const Machine *m)
{
	Datum	   *elems = palloc(sizeof(Datum) * m->nstates);
	int			n = 0;

	for (int s = 0; s < m->nstates; s++)
		if (m->initial[s])
			elems[n++] = CStringGetTextDatum(m->states[s]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false,
										   TYPALIGN_INT));
}

/* ---------------------------------------------------------------------
 * The per-backend cache
 * ---------------------------------------------------------------------
 */

/*
 * Relcache callback.  It may run in the middle of a statement (whenever a
 * lock is taken), so it only marks things out of date; nothing is freed
 * until the next statement starts.
 */
static void
state_guard_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	GuardEntry *g;

	if (relid == InvalidOid || relid == definitions_relid)
	{
		cache_stale = true;
		return;
	}
	if (guard_hash == NULL)
		return;
	hash_seq_init(&status, guard_hash);
	while ((g = hash_seq_search(&status)) != NULL)
		if (g->relid == relid || g->root_relid == relid)
			g->valid = false;
}

static void
cache_reset(void)
{
	HASHCTL		ctl;
	HeapTuple	tup;

	if (guard_cxt == NULL)
	{
		guard_cxt = AllocSetContextCreate(CacheMemoryContext,
										  "payments state guard cache",
										  ALLOCSET_DEFAULT_SIZES);
		CacheRegisterRelcacheCallback(state_guard_relcache_callback,
									  (Datum) 0);
	}
	cache_stale = false;
	machine_hash = NULL;
	guard_hash = NULL;
	MemoryContextReset(guard_cxt);

	/* The extension may have been dropped and created again. */
	definitions_relid = payments_relation(PAYMENTS_REL_STATE_MACHINE_DEFINITIONS);
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(definitions_relid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", definitions_relid);
	tables_owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	history_relid = payments_relation(PAYMENTS_REL_STATE_HISTORY);
	history_seqid = payments_relation(PAYMENTS_REL_STATE_HISTORY_ID_SEQ);

	ctl.keysize = NAMEDATALEN;
	ctl.entrysize = sizeof(MachineEntry);
	ctl.hcxt = guard_cxt;
	machine_hash = hash_create("payments state machines", 16, &ctl,
							   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(GuardEntry);
	ctl.hcxt = guard_cxt;
	guard_hash = hash_create("payments state guards", 16, &ctl,
							 HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
}

/*
 * Called at every use.  Once per top-level statement it takes in the
 * invalidations other sessions have committed since, and drops the cache
 * if a machine was redefined.  Statement start time and local transaction
 * id identify the statement; an unlikely false match only delays the check
 * to the next statement.
 */
static void
cache_begin_statement(void)
{
	TimestampTz stmt_start = GetCurrentStatementStartTimestamp();

	/*
	 * Within a statement the cache stays as it is, even if an invalidation
	 * arrived meanwhile: the rows of one statement are judged by one version
	 * of each machine, and nothing is freed while a caller may hold it.
	 */
	if (MyProc->lxid == checked_lxid && stmt_start == checked_stmt_start &&
		guard_hash != NULL)
		return;
	AcceptInvalidationMessages();
	if (cache_stale || guard_hash == NULL)
		cache_reset();
	checked_lxid = MyProc->lxid;
	checked_stmt_start = stmt_start;
}

/*
 * The machine named name, loaded into the cache on first use; NULL if no
 * such machine is defined.  The cache must be current
 * (cache_begin_statement).
 */
static Machine *
machine_get(const char *name)
{
	static const Oid argtypes[] = {TEXTOID};
	MachineEntry *e;
	Datum		values[1];
	PaymentsSavedUser saved;
	Machine    *m = NULL;

	e = hash_search(machine_hash, name, HASH_FIND, NULL);
	if (e != NULL)
		return e->machine;

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&load_plan,
					 "SELECT transitions, initial"
					 " FROM @extschema@.state_machine_definitions"
					 " WHERE name OPERATOR(pg_catalog.=) $1",
					 1, argtypes);
	values[0] = CStringGetTextDatum(name);
	if (SPI_execute_snapshot(load_plan, values, NULL, GetLatestSnapshot(),
							 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read state machine \"%s\"", name);
	if (SPI_processed == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		MemoryContext cxt;
		MemoryContext old;
		Datum		transitions = SPI_getbinval(tup, desc, 1, &isnull);
		Datum		initial = SPI_getbinval(tup, desc, 2, &isnull);

		/* one small context per machine, freed with the whole cache */
		cxt = AllocSetContextCreate(guard_cxt, "payments state machine",
									ALLOCSET_SMALL_SIZES);
		MemoryContextCopyAndSetIdentifier(cxt, name);
		old = MemoryContextSwitchTo(cxt);
		m = machine_build(name, DatumGetJsonbP(transitions),
						  DatumGetArrayTypeP(initial));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	payments_end_as_owner(&saved);

	/* Missing machines are not remembered: the error stops the statement. */
	if (m != NULL)
	{
		e = hash_search(machine_hash, name, HASH_ENTER, NULL);
		e->machine = m;
	}
	return m;
}

/* ---------------------------------------------------------------------
 * Guarded tables
 * ---------------------------------------------------------------------
 */

/*
 * The guard compares states as strings, exactly (byte for byte): it
 * accepts text, varchar, char(n) (trailing blanks ignored, as char(n) does),
 * name, any enum, and domains over these.
 */
static void
check_state_column(Relation rel, AttrNumber attnum, Oid *typoutput,
				   bool *bpchar)
{
	Form_pg_attribute att;
	Oid			base;
	bool		isvarlena;

	if (attnum <= 0 || attnum > RelationGetNumberOfAttributes(rel) ||
		TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attisdropped)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column number %d of relation \"%s\" does not exist",
						attnum, RelationGetRelationName(rel))));
	att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	base = getBaseType(att->atttypid);
	if (base != TEXTOID && base != VARCHAROID && base != BPCHAROID &&
		base != NAMEOID && !type_is_enum(base))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of relation \"%s\" is of type %s, which the state guard cannot compare",
						NameStr(att->attname), RelationGetRelationName(rel),
						format_type_be(att->atttypid)),
				 errhint("Guard a column of type text, varchar, char, name or an enum type.")));
	getTypeOutputInfo(att->atttypid, typoutput, &isvarlena);
	*bpchar = (base == BPCHAROID);
}

/* The primary key's columns, in index order; errors if there is none. */
static int
primary_key_columns(Relation rel, AttrNumber *attnums)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	tup;
	Form_pg_index idx;
	int			n;

	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s\" has no primary key",
						RelationGetRelationName(rel)),
				 errdetail("The state guard names rows in its messages and in payments.state_history by their primary key."),
				 errhint("Add a primary key to the table, then guard the column.")));
	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for index %u", pkoid);
	idx = (Form_pg_index) GETSTRUCT(tup);
	n = idx->indnkeyatts;
	for (int i = 0; i < n; i++)
		attnums[i] = idx->indkey.values[i];
	ReleaseSysCache(tup);
	return n;
}

/*
 * The trigger guard_state created for tg: tg itself, or for a partition,
 * the trigger on the partitioned table it was cloned from (walking up
 * through every level).
 */
static void
guard_root(Trigger *tg, Relation rel, Oid *root_tgoid, Oid *root_relid)
{
	Oid			tgoid = tg->tgoid;
	Oid			relid = RelationGetRelid(rel);
	Relation	tgrel;

	*root_tgoid = tgoid;
	*root_relid = relid;
	if (!tg->tgisclone)
		return;

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	while (OidIsValid(tgoid))
	{
		ScanKeyData key;
		SysScanDesc scan;
		HeapTuple	tup;
		Form_pg_trigger trig;

		ScanKeyInit(&key, Anum_pg_trigger_oid, BTEqualStrategyNumber,
					F_OIDEQ, ObjectIdGetDatum(tgoid));
		scan = systable_beginscan(tgrel, TriggerOidIndexId, true, NULL,
								  1, &key);
		tup = systable_getnext(scan);
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "could not find tuple for trigger %u", tgoid);
		trig = (Form_pg_trigger) GETSTRUCT(tup);
		*root_tgoid = tgoid;
		*root_relid = trig->tgrelid;
		tgoid = trig->tgparentid;
		systable_endscan(scan);
	}
	table_close(tgrel, AccessShareLock);
}

static GuardEntry *
guard_entry(TriggerData *td)
{
	Trigger    *tg = td->tg_trigger;
	Relation	rel = td->tg_relation;
	GuardEntry *g;
	bool		found;
	Oid			typoutput;
	StringInfoData names;
	MemoryContext old;

	g = hash_search(guard_hash, &tg->tgoid, HASH_ENTER, &found);
	if (found && g->valid)
		return g;
	g->valid = false;
	g->relid = RelationGetRelid(rel);
	g->root_relid = InvalidOid;

	if (tg->tgnargs != 1 || tg->tgnattr != 1 ||
		strlen(tg->tgargs[0]) > MACHINE_NAME_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("trigger \"%s\" on relation \"%s\" must have one state machine argument and one UPDATE OF column",
						tg->tgname, RelationGetRelationName(rel)),
				 errhint("Attach the state guard with payments.guard_state.")));
	strlcpy(g->machine_name, tg->tgargs[0], NAMEDATALEN);
	g->machine = NULL;
	g->attnum = tg->tgattr[0];
	check_state_column(rel, g->attnum, &typoutput, &g->bpchar);
	fmgr_info_cxt(typoutput, &g->out, guard_cxt);

	g->npk = primary_key_columns(rel, g->pk_attnums);
	initStringInfo(&names);
	for (int i = 0; i < g->npk; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel),
											  g->pk_attnums[i] - 1);
		bool		isvarlena;

		getTypeOutputInfo(att->atttypid, &typoutput, &isvarlena);
		fmgr_info_cxt(typoutput, &g->pk_out[i], guard_cxt);
		appendStringInfo(&names, "%s%s", i > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)));
	}
	old = MemoryContextSwitchTo(guard_cxt);
	g->pk_names = pstrdup(names.data);
	MemoryContextSwitchTo(old);

	/*
	 * A row that an UPDATE moves to another partition is deleted from one
	 * and inserted into the other.  The guard pairs the two (move_remember,
	 * move_take), which is sound only if every partition the row can move
	 * to is guarded by the same trigger: the guard must have been attached
	 * to the root of the partition tree.  guard_state refuses partitions;
	 * this catches a guarded table attached as a partition later.
	 */
	guard_root(tg, rel, &g->root_tgoid, &g->root_relid);
	if (get_rel_relispartition(g->root_relid))
	{
		List	   *ancestors = get_partition_ancestors(g->root_relid);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the state guard of column \"%s\" of relation \"%s\" does not cover its partition tree",
						NameStr(TupleDescAttr(RelationGetDescr(rel), g->attnum - 1)->attname),
						RelationGetRelationName(rel)),
				 errdetail("The guard was attached to \"%s\", a partition of \"%s\", so a row moving between partitions could not be checked.",
						   get_rel_name(g->root_relid),
						   get_rel_name(llast_oid(ancestors))),
				 errhint("Remove the guard with payments.unguard_state and guard the partitioned table at the root of the tree instead.")));
	}

	/*
	 * Moves are recognized by the mark heap_delete leaves in the old row
	 * (see move_remember).
	 */
	if (rel->rd_rel->relispartition && rel->rd_rel->relam != HEAP_TABLE_AM_OID)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the state guard cannot check partition \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The state guard supports partitions stored in heap tables only.")));
	g->valid = true;
	return g;
}

static Machine *
guard_machine(GuardEntry *g, Relation rel)
{
	if (g->machine == NULL)
		g->machine = machine_get(g->machine_name);
	if (g->machine == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("state machine \"%s\" does not exist", g->machine_name),
				 errdetail("Column \"%s\" of relation \"%s\" is guarded by it.",
						   NameStr(TupleDescAttr(RelationGetDescr(rel), g->attnum - 1)->attname),
						   RelationGetRelationName(rel)),
				 errhint("Define it with payments.define_state_machine.")));
	return g->machine;
}

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

/* "paid" in quotes, or null as a word */
static char *
state_label(const char *s)
{
	return s == NULL ? "null" : psprintf("\"%s\"", s);
}

static char *
state_list(const Machine *m, const int *idx, int n, const char *none)
{
	StringInfoData buf;

	if (n == 0)
		return pstrdup(none);
	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s\"%s\"", i > 0 ? ", " : "",
						 m->states[idx[i]]);
	return buf.data;
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
	const char *relname = RelationGetRelationName(rel);
	Machine    *m = guard_machine(g, rel);
	int			ti = to == NULL ? -1 : machine_find(m, to);
	int			fi;

	if (ti < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("invalid state %s for column \"%s\" of relation \"%s\"",
						state_label(to), col, relname),
				 errdetail("Row %s: state machine \"%s\" has no state %s.",
						   row_key(g, newtuple, desc, true), g->machine_name,
						   state_label(to)),
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
				 errdetail("Row %s is new; allowed initial states: %s.",
						   row_key(g, newtuple, desc, true),
						   state_list(m, initial, n, "none")),
				 errtablecol(rel, g->attnum)));
	}

	fi = from == NULL ? -1 : machine_find(m, from);
	if (fi < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("current state %s of column \"%s\" of relation \"%s\" is not a state of state machine \"%s\"",
						state_label(from), col, relname, g->machine_name),
				 OidIsValid(moved_from) ?
				 errdetail("Row %s, moving from partition \"%s\", cannot move out of a state the machine does not define.",
						   row_key(g, newtuple, desc, true),
						   get_rel_name(moved_from)) :
				 errdetail("Row %s cannot move out of a state the machine does not define.",
						   row_key(g, newtuple, desc, true)),
				 errhint("Add the state to the machine with payments.define_state_machine, or correct the row with the guard detached."),
				 errtablecol(rel, g->attnum)));
	if (!machine_has_edge(m, fi, ti))
		ereport(ERROR,
				(errcode(ERRCODE_PM_INVALID_TRANSITION),
				 errmsg("invalid transition from \"%s\" to \"%s\" for column \"%s\" of relation \"%s\"",
						from, to, col, relname),
				 OidIsValid(moved_from) ?
				 errdetail("Row %s, moving from partition \"%s\", is \"%s\"; allowed next states: %s.",
						   row_key(g, newtuple, desc, true),
						   get_rel_name(moved_from), from,
						   state_list(m, m->next[fi], m->nnext[fi],
									  "none (terminal)")) :
				 errdetail("Row %s is \"%s\"; allowed next states: %s.",
						   row_key(g, newtuple, desc, true), from,
						   state_list(m, m->next[fi], m->nnext[fi],
									  "none (terminal)")),
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
 * The row is written without SQL (see direct_write.c): an SPI INSERT
 * was most of the guard's cost.  It runs as the owner of the extension's
 * tables, so a trigger someone adds to the history table does too.
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
	payments_begin_as_owner(tables_owner, false, &saved);

	hist = table_open(history_relid, RowExclusiveLock);
	payments_direct_check_columns(hist, history_names, history_types,
								  HISTORY_NATTS);
	payments_direct_begin(&dw, hist, GetActiveSnapshot(), CMD_INSERT,
						  NULL, 0);
	slot = payments_direct_slot(&dw);
	values = slot->tts_values;
	nulls = slot->tts_isnull;
	memset(nulls, false, sizeof(bool) * HISTORY_NATTS);
	values[0] = Int64GetDatum(nextval_internal(history_seqid, false));
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
 * (guard_entry).  Entries are plain backend memory: an error discards the
 * statement's, and those of another transaction are dropped unused.
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
	 * in a heap buffer cannot carry the mark, so guard_entry refuses a
	 * partition that is not a heap table.
	 */
	if (TRIGGER_FIRED_BY_DELETE(td->tg_event))
	{
		if (td->tg_relation->rd_rel->relispartition &&
			(!TTS_IS_BUFFERTUPLE(td->tg_trigslot) ||
			 HeapTupleHeaderIndicatesMovedPartitions(td->tg_trigtuple->t_data)))
		{
			cache_begin_statement();
			g = guard_entry(td);
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

	cache_begin_statement();
	g = guard_entry(td);
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

/* ---------------------------------------------------------------------
 * SQL-callable functions
 * ---------------------------------------------------------------------
 */

/*
 * payments.define_state_machine(name, transitions, initial)
 */
Datum
payments_define_state_machine(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, JSONBOID, TEXTARRAYOID};
	char	   *name;
	Machine    *m;
	Datum		values[3];

	name = text_to_cstring(payments_arg_text(fcinfo, 0, "state machine name",
											 MACHINE_NAME_MAX_BYTES));
	payments_arg_not_null(fcinfo, 1, "transitions");
	payments_check_writable("define a state machine");

	m = machine_build(name, PG_GETARG_JSONB_P(1),
					  PG_ARGISNULL(2) ? NULL : PG_GETARG_ARRAYTYPE_P(2));
	values[0] = CStringGetTextDatum(name);
	values[1] = machine_transitions_jsonb(m);
	values[2] = machine_initial_array(m);

	SPI_connect();
	payments_prepare(&upsert_plan,
					 "INSERT INTO @extschema@.state_machine_definitions"
					 " (name, transitions, initial, defined_by)"
					 " VALUES ($1, $2, $3, session_user)"
					 " ON CONFLICT (name) DO UPDATE"
					 " SET transitions = excluded.transitions,"
					 "  initial = excluded.initial,"
					 "  defined_at = now(), defined_by = excluded.defined_by",
					 3, argtypes);
	payments_execute(upsert_plan, values, NULL, SPI_OK_INSERT, 0);
	SPI_finish();

	/*
	 * Every backend drops its cached machines when this transaction commits
	 * (this one, at its next command); see the file header.
	 */
	CacheInvalidateRelcacheByRelid(payments_relation(PAYMENTS_REL_STATE_MACHINE_DEFINITIONS));
	PG_RETURN_VOID();
}

static Oid
state_guard_function_oid(void)
{
	return LookupFuncName(list_make2(makeString(get_namespace_name(payments_schema_oid())),
									 makeString("state_guard")),
						  0, NULL, false);
}

/*
 * The guard triggers on rel for column attnum (normally zero or one).  If
 * machine is not NULL, it is set to the machine they follow.
 */
static List *
guard_triggers(Relation rel, AttrNumber attnum, char **machine)
{
	Oid			fn = state_guard_function_oid();
	TriggerDesc *trigdesc = rel->trigdesc;
	List	   *names = NIL;

	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &trigdesc->triggers[i];

		if (tg->tgfoid != fn || tg->tgnattr != 1 || tg->tgattr[0] != attnum)
			continue;
		names = lappend(names, pstrdup(tg->tgname));
		if (machine != NULL && tg->tgnargs == 1)
			*machine = pstrdup(tg->tgargs[0]);
	}
	return names;
}

static AttrNumber
guarded_column(Relation rel, Name col)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), NameStr(*col));

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						NameStr(*col), RelationGetRelationName(rel))));
	return attnum;
}

static char *
qualified_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

static void
execute_ddl(const char *sql)
{
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not execute \"%s\"", sql);
}

/*
 * payments.guard_state(tbl, col, machine)
 *
 * Runs as the caller: CREATE TRIGGER checks the caller's TRIGGER privilege
 * on the table.  That privilege is checked here first, before the table is
 * locked, so that nobody can lock a table they have no rights on.
 */
Datum
payments_guard_state(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Name		col;
	char	   *machine;
	Relation	rel;
	AttrNumber	attnum;
	AclResult	aclresult;
	Oid			typoutput;
	bool		bpchar;
	AttrNumber	pk[INDEX_MAX_KEYS];
	char	   *current = NULL;
	char	   *tbl;

	payments_arg_not_null(fcinfo, 0, "table");
	payments_arg_not_null(fcinfo, 1, "column");
	relid = PG_GETARG_OID(0);
	col = PG_GETARG_NAME(1);
	machine = text_to_cstring(payments_arg_text(fcinfo, 2, "state machine name",
												MACHINE_NAME_MAX_BYTES));
	payments_check_writable("guard a state column");

	aclresult = pg_class_aclcheck(relid, GetUserId(), ACL_TRIGGER);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));

	/* the lock CREATE TRIGGER takes */
	rel = table_open(relid, ShareRowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot guard a column of relation \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The state guard supports ordinary and partitioned tables only.")));
	/* see guard_entry */
	if (rel->rd_rel->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot guard a column of partition \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("A row that an UPDATE moves to another partition can be checked only if every partition is guarded alike."),
				 errhint("Guard the partitioned table \"%s\" instead: its guard applies to every partition.",
						 get_rel_name(llast_oid(get_partition_ancestors(relid))))));
	attnum = guarded_column(rel, col);
	check_state_column(rel, attnum, &typoutput, &bpchar);
	(void) primary_key_columns(rel, pk);

	if (guard_triggers(rel, attnum, &current) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("column \"%s\" of relation \"%s\" is already guarded",
						NameStr(*col), RelationGetRelationName(rel)),
				 errdetail("It follows state machine \"%s\".",
						   current ? current : "?"),
				 errhint("Call payments.unguard_state first to guard it with another machine.")));

	cache_begin_statement();
	if (machine_get(machine) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("state machine \"%s\" does not exist", machine),
				 errhint("Define it with payments.define_state_machine.")));

	/*
	 * PostgreSQL clones a partitioned table's row trigger to every
	 * partition, present and future.  Only there can a row move between
	 * partitions, which the trigger sees as a DELETE and an INSERT: see
	 * move_remember.
	 */
	tbl = qualified_name(rel);
	SPI_connect();
	execute_ddl(psprintf("CREATE TRIGGER payments_state_guard_%d"
						 " AFTER INSERT OR UPDATE OF %s%s ON %s"
						 " FOR EACH ROW EXECUTE FUNCTION %s.state_guard(%s)",
						 attnum, quote_identifier(NameStr(*col)),
						 rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ?
						 " OR DELETE" : "",
						 tbl, payments_schema_quoted(),
						 quote_literal_cstr(machine)));
	SPI_finish();
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}

/*
 * payments.unguard_state(tbl, col)
 *
 * Runs as the caller: DROP TRIGGER needs the table's owner.
 */
Datum
payments_unguard_state(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Name		col;
	Relation	rel;
	AttrNumber	attnum;
	List	   *names;
	ListCell   *lc;
	char	   *tbl;

	payments_arg_not_null(fcinfo, 0, "table");
	payments_arg_not_null(fcinfo, 1, "column");
	relid = PG_GETARG_OID(0);
	col = PG_GETARG_NAME(1);
	payments_check_writable("unguard a state column");

	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER,
					   get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));

	/* the lock DROP TRIGGER takes */
	rel = table_open(relid, AccessExclusiveLock);
	attnum = guarded_column(rel, col);
	names = guard_triggers(rel, attnum, NULL);
	if (names == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("column \"%s\" of relation \"%s\" is not guarded",
						NameStr(*col), RelationGetRelationName(rel))));

	tbl = qualified_name(rel);
	SPI_connect();
	foreach(lc, names)
		execute_ddl(psprintf("DROP TRIGGER %s ON %s",
							 quote_identifier(lfirst(lc)), tbl));
	SPI_finish();
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}
