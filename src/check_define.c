/*-------------------------------------------------------------------------
 *
 * check_define.c
 *	  define_check and drop_check: a role's checks of its own business
 *	  invariants.
 *
 * A check is a query that returns (object, detail) rows, one per object
 * that violates an invariant.  It is taken as the text of one SELECT and
 * always run wrapped as "SELECT * FROM (query) q", which refuses anything
 * but a query (a data-modifying WITH must be at the top level, and a second
 * statement makes two), in a read-only transaction state, so that a
 * function it calls cannot write either.  define_check runs it once with
 * LIMIT 0 as the caller, read-only, so that a query the role may not run
 * or that does not return two columns is refused at once, with the
 * server's own error.
 *
 * A check belongs to the role that defines it (the owner is part of its
 * key) and runs as that role; its heal must be a compensation handler the
 * role may call, and is queued as that role.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "check.h"
#include "citus_shards.h"
#include "payments.h"
#include "args.h"
#include "compensation.h"
#include "owner_rights.h"
#include "spi_util.h"
#include "worker.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/plancache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_define_check);
PG_FUNCTION_INFO_V1(payments_drop_check);

/* The longest check query, in bytes */
#define CHECK_QUERY_MAX_BYTES	65536

/* How often a check may run, at most and at least */
#define CHECK_EVERY_MIN_USECS	USECS_PER_SEC
#define CHECK_EVERY_MAX_USECS	(366 * USECS_PER_DAY)

static SPIPlanPtr upsert_plan;
static SPIPlanPtr drop_plan;

/*
 * The check's query as it always runs: the only statement, a SELECT over
 * the query as a subquery, followed by tail (a LIMIT).  The newlines keep
 * a trailing comment of the query from swallowing the parenthesis.
 */
char *
check_wrapped_query(const char *query, const char *tail)
{
	return psprintf("SELECT * FROM (\n%s\n) q %s", query, tail);
}

/*
 * Make the rest of the current (sub)transaction read-only, as SET
 * TRANSACTION READ ONLY would: any write the query or a function it calls
 * tries fails with 25006.  The caller restores the setting by ending the
 * subtransaction or the GUC nest level.
 */
void
check_begin_read_only(void)
{
	(void) set_config_option("transaction_read_only", "on",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
}

/* Refuse a query that cannot be a check, as the caller, changing nothing. */
static void
validate_query(const char *name, const char *query)
{
	SPIPlanPtr	plan;
	List	   *sources;
	CachedPlanSource *source;
	int			nestlevel = NewGUCNestLevel();

	check_begin_read_only();
	SPI_connect();
	plan = SPI_prepare(check_wrapped_query(query, "LIMIT 0"), 0, NULL);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for the query of check \"%s\": %s",
			 name, SPI_result_code_string(SPI_result));
	sources = SPI_plan_get_plan_sources(plan);
	if (list_length(sources) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of check \"%s\" is not one SELECT", name),
				 errdetail("A check query is a single query that returns the violating objects.")));
	source = linitial(sources);
	if (source->resultDesc == NULL || source->resultDesc->natts != 2)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the query of check \"%s\" must return two columns",
						name),
				 errdetail("It returns %d columns; a check query returns (object, detail): what violates the invariant, and how.",
						   source->resultDesc == NULL ? 0 : source->resultDesc->natts)));

	/* Planned and started once, so that missing rights show now. */
	if (SPI_execute_plan(plan, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "the query of check \"%s\" did not run as a SELECT", name);
	SPI_finish();
	AtEOXact_GUC(false, nestlevel);
}

/*
 * payments.define_check(name, query, heal, every): define or replace a
 * check of the calling role.  It runs first within every of now.
 */
Datum
payments_define_check(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {OIDOID, TEXTOID, TEXTOID, TEXTOID, OIDOID,
	INTERVALOID};
	Oid			caller = GetUserId();
	text	   *name = payments_arg_text(fcinfo, 0, "check name", CHECK_NAME_MAX_BYTES);
	text	   *query = payments_arg_text(fcinfo, 1, "check query", CHECK_QUERY_MAX_BYTES);
	Datum		every;
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', 'n', 'n', ' '};
	PaymentsSavedUser saved;

	/* Its runs are items of the queue, which would run on another node. */
	if (payments_shards_distributed())
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot define a check while the tables of extension \"payments\" are distributed"),
				 errdetail("A check runs as an item of the compensation queue, on the node of the item's shard, and records its results in tables of the node that defined it."),
				 errhint("See \"Scaling out with Citus\" in the extension's README.")));
	every = payments_arg_interval(fcinfo, 3, "check interval", CHECK_EVERY_MAX_USECS);
	if (DatumGetIntervalP(every)->time < CHECK_EVERY_MIN_USECS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("check interval must be at least 1 second")));
	payments_check_not_in_recovery();

	values[0] = ObjectIdGetDatum(caller);
	values[1] = PointerGetDatum(name);
	values[2] = PointerGetDatum(query);
	if (!PG_ARGISNULL(2))
	{
		Oid			heal = PG_GETARG_OID(2);

		values[4] = ObjectIdGetDatum(compensation_check_handler(heal, caller));
		values[3] = CStringGetTextDatum(compensation_handler_name(heal));
		nulls[3] = nulls[4] = ' ';
	}
	values[5] = every;

	validate_query(text_to_cstring(name), text_to_cstring(query));

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&upsert_plan,
					 "INSERT INTO @extschema@.checks AS c"
					 " (owner, name, query, heal, heal_owner, every, next_run_at)"
					 " VALUES ($1::regrole, $2, $3, $4, $5::regrole, $6, now())"
					 " ON CONFLICT (owner, name) DO UPDATE SET"
					 "  query = excluded.query, heal = excluded.heal,"
					 "  heal_owner = excluded.heal_owner, every = excluded.every,"
					 "  next_run_at = excluded.next_run_at, defined_at = now()",
					 6, argtypes);
	payments_execute(upsert_plan, values, nulls, SPI_OK_INSERT, 0);
	payments_wake_worker_at_commit();
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/* payments.drop_check(name): false if the role has no such check. */
Datum
payments_drop_check(PG_FUNCTION_ARGS)
{
	text	   *name = payments_arg_text(fcinfo, 0, "check name", CHECK_NAME_MAX_BYTES);
	Datum		values[2];
	PaymentsSavedUser saved;
	bool		dropped;
	bool		isnull;

	payments_check_not_in_recovery();
	values[0] = ObjectIdGetDatum(GetUserId());
	values[1] = PointerGetDatum(name);

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&drop_plan,
					 "WITH gone AS (DELETE FROM @extschema@.checks"
					 "  WHERE owner = $1::regrole AND name = $2 RETURNING owner, name),"
					 " results AS (DELETE FROM @extschema@.check_results r USING gone g"
					 "  WHERE r.owner = g.owner AND r.check_name = g.name)"
					 " SELECT count(*) > 0 FROM gone",
					 2, (Oid[]) {OIDOID, TEXTOID});
	payments_execute(drop_plan, values, NULL, SPI_OK_SELECT, 0);
	dropped = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_BOOL(dropped);
}
