/*-------------------------------------------------------------------------
 *
 * spi_util.c
 *	  SPI plans prepared once per backend and kept for its lifetime.
 *
 * A kept plan is a cached plan source: the plan cache revalidates it when
 * the tables it reads change (even when the extension is dropped and
 * created again), so callers only ever hold a pointer to it.  Every query
 * text names its objects with their schema, and every caller runs under a
 * pinned search_path, so a plan never resolves names differently.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"

#include "executor/spi.h"

SPIPlanPtr
payments_prepare(SPIPlanPtr *cache, const char *sql, int nargs,
				 const Oid *argtypes)
{
	SPIPlanPtr	plan;

	if (*cache != NULL)
		return *cache;

	/*
	 * Always the generic plan: every query here is a key lookup whose best
	 * plan does not depend on the values, and the plan cache would
	 * otherwise plan some of them afresh on every call when it guesses a
	 * custom plan to be cheaper.
	 */
	plan = SPI_prepare_cursor(sql, nargs, (Oid *) argtypes,
							  CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "could not prepare query \"%s\": %s",
			 sql, SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep prepared query \"%s\"", sql);
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
