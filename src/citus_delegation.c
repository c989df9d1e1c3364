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
 * would delegate: SELECT fn(...) and SELECT ... FROM fn(...), the key a
 * constant, an expression that folds to one, or a bound parameter.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "citus_shards.h"
#include "extension_catalog.h"

#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "optimizer/planner.h"
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

/* Whether arg, as Citus would see it once planned, is a NULL constant */
static bool
is_null_key(Node *arg, ParamListInfo params)
{
	arg = strip_implicit_coercions(arg);
	if (IsA(arg, Param) && ((Param *) arg)->paramkind == PARAM_EXTERN &&
		params != NULL)
	{
		Param	   *param = (Param *) arg;
		ParamExternData workspace;
		ParamExternData *value = NULL;

		if (param->paramid > 0 && param->paramid <= params->numParams)
			value = params->paramFetch != NULL ?
				params->paramFetch(params, param->paramid, false, &workspace) :
				&params->params[param->paramid - 1];
		return value != NULL && value->isnull;
	}
	if (!IsA(arg, Const))
		arg = strip_implicit_coercions(eval_const_expressions(NULL, copyObject(arg)));
	return IsA(arg, Const) && ((Const *) arg)->constisnull;
}

/*
 * The argument of call in position argno (0-based) once the planner has
 * put named arguments in their places; NULL if the call leaves it to its
 * default.
 */
static Node *
call_argument(FuncExpr *call, int argno)
{
	ListCell   *lc;
	int			i = 0;

	foreach(lc, call->args)
	{
		Node	   *arg = lfirst(lc);

		if (IsA(arg, NamedArgExpr))
		{
			if (((NamedArgExpr *) arg)->argnumber == argno)
				return (Node *) ((NamedArgExpr *) arg)->arg;
		}
		else if (i == argno)
			return arg;
		i++;
	}
	return NULL;
}

/* Refuse call if it is one of the calls by key with a NULL key */
static void
check_call(FuncExpr *call, ParamListInfo params)
{
	char	   *name;

	/* the layout first: it is cached, and "none" without Citus */
	if (!payments_shards_distributed() ||
		get_func_namespace(call->funcid) != payments_schema_oid())
		return;
	name = get_func_name(call->funcid);
	for (int i = 0; i < lengthof(keyed_calls); i++)
	{
		const KeyedCall *k = &keyed_calls[i];
		Node	   *key;

		if (strcmp(name, k->name) != 0 || get_func_nargs(call->funcid) != k->nargs)
			continue;
		key = call_argument(call, k->keyarg);
		if (key != NULL && is_null_key(key, params))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be null", k->what)));
	}
}

/* The function a statement Citus might delegate calls, or NULL */
static FuncExpr *
delegable_call(Query *query)
{
	if (query->commandType != CMD_SELECT || query->hasSubLinks)
		return NULL;
	if (query->rtable == NIL && list_length(query->targetList) == 1 &&
		IsA(((TargetEntry *) linitial(query->targetList))->expr, FuncExpr))
		return (FuncExpr *) ((TargetEntry *) linitial(query->targetList))->expr;
	if (list_length(query->rtable) == 1)
	{
		RangeTblEntry *rte = linitial_node(RangeTblEntry, query->rtable);

		if (rte->rtekind == RTE_FUNCTION && list_length(rte->functions) == 1)
		{
			Node	   *expr = ((RangeTblFunction *) linitial(rte->functions))->funcexpr;

			if (IsA(expr, FuncExpr))
				return (FuncExpr *) expr;
		}
	}
	return NULL;
}

static PlannedStmt *
payments_planner(Query *parse, const char *query_string, int cursorOptions,
				 ParamListInfo boundParams)
{
	FuncExpr   *call = delegable_call(parse);

	if (call != NULL)
		check_call(call, boundParams);
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
