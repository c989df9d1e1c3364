/*-------------------------------------------------------------------------
 *
 * state_machine.c
 *	  State machines: a definition parsed and checked, and the per-backend
 *	  cache of machines and of the guard triggers that follow them.
 *
 * A definition maps each state to the states it may move to, and may list
 * the states a new row starts in.  It is parsed into sorted states with
 * edges by index: define_state_machine stores that normal form, and the
 * trigger checks a move with two binary searches and a short scan.
 *
 * Machines are cached per backend in a memory context under
 * CacheMemoryContext, beside what each guard trigger needs per row
 * (GuardEntry, keyed by the trigger's OID).  define_state_machine sends a
 * relcache invalidation for payments.state_machine_definitions, which
 * PostgreSQL delivers to every backend when the defining transaction
 * commits (and replays locally if it aborts); the relcache callback only
 * marks the cache stale.  The trigger accepts pending invalidations once
 * per top-level statement and, if the cache is stale, drops it, so a
 * redefinition takes effect at every session's next statement, even in the
 * middle of a transaction, while a statement that has started keeps the
 * machine it began with.  Machines are read with the latest snapshot, not
 * the transaction's, so a REPEATABLE READ transaction cannot fill the
 * cache with a definition that is already out of date.  This works without
 * shared_preload_libraries.
 *
 * The relation OIDs come from extension_catalog.c; this cache keeps only
 * what is derived from the user's tables and the definitions.  Machines
 * are loaded as the owner of the extension's tables, by one query that
 * qualifies every name and operator, so the caller's search_path cannot
 * change it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "citus_shards.h"
#include "citus_tables.h"
#include "extension_catalog.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/partition.h"
#include "catalog/pg_am.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "state_guard.h"

#define STATE_MAX_BYTES			255
#define MAX_STATES				1000

typedef struct MachineEntry
{
	char		name[NAMEDATALEN];	/* hash key */
	Machine    *machine;
} MachineEntry;

static MemoryContext guard_cxt = NULL;
static HTAB *machine_hash = NULL;
static HTAB *guard_hash = NULL;
static bool cache_stale = true;
static Oid	tables_owner = InvalidOid;

/*
 * The definitions table's OID as of the last reset: the relcache callback
 * compares against it, and a callback must not look anything up.
 */
static Oid	definitions_relid = InvalidOid;

/* The top-level statement the cache was last checked for */
static LocalTransactionId checked_lxid = InvalidLocalTransactionId;
static TimestampTz checked_stmt_start = 0;

static SPIPlanPtr load_plan;

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
int
state_machine_find(const Machine *m, const char *state)
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

bool
state_machine_has_edge(const Machine *m, int from, int to)
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
Machine *
state_machine_parse(const char *name, Jsonb *transitions, ArrayType *initial)
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
		int			from = state_machine_find(m, lfirst(lf));
		List	   *tos = lfirst(lt);
		ListCell   *lc;

		m->next[from] = palloc(sizeof(int) * Max(list_length(tos), 1));
		foreach(lc, tos)
		{
			int			to = state_machine_find(m, lfirst(lc));

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
			idx = state_machine_find(m, s);
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
Datum
state_machine_transitions_jsonb(const Machine *m)
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

Datum
state_machine_initial_array(const Machine *m)
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
		payments_register_relcache_callback(state_guard_relcache_callback,
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
void
state_guard_cache_begin_statement(void)
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
 * The role that owns the extension's tables, as of the current statement:
 * the trigger reads the machines and writes the history as this role.
 */
Oid
state_guard_tables_owner(void)
{
	return tables_owner;
}

/*
 * The machine named name, loaded into the cache on first use; NULL if no
 * such machine is defined.  The cache must be current
 * (state_guard_cache_begin_statement).
 */
Machine *
state_machine_lookup(const char *name)
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
		m = state_machine_parse(name, DatumGetJsonbP(transitions),
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
void
state_guard_check_column(Relation rel, AttrNumber attnum, Oid *typoutput,
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
int
state_guard_primary_key(Relation rel, AttrNumber *attnums)
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

/*
 * The cache entry of the guard trigger that fired, built on its first use
 * in this cache's life.  The cache must be current
 * (state_guard_cache_begin_statement).
 */
GuardEntry *
state_guard_entry(TriggerData *td)
{
	Trigger    *tg = td->tg_trigger;
	Relation	rel = td->tg_relation;
	GuardEntry *g;
	bool		found;
	Oid			typoutput;
	StringInfoData names;
	MemoryContext old;
	Oid			logical;

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
	state_guard_check_column(rel, g->attnum, &typoutput, &g->bpchar);
	fmgr_info_cxt(typoutput, &g->out, guard_cxt);

	g->npk = state_guard_primary_key(rel, g->pk_attnums);
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
	 * and inserted into the other.  The trigger pairs the two (state_guard.c,
	 * "Rows that move between partitions"), which is sound only if every
	 * partition the row can move to is guarded by the same trigger: the
	 * guard must have been attached to the root of the partition tree.
	 * guard_state refuses partitions; this catches a guarded table attached
	 * as a partition later.
	 */
	guard_root(tg, rel, &g->root_tgoid, &g->root_relid);

	/* the history of a Citus shard names its distributed table */
	logical = payments_shard_logical_relid(g->root_relid);
	if (OidIsValid(logical))
		g->root_relid = logical;
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
	 * Moves are recognized by the mark heap_delete leaves in the old row,
	 * which only a heap tuple carries.
	 */
	if (rel->rd_rel->relispartition && rel->rd_rel->relam != HEAP_TABLE_AM_OID)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the state guard cannot check partition \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The state guard supports partitions stored in heap tables only.")));
	payments_refuse_citus_guarded(rel);
	g->valid = true;
	return g;
}

/* The machine guard g follows; an error if it is not defined. */
Machine *
state_guard_machine(GuardEntry *g, Relation rel)
{
	if (g->machine == NULL)
		g->machine = state_machine_lookup(g->machine_name);
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
