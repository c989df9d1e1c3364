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

#include "extension_catalog.h"
#include "access/xact.h"
#include "lib/stringinfo.h"
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
 */
static char *
with_schema(const char *sql)
{
	const char *marker = "@extschema@";
	const char *schema = payments_schema_quoted();
	StringInfoData buf;
	const char *p = sql;
	const char *hit;

	initStringInfo(&buf);
	while ((hit = strstr(p, marker)) != NULL)
	{
		appendBinaryStringInfo(&buf, p, hit - p);
		appendStringInfoString(&buf, schema);
		p = hit + strlen(marker);
	}
	appendStringInfoString(&buf, p);
	return buf.data;
}

SPIPlanPtr
payments_prepare(SPIPlanPtr *cache, const char *sql, int nargs,
				 const Oid *argtypes)
{
	SPIPlanPtr	plan;
	uint64		generation = payments_schema_generation();
	char	   *text;

	if (generation != kept_generation)
	{
		for (int i = 0; i < nkept; i++)
			*kept_caches[i] = NULL;
		nkept = 0;
		kept_generation = generation;
	}
	if (*cache != NULL)
		return *cache;

	/*
	 * Always the generic plan: every query here is a key lookup whose best
	 * plan does not depend on the values, and the plan cache would
	 * otherwise plan some of them afresh on every call when it guesses a
	 * custom plan to be cheaper.
	 */
	text = with_schema(sql);
	plan = SPI_prepare_cursor(text, nargs, (Oid *) argtypes,
							  CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "could not prepare query \"%s\": %s",
			 text, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep prepared query \"%s\"", text);
	pfree(text);
	remember_cache(cache);
	*cache = plan;
	return plan;
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
uint64
payments_execute_once(const char *sql, int nargs, const Oid *argtypes,
					  Datum *values, const char *nulls, int expected)
{
	char	   *text = with_schema(sql);
	int			rc;

	rc = SPI_execute_with_args(text, nargs, (Oid *) argtypes, values, nulls,
							   false, 0);
	if (rc != expected)
		elog(ERROR, "SPI_execute_with_args returned %s, expected %s",
			 SPI_result_code_string(rc), SPI_result_code_string(expected));
	pfree(text);
	return SPI_processed;
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
	int			rc;

	plan = SPI_prepare(text, nargs, (Oid *) argtypes);
	if (plan == NULL)
		elog(ERROR, "could not prepare query \"%s\": %s",
			 text, SPI_result_code_string(SPI_result));
	rc = SPI_execute_snapshot(plan, values, nulls, GetLatestSnapshot(),
							  InvalidSnapshot, false, false, 0);
	if (rc != expected)
		elog(ERROR, "SPI_execute_snapshot returned %s, expected %s",
			 SPI_result_code_string(rc), SPI_result_code_string(expected));
	SPI_freeplan(plan);
	pfree(text);
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
