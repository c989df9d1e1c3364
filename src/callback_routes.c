/*-------------------------------------------------------------------------
 *
 * callback_routes.c
 *	  callback_route and callback_unroute, and moving the row a routed event
 *	  names.
 *
 * A route sends a provider's event type to a guarded status column: the
 * row whose key column equals the event's payment_ref moves to the route's
 * state.  The move is an ordinary UPDATE run with the caller's rights, so
 * the state guard checks and records it and a caller without UPDATE on the
 * table cannot make it.  Its outcome depends on where the row is:
 *
 *	  an edge of the machine leads from its state to the route's: applied;
 *	  it is in that state, or in one that state leads to: stale;
 *	  it is in a state that leads to the route's only through others: the
 *		event came early (PM408) and nothing is recorded, so the provider
 *		sends it again after the events before it;
 *	  anything else: conflict, and the route's on_conflict handler is
 *		queued once for the event.
 *
 * The UPDATE names the states the move may start from, so that under READ
 * COMMITTED a concurrent move of the same row is waited for and the row
 * judged again as committed.  A row it did not move is then read FOR UPDATE
 * to classify the event; if that row has meanwhile come to a state the
 * move may start from, the UPDATE is tried again.  Before the move is
 * tried, receive_callback asks callback_route_settled, which tells a stale
 * event by a plain read where it can, without locking or writing the row.
 *
 * The UPDATE and the SELECT are prepared once per backend and table and
 * kept until the table's definition changes.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback.h"
#include "extension_catalog.h"
#include "compensation.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "state_guard.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(payments_callback_route);
PG_FUNCTION_INFO_V1(payments_callback_unroute);

/* How often a row that keeps moving under us is tried again */
#define ROUTE_MAX_TRIES		3

/* The statements of one routed column, per backend */
typedef struct RoutedColumnKey
{
	Oid			userid;			/* the checks of check_target are this role's */
	Oid			relid;
	NameData	key_col;
	NameData	state_col;
} RoutedColumnKey;

typedef struct RoutedColumn
{
	RoutedColumnKey key;		/* hash key */
	bool		valid;			/* cleared by a relcache invalidation */
	int			busy;			/* runs of its plans under way (a trigger on
								 * the table may receive another event) */
	char		machine[NAMEDATALEN];
	char	   *update_sql;		/* in TopMemoryContext */
	SPIPlanPtr	plans[3];		/* by RouteStatement */
} RoutedColumn;

/* The statements of a routed column */
typedef enum RouteStatement
{
	ROUTE_UPDATE,				/* move the row if its state leads to the route's */
	ROUTE_PEEK,					/* read its state */
	ROUTE_LOCK					/* read its state FOR UPDATE */
} RouteStatement;

static HTAB *targets = NULL;

static void forget_dropped_tables(void);

static SPIPlanPtr route_plan;
static SPIPlanPtr upsert_plan;
static SPIPlanPtr unroute_plan;
static SPIPlanPtr conflict_payload_plan;

static void
targets_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	RoutedColumn *t;

	if (targets == NULL)
		return;
	hash_seq_init(&status, targets);
	while ((t = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || t->key.relid == relid)
			t->valid = false;
}

/* A privilege on the table, or on the column */
static bool
column_allowed(Oid relid, AttrNumber attnum, Oid role, AclMode mode)
{
	return pg_class_aclcheck(relid, role, mode) == ACLCHECK_OK ||
		pg_attribute_aclcheck(relid, attnum, role, mode) == ACLCHECK_OK;
}

/*
 * The columns of a route, checked as the caller would be by the UPDATE:
 * USAGE on the table's schema (a regclass bypasses the name lookup that
 * would check it), SELECT on both columns and UPDATE on the state column.
 * Returns the machine that guards the state column.
 */
static char *
check_target(Relation rel, const char *key_col, const char *state_col,
			 AttrNumber *key_att, AttrNumber *state_att)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			caller = GetUserId();
	char	   *machine;

	if (pg_namespace_aclcheck(RelationGetNamespace(rel), caller, ACL_USAGE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schema %s",
						get_namespace_name(RelationGetNamespace(rel)))));
	*key_att = get_attnum(relid, key_col);
	*state_att = get_attnum(relid, state_col);
	if (*key_att <= 0 || *state_att <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						*key_att <= 0 ? key_col : state_col,
						RelationGetRelationName(rel))));
	if (!column_allowed(relid, *key_att, caller, ACL_SELECT) ||
		!column_allowed(relid, *state_att, caller, ACL_SELECT) ||
		!column_allowed(relid, *state_att, caller, ACL_UPDATE))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for table %s", RelationGetRelationName(rel)),
				 errdetail("A route needs SELECT on columns \"%s\" and \"%s\" and UPDATE on column \"%s\".",
						   key_col, state_col, state_col)));
	machine = state_guard_column_machine(rel, *state_att);
	if (machine == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("column \"%s\" of relation \"%s\" is not guarded",
						state_col, RelationGetRelationName(rel)),
				 errdetail("A callback route moves a column that the state guard keeps on the edges of a state machine."),
				 errhint("Guard the column first with payments.guard_state.")));
	return machine;
}

static char *
column_type(Relation rel, AttrNumber attnum)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);

	return format_type_extended(att->atttypid, att->atttypmod,
								FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY);
}

static SPIPlanPtr
keep(const char *sql, int nargs, Oid *argtypes)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, argtypes);

	if (plan == NULL || SPI_keepplan(plan) != 0)
		elog(ERROR, "could not prepare \"%s\": %s", sql,
			 SPI_result_code_string(SPI_result));
	return plan;
}

/*
 * The statements of a routed column.  The caller is connected to SPI and
 * runs as the role that receives the callback.  An invalidation (any
 * change to the table, even an ANALYZE) makes the next use check the
 * caller's rights and the guard again; the statements are prepared again
 * only if their text changed, and a plan still running further up the
 * stack is never freed.
 */
static RoutedColumn *
target(Oid relid, const char *key_col, const char *state_col)
{
	RoutedColumnKey key;
	RoutedColumn *t;
	bool		found;
	Relation	rel;
	AttrNumber	key_att;
	AttrNumber	state_att;
	char	   *machine;
	char	   *tbl;
	char	   *k;
	char	   *st;
	char	   *update_sql;
	char	   *peek_sql;
	char	   *lock_sql;

	if (targets == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(RoutedColumnKey);
		ctl.entrysize = sizeof(RoutedColumn);
		targets = hash_create("payments callback targets", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS);
		payments_register_relcache_callback(targets_relcache_callback, (Datum) 0);
	}
	memset(&key, 0, sizeof(key));
	key.userid = GetUserId();
	key.relid = relid;
	namestrcpy(&key.key_col, key_col);
	namestrcpy(&key.state_col, state_col);
	t = hash_search(targets, &key, HASH_FIND, &found);
	if (found && t->valid)
		return t;
	if (!found)
	{
		forget_dropped_tables();
		t = hash_search(targets, &key, HASH_ENTER, &found);
	}
	if (!found)
	{
		t->busy = 0;
		t->update_sql = NULL;
		memset(t->plans, 0, sizeof(t->plans));
	}
	t->valid = false;

	rel = try_table_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u of a callback route does not exist", relid),
				 errhint("Route the event type again with payments.callback_route.")));
	machine = check_target(rel, key_col, state_col, &key_att, &state_att);
	strlcpy(t->machine, machine, NAMEDATALEN);
	tbl = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									 RelationGetRelationName(rel));
	k = psprintf("%s OPERATOR(pg_catalog.=) $2::pg_catalog.text::%s", quote_identifier(key_col),
				 column_type(rel, key_att));
	st = pstrdup(quote_identifier(state_col));
	update_sql = psprintf("UPDATE %s SET %s = $1::pg_catalog.text::%s"
						  " WHERE %s AND %s::pg_catalog.text OPERATOR(pg_catalog.=)"
						  " ANY ($3::pg_catalog.text[])",
						  tbl, st, column_type(rel, state_att), k, st);
	lock_sql = psprintf("SELECT %s::pg_catalog.text FROM %s WHERE %s FOR UPDATE",
						st, tbl, k);
	peek_sql = psprintf("SELECT %s::pg_catalog.text,"
						" xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid"
						" FROM %s WHERE %s", st, tbl, k);
	table_close(rel, AccessShareLock);

	if (t->update_sql == NULL || strcmp(t->update_sql, update_sql) != 0)
	{
		SPIPlanPtr	plans[3];

		plans[ROUTE_UPDATE] = keep(update_sql, 3,
								   (Oid[]) {TEXTOID, TEXTOID, TEXTARRAYOID});
		plans[ROUTE_PEEK] = keep(peek_sql, 2, (Oid[]) {TEXTOID, TEXTOID});
		plans[ROUTE_LOCK] = keep(lock_sql, 2, (Oid[]) {TEXTOID, TEXTOID});
		for (int i = 0; i < lengthof(plans); i++)
		{
			if (t->busy == 0 && t->plans[i] != NULL)
				SPI_freeplan(t->plans[i]);
			t->plans[i] = plans[i];
		}
		if (t->update_sql != NULL)
			pfree(t->update_sql);
		t->update_sql = MemoryContextStrdup(TopMemoryContext, update_sql);
	}
	t->valid = true;
	return t;
}

/*
 * Forget the statements of tables that no longer exist (a table dropped
 * and created again under the same name is another table), before the
 * cache gets a new entry.
 */
static void
forget_dropped_tables(void)
{
	HASH_SEQ_STATUS status;
	RoutedColumn *t;

	hash_seq_init(&status, targets);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		if (t->valid || t->busy > 0 ||
			SearchSysCacheExists1(RELOID, ObjectIdGetDatum(t->key.relid)))
			continue;
		for (int i = 0; i < lengthof(t->plans); i++)
			if (t->plans[i] != NULL)
				SPI_freeplan(t->plans[i]);
		if (t->update_sql != NULL)
			pfree(t->update_sql);
		(void) hash_search(targets, &t->key, HASH_REMOVE, NULL);
	}
}

/* Run one of t's statements, counting it as under way while it runs. */
static uint64
run(RoutedColumn *t, RouteStatement which, Datum *values)
{
	volatile uint64 n = 0;

	t->busy++;
	PG_TRY();
	{
		n = payments_execute(t->plans[which], values, NULL,
							 which == ROUTE_UPDATE ? SPI_OK_UPDATE : SPI_OK_SELECT, 0);
	}
	PG_FINALLY();
	{
		t->busy--;
	}
	PG_END_TRY();
	return n;
}

/*
 * Whether state to can be reached from state from along the machine; with
 * moving set, in one move or more, so that from reaches itself only on a
 * cycle.
 */
static bool
reaches(const Machine *m, int from, int to, bool moving)
{
	bool	   *seen = palloc0(sizeof(bool) * m->nstates);
	int		   *stack = palloc(sizeof(int) * m->nstates);
	int			depth = 0;
	bool		found = false;

	if (moving)
	{
		for (int i = 0; i < m->nnext[from]; i++)
			if (!seen[m->next[from][i]])
			{
				seen[m->next[from][i]] = true;
				stack[depth++] = m->next[from][i];
			}
	}
	else
	{
		seen[from] = true;
		stack[depth++] = from;
	}
	while (depth > 0 && !found)
	{
		int			s = stack[--depth];

		found = (s == to);
		for (int i = 0; i < m->nnext[s]; i++)
			if (!seen[m->next[s][i]])
			{
				seen[m->next[s][i]] = true;
				stack[depth++] = m->next[s][i];
			}
	}
	pfree(seen);
	pfree(stack);
	return found;
}

/* The states of m with an edge to state to, as a text[] */
static Datum
sources_of(const Machine *m, int to)
{
	Datum	   *elems = palloc(sizeof(Datum) * m->nstates);
	int			n = 0;

	for (int s = 0; s < m->nstates; s++)
		if (state_machine_has_edge(m, s, to))
			elems[n++] = CStringGetTextDatum(m->states[s]);
	return PointerGetDatum(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * The on_conflict handler of a route, queued for the event as the caller.
 * Only an event's first delivery gets here, so it is queued once without a
 * dedup key (which another role able to call the handler could take first).
 * The handler is stored by name; one of another owner created under that
 * name since does not run.
 */
static int64
queue_conflict(const char *handler_name, Oid handler_owner,
			   const char *provider, const char *event_id,
			   const char *payment_ref, const char *event_type,
			   const char *state, Jsonb *payload, Oid tables_owner)
{
	Oid			handler;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Datum		body;
	bool		isnull;

	handler = compensation_resolve_handler(handler_name, handler_owner);

	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(event_id);
	values[2] = CStringGetTextDatum(payment_ref);
	values[3] = CStringGetTextDatum(event_type);
	values[4] = CStringGetTextDatum(state);
	if (payload != NULL)
		values[5] = JsonbPGetDatum(payload);
	else
		nulls[5] = 'n';

	payments_prepare(&conflict_payload_plan,
					 "SELECT pg_catalog.jsonb_build_object('provider', $1, 'event_id', $2,"
					 " 'payment_ref', $3, 'event_type', $4, 'state', $5, 'payload', $6)",
					 6, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID});
	payments_execute(conflict_payload_plan, values, nulls, SPI_OK_SELECT, 0);
	body = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

	return compensation_enqueue(handler, body, NULL, 0,
								GetCurrentTransactionStartTimestamp(), 0, GetUserId(),
								tables_owner);
}

/*
 * The route of provider's event_type, or NULL.  The caller is connected to
 * SPI.
 */
CallbackRoute *
callback_route_find(const char *provider, const char *event_type,
					Oid tables_owner)
{
	Datum		values[2];
	PaymentsSavedUser saved;
	CallbackRoute *route = NULL;

	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(event_type);
	payments_begin_as_owner(tables_owner, false, &saved);
	payments_prepare(&route_plan,
					 "SELECT tbl::oid, key_col, state_col, to_state, on_conflict,"
					 " on_conflict_owner::oid"
					 " FROM @extschema@.callback_routes"
					 " WHERE provider = $1 AND event_type = $2",
					 2, (Oid[]) {TEXTOID, TEXTOID});
	if (payments_execute(route_plan, values, NULL, SPI_OK_SELECT, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		route = palloc0(sizeof(CallbackRoute));
		route->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		route->key_col = SPI_getvalue(tup, desc, 2);
		route->state_col = SPI_getvalue(tup, desc, 3);
		route->to_state = SPI_getvalue(tup, desc, 4);
		route->on_conflict = SPI_getvalue(tup, desc, 5);
		route->on_conflict_owner = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
	}
	payments_end_as_owner(&saved);
	return route;
}

/*
 * The state of the one row the event names, read by statement which, as
 * an index into m's states.  No row, several rows, or a state the machine
 * does not know are errors, or with quiet, -1.
 */
static int
read_state(RoutedColumn *t, RouteStatement which, Datum *values,
		   const Machine *m, const CallbackRoute *route, const char *provider,
		   const char *event_id, const char *payment_ref, char **current,
		   bool quiet)
{
	uint64		n = run(t, which, values);
	int			cur;

	if (quiet && n != 1)
		return -1;

	if (n > 1)
		ereport(ERROR,
				(errcode(ERRCODE_CARDINALITY_VIOLATION),
				 errmsg("more than one row of relation \"%s\" has \"%s\" in column \"%s\"",
						get_rel_name(route->relid), payment_ref, route->key_col),
				 errdetail("A callback route moves the one row whose key column equals the event's payment_ref."),
				 errhint("Route to a column that is unique, such as the primary key.")));
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_TARGET_NOT_FOUND),
				 errmsg("no row of relation \"%s\" has \"%s\" in column \"%s\"",
						get_rel_name(route->relid), payment_ref, route->key_col),
				 errdetail("Event \"%s\" of callback provider \"%s\" is routed to that table; nothing was recorded.",
						   event_id, provider),
				 errhint("The provider sends the event again; if the row is being created, it will be there then.")));
	*current = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	cur = *current ? state_machine_find(m, *current) : -1;
	if (cur < 0 && !quiet && *current == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("row of relation \"%s\" for payment \"%s\" has a null state",
						get_rel_name(route->relid), payment_ref)));
	if (cur < 0 && !quiet)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("row of relation \"%s\" for payment \"%s\" is in state \"%s\", which is not a state of machine \"%s\"",
						get_rel_name(route->relid), payment_ref, *current, t->machine)));
	return cur;
}

/*
 * The machine of a route and the index of its state, from the cache of
 * machines, which this makes current.
 */
static const Machine *
route_machine(RoutedColumn *t, const CallbackRoute *route,
			  const char *event_type, int *to)
{
	Machine    *m;

	state_guard_cache_begin_statement();
	m = state_machine_lookup(t->machine);
	*to = m ? state_machine_find(m, route->to_state) : -1;
	if (*to < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("state \"%s\" of the route of callback event type \"%s\" is not a state of machine \"%s\"",
						route->to_state, event_type, t->machine),
				 errhint("Route the event type again with payments.callback_route, or define the machine with that state.")));
	return m;
}

/*
 * Whether the event is stale for good, as far as a plain read of its row
 * can tell: where the route's state is on no cycle of the machine, a
 * committed row in that state or past it stays so whatever moves it next
 * along the machine.  Such an event
 * needs neither a lock nor a write of the row, and receive_callback
 * records it as stale at once.  Anything unusual (no such row, a state the
 * machine does not know) is left to callback_route_apply, which a
 * duplicate delivery never reaches.  The caller is connected to SPI.
 */
bool
callback_route_settled(const CallbackRoute *route, const char *provider,
					   const char *event_id, const char *payment_ref,
					   const char *event_type)
{
	RoutedColumn *t = target(route->relid, route->key_col, route->state_col);
	int			to;
	const Machine *m = route_machine(t, route, event_type, &to);
	Datum		values[2];
	char	   *current;
	int			cur;
	bool		isnull;

	/*
	 * Only under READ COMMITTED, whose statements see the latest committed
	 * row (a transaction snapshot may show a row since moved back), and
	 * only a row version that no transaction is updating or deleting.
	 */
	if (IsolationUsesXactSnapshot() || reaches(m, to, to, true))
		return false;

	/* The row's xmax is readable with SELECT on the table, not a column's. */
	if (pg_class_aclcheck(route->relid, GetUserId(), ACL_SELECT) != ACLCHECK_OK)
		return false;
	values[0] = CStringGetTextDatum(route->to_state);
	values[1] = CStringGetTextDatum(payment_ref);
	cur = read_state(t, ROUTE_PEEK, values, m, route, provider, event_id,
					 payment_ref, &current, true);
	if (cur < 0 || !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 2, &isnull)))
		return false;
	return cur == to || reaches(m, to, cur, false);
}

/*
 * Move the row the event names, as the calling role.  Returns the outcome;
 * *compensation_id is the on_conflict item of a conflict, or 0.  The caller
 * is connected to SPI.
 */
CallbackOutcome
callback_route_apply(const CallbackRoute *route, const char *provider,
					 const char *event_id, const char *payment_ref,
					 const char *event_type, Jsonb *payload,
					 Oid tables_owner, int64 *compensation_id)
{
	RoutedColumn *t = target(route->relid, route->key_col, route->state_col);
	int			to;
	const Machine *m = route_machine(t, route, event_type, &to);
	int			cur = -1;
	char	   *current = NULL;
	Datum		values[3];

	*compensation_id = 0;

	values[0] = CStringGetTextDatum(route->to_state);
	values[1] = CStringGetTextDatum(payment_ref);
	values[2] = sources_of(m, to);

	for (int tries = 0;; tries++)
	{
		if (run(t, ROUTE_UPDATE, values) == 1)
			return CALLBACK_APPLIED;

		cur = read_state(t, ROUTE_LOCK, values, m, route, provider, event_id,
						 payment_ref, &current, false);
		if (!state_machine_has_edge(m, cur, to))
			break;
		if (tries >= ROUTE_MAX_TRIES)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("row of relation \"%s\" for payment \"%s\" could not be moved to state \"%s\"",
							get_rel_name(route->relid), payment_ref, route->to_state),
					 errdetail("Its state \"%s\" leads there, but the update matched no row %d times; a trigger or a row security policy may be skipping it.",
							   current, ROUTE_MAX_TRIES + 1)));
	}

	/*
	 * In a machine with cycles a state can both lead to to_state and follow
	 * it; such an event counts as early, not stale, since an early event
	 * recorded as stale would never be applied.
	 */
	if (cur == to)
		return CALLBACK_STALE;
	if (reaches(m, cur, to, false))
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_OUT_OF_ORDER),
				 errmsg("callback event \"%s\" of provider \"%s\" came before the events that lead to it",
						event_id, provider),
				 errdetail("The row is \"%s\", from which \"%s\" can be reached only through other states; nothing was recorded.",
						   current, route->to_state),
				 errhint("The provider sends the event again; by then the events before it have moved the row.")));
	if (reaches(m, to, cur, false))
		return CALLBACK_STALE;
	if (route->on_conflict != NULL)
		*compensation_id = queue_conflict(route->on_conflict, route->on_conflict_owner,
										  provider, event_id, payment_ref, event_type,
										  current, payload, tables_owner);
	return CALLBACK_CONFLICT;
}

/*
 * payments.callback_route(provider, event_type, tbl, key_col, state_col,
 * to_state, on_conflict)
 */
Datum
payments_callback_route(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, OIDOID, NAMEOID, NAMEOID,
	TEXTOID, TEXTOID, OIDOID, OIDOID};
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	const char *provider = callback_arg_provider(fcinfo, 0);
	text	   *event_type;
	Oid			relid;
	Name		key_col;
	Name		state_col;
	char	   *to_state;
	Oid			handler = InvalidOid;
	Oid			handler_owner = InvalidOid;
	Relation	rel;
	AttrNumber	key_att;
	AttrNumber	state_att;
	char	   *machine;
	Machine    *m;
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	PaymentsSavedUser saved;

	event_type = payments_arg_text(fcinfo, 1, "event_type", CALLBACK_EVENT_TYPE_MAX_BYTES);
	payments_arg_not_null(fcinfo, 2, "tbl");
	relid = PG_GETARG_OID(2);
	payments_arg_not_null(fcinfo, 3, "key_col");
	key_col = PG_GETARG_NAME(3);
	payments_arg_not_null(fcinfo, 4, "state_col");
	state_col = PG_GETARG_NAME(4);
	to_state = text_to_cstring(payments_arg_text(fcinfo, 5, "to_state", MACHINE_NAME_MAX_BYTES * 4));
	if (!PG_ARGISNULL(6))
	{
		handler = compensation_arg_handler(fcinfo, 6);
		handler_owner = compensation_check_handler(handler, GetUserId());
	}
	payments_check_not_in_recovery();
	(void) callback_provider_owner(provider, true, tables_owner);

	rel = try_table_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table", RelationGetRelationName(rel))));
	if (rel->rd_rel->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is a partition", RelationGetRelationName(rel)),
				 errdetail("A row routed to a partition could not move to another one."),
				 errhint("Route to the partitioned table.")));
	machine = check_target(rel, NameStr(*key_col), NameStr(*state_col),
						   &key_att, &state_att);
	table_close(rel, AccessShareLock);

	/* Prepared now, so that a key column no query can compare fails here. */
	SPI_connect();
	(void) target(relid, NameStr(*key_col), NameStr(*state_col));
	SPI_finish();

	state_guard_cache_begin_statement();
	m = state_machine_lookup(machine);
	if (m == NULL || state_machine_find(m, to_state) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_UNKNOWN_STATE),
				 errmsg("\"%s\" is not a state of machine \"%s\"", to_state, machine),
				 errdetail("Column \"%s\" of relation \"%s\" follows that machine.",
						   NameStr(*state_col), get_rel_name(relid))));

	values[0] = CStringGetTextDatum(provider);
	values[1] = PointerGetDatum(event_type);
	values[2] = ObjectIdGetDatum(relid);
	values[3] = NameGetDatum(key_col);
	values[4] = NameGetDatum(state_col);
	values[5] = CStringGetTextDatum(to_state);
	if (OidIsValid(handler))
	{
		values[6] = CStringGetTextDatum(compensation_handler_name(handler));
		values[7] = ObjectIdGetDatum(handler_owner);
	}
	else
		nulls[6] = nulls[7] = 'n';
	values[8] = ObjectIdGetDatum(GetUserId());

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&upsert_plan,
					 "INSERT INTO @extschema@.callback_routes AS r"
					 " (provider, event_type, tbl, key_col, state_col, to_state,"
					 "  on_conflict, on_conflict_owner, routed_by)"
					 " VALUES ($1, $2, $3::regclass, $4, $5, $6, $7, $8::regrole, $9::regrole)"
					 " ON CONFLICT (provider, event_type) DO UPDATE SET"
					 " tbl = excluded.tbl, key_col = excluded.key_col,"
					 " state_col = excluded.state_col, to_state = excluded.to_state,"
					 " on_conflict = excluded.on_conflict,"
					 " on_conflict_owner = excluded.on_conflict_owner,"
					 " routed_by = excluded.routed_by, routed_at = now()",
					 9, argtypes);
	payments_execute(upsert_plan, values, nulls, SPI_OK_INSERT, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/* payments.callback_unroute(provider, event_type) */
Datum
payments_callback_unroute(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	const char *provider = callback_arg_provider(fcinfo, 0);
	Datum		values[2];
	PaymentsSavedUser saved;
	uint64		n;

	values[0] = CStringGetTextDatum(provider);
	values[1] = PointerGetDatum(payments_arg_text(fcinfo, 1, "event_type",
												  CALLBACK_EVENT_TYPE_MAX_BYTES));
	payments_check_not_in_recovery();
	(void) callback_provider_owner(provider, false, tables_owner);

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&unroute_plan,
					 "DELETE FROM @extschema@.callback_routes"
					 " WHERE provider = $1 AND event_type = $2",
					 2, (Oid[]) {TEXTOID, TEXTOID});
	n = payments_execute(unroute_plan, values, NULL, SPI_OK_DELETE, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_BOOL(n > 0);
}
