/*-------------------------------------------------------------------------
 *
 * citus_delegation.c
 *	  A planner hook that keeps a call by key with a NULL key away from
 *	  Citus's function call delegation.
 *
 * Citus 13 hashes the distribution argument of a distributed function
 * call without looking whether it is NULL, and the backend crashes (a
 * segmentation fault in hashtext, so the postmaster restarts every
 * session).  Any role that may call payments.reserve could do that with
 * SELECT payments.reserve('o', NULL, 1).  This hook runs before Citus's
 * planner (the extension is loaded after Citus) and raises the error the
 * function itself raises for a NULL argument, for the statements Citus
 * would delegate.  Citus decides on the query as the standard planner left
 * it (subqueries pulled up, SQL functions inlined, bound parameters and
 * constants folded), so the hook plans a copy of a statement that reads
 * no table (any other Citus never delegates) and looks at it as Citus
 * does: SELECT fn(...) or SELECT ... FROM fn(...), no WHERE, the key a
 * NULL constant.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "citus_shards.h"
#include "extension_catalog.h"

#include "nodes/nodeFuncs.h"
#include "optimizer/paths.h"
#include "optimizer/plancat.h"
#include "optimizer/planner.h"
#include "parser/parsetree.h"
#include "utils/lsyscache.h"

/* The calls by key payments.distribute() distributes, and their key */
typedef struct KeyedCall
{
	const char *name;
	int			nargs;
	int			keyarg;			/* 0-based */
	const char *what;			/* as the function's own check names it */
} KeyedCall;

static const KeyedCall keyed_calls[] = {
	{"stock_set", 3, 0, "SKU"},
	{"stock_adjust", 2, 0, "SKU"},
	{"reserve", 4, 1, "SKU"},
	{"confirm_reservation", 2, 1, "SKU"},
	{"release_reservation", 2, 1, "SKU"},
	{"idempotency_begin", 4, 1, "idempotency key"},
	{"idempotency_checkpoint", 3, 1, "idempotency key"},
	{"idempotency_complete", 4, 1, "idempotency key"},
	{"idempotency_abandon", 2, 1, "idempotency key"},
	{"tcc_try", 3, 0, "gid"},
	{"tcc_confirm", 2, 0, "gid"},
	{"tcc_cancel", 2, 0, "gid"},
};

static planner_hook_type prev_planner_hook = NULL;

/*
 * The argument of call in position argno (0-based); NULL if the call
 * leaves it to its default.  (Once planned, arguments are in position.)
 */
static Node *
call_argument(FuncExpr *call, int argno)
{
	return argno < list_length(call->args) ? list_nth(call->args, argno) : NULL;
}

/* Refuse call if it is one of the calls by key and its key is NULL */
static void
check_call(FuncExpr *call)
{
	char	   *name;

	if (get_func_namespace(call->funcid) != payments_schema_oid())
		return;
	name = get_func_name(call->funcid);
	for (int i = 0; i < lengthof(keyed_calls); i++)
	{
		const KeyedCall *k = &keyed_calls[i];
		Node	   *key;

		if (strcmp(name, k->name) != 0 || get_func_nargs(call->funcid) != k->nargs)
			continue;
		key = call_argument(call, k->keyarg);
		if (key != NULL)
			key = strip_implicit_coercions(key);
		if (key != NULL && IsA(key, Const) && ((Const *) key)->constisnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", k->what)));
	}
}

/*
 * The function a planned query calls in the shape Citus delegates, as its
 * TryToDelegateFunctionCall finds it: a SELECT without WHERE whose FROM is
 * empty or one function, calling one function in its only target or in
 * its FROM; NULL for any other query.
 */
static FuncExpr *
delegable_call(Query *query)
{
	FromExpr   *jointree = query->jointree;
	FuncExpr   *target = NULL;
	FuncExpr   *from = NULL;

	if (query->commandType != CMD_SELECT || jointree == NULL ||
		jointree->quals != NULL || list_length(jointree->fromlist) > 1)
		return NULL;
	if (jointree->fromlist != NIL)
	{
		RangeTblRef *ref = linitial(jointree->fromlist);
		RangeTblEntry *rte;

		if (!IsA(ref, RangeTblRef))
			return NULL;
		rte = rt_fetch(ref->rtindex, query->rtable);
		if (rte->rtekind == RTE_FUNCTION && list_length(rte->functions) == 1 &&
			IsA(((RangeTblFunction *) linitial(rte->functions))->funcexpr, FuncExpr))
			from = (FuncExpr *) ((RangeTblFunction *) linitial(rte->functions))->funcexpr;
		else if (rte->rtekind != RTE_RESULT)
			return NULL;
	}
	if (list_length(query->targetList) == 1 &&
		IsA(((TargetEntry *) linitial(query->targetList))->expr, FuncExpr))
		target = (FuncExpr *) ((TargetEntry *) linitial(query->targetList))->expr;
	if (target != NULL && from != NULL)
		return NULL;
	return target != NULL ? target : from;
}

/* Whether query, or a query within it, reads a table */
static bool
reads_table(Query *query)
{
	ListCell   *lc;

	if (query->hasSubLinks)
		return true;			/* Citus delegates no call with a subquery */
	foreach(lc, query->rtable)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

		if (rte->rtekind == RTE_RELATION ||
			(rte->rtekind == RTE_SUBQUERY && reads_table(rte->subquery)))
			return true;
	}
	foreach(lc, query->cteList)
	{
		CommonTableExpr *cte = lfirst_node(CommonTableExpr, lc);

		if (IsA(cte->ctequery, Query) && reads_table((Query *) cte->ctequery))
			return true;
	}
	return false;
}

/*
 * Plan a copy of a query with PostgreSQL's planner alone, to see its
 * shape: the path hooks of other extensions stay out of it.  Citus's
 * expect the planning context its own planner sets up, and crash the
 * backend without it (its local executor plans the tasks it runs on the
 * coordinator through the planner hook, joins of intermediate results
 * among them).
 */
static void
plan_without_hooks(Query *copy, const char *query_string, int cursorOptions,
				   ParamListInfo boundParams)
{
	set_rel_pathlist_hook_type save_rel = set_rel_pathlist_hook;
	set_join_pathlist_hook_type save_join = set_join_pathlist_hook;
	get_relation_info_hook_type save_info = get_relation_info_hook;
	create_upper_paths_hook_type save_upper = create_upper_paths_hook;
	join_search_hook_type save_search = join_search_hook;

	set_rel_pathlist_hook = NULL;
	set_join_pathlist_hook = NULL;
	get_relation_info_hook = NULL;
	create_upper_paths_hook = NULL;
	join_search_hook = NULL;
	PG_TRY();
	{
		(void) standard_planner(copy, query_string, cursorOptions, boundParams);
	}
	PG_FINALLY();
	{
		set_rel_pathlist_hook = save_rel;
		set_join_pathlist_hook = save_join;
		get_relation_info_hook = save_info;
		create_upper_paths_hook = save_upper;
		join_search_hook = save_search;
	}
	PG_END_TRY();
}

static PlannedStmt *
payments_planner(Query *parse, const char *query_string, int cursorOptions,
				 ParamListInfo boundParams)
{
	/*
	 * Only a SELECT that reads no table can become a delegated call, and
	 * only in the layout payments.distribute() makes (cached; "none"
	 * without Citus).  Planning it twice costs little: it has no table.
	 */
	if (parse->commandType == CMD_SELECT && parse->utilityStmt == NULL &&
		!reads_table(parse) && payments_shards_distributed())
	{
		Query	   *copy = copyObject(parse);
		FuncExpr   *call;

		plan_without_hooks(copy, query_string, cursorOptions, boundParams);
		call = delegable_call(copy);
		if (call != NULL)
			check_call(call);
	}
	if (prev_planner_hook)
		return prev_planner_hook(parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

void
payments_citus_delegation_init(void)
{
	prev_planner_hook = planner_hook;
	planner_hook = payments_planner;
}
