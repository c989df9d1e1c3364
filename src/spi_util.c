/*-------------------------------------------------------------------------
 *
 * spi_util.c
 *	  SPI plans prepared once per backend and kept for its lifetime.
 *
 * A kept plan is a cached plan source: the plan cache revalidates it when
 * the tables it reads change (even when the extension is dropped and
 * created again), so callers only ever hold a pointer to it.  Every query
 * text names the extension's objects as @extschema@.name, replaced here by
 * the schema pg_extension records, and every caller runs under a pinned
 * search_path, so a plan never resolves names differently.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "spi_util.h"

#include "citus_shards.h"
#include "extension_catalog.h"
#include "access/xact.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"

/*
 * Every cache a plan was kept in, so that all of them can be forgotten
 * when the extension's schema changes its name.  The old plans are not
 * freed: one of them may be executing further up the stack (a trigger
 * calling back into the extension), and a rename is a rare superuser act.
 */
static SPIPlanPtr **kept_caches = NULL;
static int	nkept = 0;
static int	kept_capacity = 0;
static uint64 kept_generation = 0;
static bool kept_distributed = false;

/*
 * While the tables are distributed, a query that names one of them is
 * prepared once per shard of the key entered (citus_shards.c), and kept
 * here rather than in the caller's cache.
 */
typedef struct ShardPlanKey
{
	SPIPlanPtr *cache;
	int64		shard;
} ShardPlanKey;

typedef struct ShardPlan
{
	ShardPlanKey key;
	SPIPlanPtr	plan;
} ShardPlan;

static HTAB *shard_plans = NULL;

static void
remember_cache(SPIPlanPtr *cache)
{
	if (nkept == kept_capacity)
	{
		kept_capacity = Max(32, kept_capacity * 2);
		if (kept_caches == NULL)
			kept_caches = MemoryContextAlloc(TopMemoryContext,
											 sizeof(SPIPlanPtr *) * kept_capacity);
		else
			kept_caches = repalloc(kept_caches,
								   sizeof(SPIPlanPtr *) * kept_capacity);
	}
	kept_caches[nkept++] = cache;
}

/*
 * The query text with every "@extschema@" replaced by the extension's
 * schema, quoted: queries never find the extension's tables through a
 * schema name that someone else could have given to a schema of theirs.
 * While the tables are distributed, a distributed table becomes its shard
 * for the key entered (*sharded is then set); *citus is set if a table
 * Citus plans (a reference table) stays.
 */
static char *
with_schema_sharded(const char *sql, bool shards, bool *sharded, bool *citus)
{
	const char *marker = "@extschema@";
	const char *schema = payments_schema_quoted();
	StringInfoData buf;
	const char *p = sql;
	const char *hit;

	*sharded = false;
	*citus = false;
	initStringInfo(&buf);
	while ((hit = strstr(p, marker)) != NULL)
	{
		const char *name = hit + strlen(marker) + 1;
		int			len = 0;
		char	   *shard = NULL;

		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, schema);
		p = hit + strlen(marker);
		if (*p != '.' || !shards)
			continue;
		while ((name[len] >= 'a' && name[len] <= 'z') || name[len] == '_')
			len++;
		shard = payments_shard_table_name(name, len, citus);
		if (shard != NULL)
		{
			appendStringInfo(&buf, ".%s", quote_identifier(shard));
			p = name + len;
			*sharded = true;
		}
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

static char *
with_schema(const char *sql)
{
	bool		sharded;
	bool		citus;

	return with_schema_sharded(sql, true, &sharded, &citus);
}

static SPIPlanPtr
prepare_kept(const char *text, int nargs, const Oid *argtypes, bool citus)
{
	SPIPlanPtr	plan;

	/*
	 * Always the generic plan: every query here is a key lookup whose best
	 * plan does not depend on the values, and the plan cache would
	 * otherwise plan some of them afresh on every call when it guesses a
	 * custom plan to be cheaper.  But not for a query Citus plans: it
	 * routes a query by its values, and crashes on some generic plans
	 * (README, "Scaling out with Citus").
	 */
	plan = SPI_prepare_cursor(text, nargs, (Oid *) argtypes,
							  citus ? 0 : CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "could not prepare query \"%s\": %s",
			 text, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep prepared query \"%s\"", text);
	return plan;
}

SPIPlanPtr
payments_prepare(SPIPlanPtr *cache, const char *sql, int nargs,
				 const Oid *argtypes)
{
	SPIPlanPtr	plan;
	uint64		generation = payments_schema_generation();
	bool		distributed = payments_shards_distributed();
	ShardPlanKey key;
	ShardPlan  *entry = NULL;
	bool		found;
	bool		sharded;
	bool		citus;
	char	   *text;

	if (generation != kept_generation || distributed != kept_distributed)
	{
		for (int i = 0; i < nkept; i++)
			*kept_caches[i] = NULL;
		nkept = 0;
		if (shard_plans != NULL)
			hash_destroy(shard_plans);
		shard_plans = NULL;
		kept_generation = generation;
		kept_distributed = distributed;
	}
	if (!distributed)
	{
		if (*cache != NULL)
			return *cache;
		text = with_schema_sharded(sql, true, &sharded, &citus);
		plan = prepare_kept(text, nargs, argtypes, citus);
		pfree(text);
		remember_cache(cache);
		*cache = plan;
		return plan;
	}

	/*
	 * Distributed: the plan is found under (cache, 0) if its query names no
	 * distributed table, else under (cache, shard of the key entered).  The
	 * caller's cache holds the one last returned, which callers read.
	 */
	if (shard_plans == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(ShardPlanKey);
		ctl.entrysize = sizeof(ShardPlan);
		ctl.hcxt = TopMemoryContext;
		shard_plans = hash_create("payments shard plans", 256, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	key.cache = cache;
	entry = hash_search(shard_plans, &key, HASH_FIND, NULL);
	if (entry == NULL)
	{
		key.shard = payments_shard_current();
		entry = hash_search(shard_plans, &key, HASH_FIND, NULL);
	}
	if (entry == NULL)
	{
		text = with_schema_sharded(sql, true, &sharded, &citus);
		plan = prepare_kept(text, nargs, argtypes, citus);
		pfree(text);
		if (!sharded)
			key.shard = 0;
		entry = hash_search(shard_plans, &key, HASH_ENTER, &found);
		entry->plan = plan;
	}
	if (*cache == NULL)
		remember_cache(cache);
	*cache = entry->plan;
	return entry->plan;
}

/*
 * Execute a kept plan with a fresh snapshot per statement (so that, under
 * READ COMMITTED, a statement that follows a lock wait sees what the lock
 * holder committed) and check the result code.
 */
uint64
payments_execute(SPIPlanPtr plan, Datum *values, const char *nulls,
				 int expected, long tcount)
{
	int			rc;

	rc = SPI_execute_plan(plan, values, nulls, false, tcount);
	if (rc != expected)
		elog(ERROR, "SPI_execute_plan returned %s, expected %s",
			 SPI_result_code_string(rc), SPI_result_code_string(expected));
	return SPI_processed;
}

/*
 * Run sql once, with @extschema@ replaced and a plan made for these
 * values: for statements whose best plan depends on how many rows they
 * meet (a statement of a thousand lines or of millions), and for those
 * that read an ephemeral relation registered with the connection.
 */
static uint64
execute_with_args(char *text, int nargs, const Oid *argtypes, Datum *values,
				  const char *nulls, int expected)
{
	int			rc;

	rc = SPI_execute_with_args(text, nargs, (Oid *) argtypes, values, nulls,
							   false, 0);
	if (rc != expected)
		elog(ERROR, "SPI_execute_with_args returned %s, expected %s",
			 SPI_result_code_string(rc), SPI_result_code_string(expected));
	pfree(text);
	return SPI_processed;
}

uint64
payments_execute_once(const char *sql, int nargs, const Oid *argtypes,
					  Datum *values, const char *nulls, int expected)
{
	return execute_with_args(with_schema(sql), nargs, argtypes, values, nulls,
							 expected);
}

/*
 * Run sql once through Citus, with @extschema@ replaced but no table
 * turned into its shard, and a plan made for these values (which Citus
 * routes by): for a call that works on several keys while the tables are
 * distributed (reservation_citus.c).
 */
uint64
payments_execute_citus(const char *sql, int nargs, const Oid *argtypes,
					   Datum *values, const char *nulls, int expected)
{
	bool		sharded;
	bool		citus;

	return execute_with_args(with_schema_sharded(sql, false, &sharded, &citus),
							 nargs, argtypes, values, nulls, expected);
}

/*
 * Call the extension's function fn with these arguments as Citus's
 * delegation of a distributed function call: SELECT * FROM fn(...), each
 * argument a constant, so that Citus sends the call to the node of its
 * distribution argument's shard, inside the caller's transaction, as a
 * write that commits with it (two-phase commit when the transaction wrote
 * on more than one node).  A query on a table that merely calls fn would
 * be a read to Citus, committed on its own outside a transaction block.
 * Two-phase commit is asked for, since the caller's transaction may have
 * written here too (payments_citus_use_2pc).  If Citus does not delegate,
 * fn runs here and refuses a key whose shard is elsewhere.  Returns
 * SPI_processed.
 */
uint64
payments_execute_delegated(const char *fn, int nargs, const Oid *argtypes,
						   Datum *values, const char *nulls)
{
	StringInfoData sql;
	int			rc;
	int			nestlevel;

	/*
	 * Citus sends the constants to the other node as this session writes
	 * them, and the other node reads them in its own settings: write dates
	 * and intervals in the forms every node reads alike.
	 */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("datestyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT * FROM %s.%s(", payments_schema_quoted(),
					 quote_identifier(fn));
	for (int i = 0; i < nargs; i++)
	{
		Oid			typoutput;
		bool		varlena;

		if (i > 0)
			appendStringInfoString(&sql, ", ");
		if (nulls != NULL && nulls[i] == 'n')
			appendStringInfoString(&sql, "NULL");
		else
		{
			getTypeOutputInfo(argtypes[i], &typoutput, &varlena);
			appendStringInfoString(&sql,
								   quote_literal_cstr(OidOutputFunctionCall(typoutput,
																			values[i])));
		}
		appendStringInfo(&sql, "::%s", format_type_be_qualified(argtypes[i]));
	}
	appendStringInfoChar(&sql, ')');
	payments_citus_use_2pc();
	rc = SPI_execute(sql.data, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute returned %s for \"%s\"",
			 SPI_result_code_string(rc), sql.data);
	AtEOXact_GUC(true, nestlevel);
	pfree(sql.data);
	return SPI_processed;
}

/*
 * The given column of the first row of the last result as text, in the
 * context the caller had before SPI_connect, NULL if there is no row or the
 * value is NULL.
 */
char *
payments_spi_first_text(int column)
{
	char	   *value;

	if (SPI_processed == 0 || SPI_tuptable == NULL)
		return NULL;
	value = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, column);
	if (value == NULL)
		return NULL;
	return strcpy(SPI_palloc(strlen(value) + 1), value);
}

/*
 * The same, with a snapshot taken now rather than the transaction's: for
 * a count made after a lock wait, which under REPEATABLE READ would
 * otherwise miss what the lock holder committed (as the foreign key
 * checks of ri_triggers.c do).
 */
uint64
payments_execute_latest(const char *sql, int nargs, const Oid *argtypes,
						Datum *values, const char *nulls, int expected)
{
	char	   *text = with_schema(sql);
	SPIPlanPtr	plan;
	uint64		n;

	plan = SPI_prepare(text, nargs, (Oid *) argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare query \"%s\": %s",
			 text, SPI_result_code_string(SPI_result));
	n = payments_execute_plan_latest(plan, values, nulls, expected);
	SPI_freeplan(plan);
	pfree(text);
	return n;
}

/* A kept plan executed as payments_execute_latest executes its query */
uint64
payments_execute_plan_latest(SPIPlanPtr plan, Datum *values, const char *nulls,
							 int expected)
{
	int			rc;

	rc = SPI_execute_snapshot(plan, values, nulls, GetLatestSnapshot(),
							  InvalidSnapshot, false, false, 0);
	if (rc != expected)
		elog(ERROR, "SPI_execute_snapshot returned %s, expected %s",
			 SPI_result_code_string(rc), SPI_result_code_string(expected));
	return SPI_processed;
}

/*
 * A cursor over sql, with @extschema@ replaced and a plan made for these
 * values, as payments_execute_once makes one.
 */
Portal
payments_cursor_open_once(const char *sql, int nargs, const Oid *argtypes,
						  Datum *values)
{
	char	   *text = with_schema(sql);
	Portal		portal;

	portal = SPI_cursor_open_with_args(NULL, text, nargs, (Oid *) argtypes,
									   values, NULL, false, 0);
	if (portal == NULL)
		elog(ERROR, "could not open a cursor for \"%s\": %s",
			 text, SPI_result_code_string(SPI_result));
	pfree(text);
	return portal;
}

/*
 * Run fn(arg) in a subtransaction, so that its failure undoes its own
 * work and nothing else: a task that handles many rows fails one row, not
 * the batch.  Returns NULL if fn succeeded, else its error, copied into
 * the caller's memory context after the subtransaction was rolled back.
 * A cancel or a shutdown is re-thrown: it ends the whole call.
 */
ErrorData *
payments_run_in_subtransaction(void (*fn) (void *arg), void *arg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	ErrorData  *volatile edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
	}
	PG_END_TRY();
	return edata;
}
