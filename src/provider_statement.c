/*-------------------------------------------------------------------------
 *
 * provider_statement.c
 *	  Provider statements: statement_begin, statement_add, statement_close,
 *	  and the trigger that checks every line however it arrives.
 *
 * A statement belongs to the role that began it; that role and its members
 * may add its lines, close it and reconcile it.  Lines arrive through
 * statement_add or, for a file of millions of lines, by COPY into
 * payments.statement_lines, on which payments_app has INSERT and nothing
 * else.  Both are INSERTs run with the caller's rights, and one
 * statement-level trigger checks the whole batch at once with the
 * extension owner's: each statement exists, is the caller's, is open, and
 * covers the time of each of its lines.  Any refusal aborts the batch, so
 * a statement never holds half a file.
 *
 * The trigger locks each statement it adds to FOR SHARE, and
 * statement_close locks it FOR UPDATE before it counts: a batch that is
 * still being loaded is either counted whole or refused once the
 * statement is closed, never half counted.  A closed statement never
 * changes; one whose count or total disagrees with its header stays open
 * and is never reconciled.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reconciliation.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/rangetypes.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(payments_statement_begin);
PG_FUNCTION_INFO_V1(payments_statement_add);
PG_FUNCTION_INFO_V1(payments_statement_close);
PG_FUNCTION_INFO_V1(payments_statement_lines_check);
PG_FUNCTION_INFO_V1(payments_statement_for_copy);

/* payments.statement_id: the statement that a COPY of lines goes to */
static char *statement_id_setting = NULL;
static int64 statement_id_for_copy = 0;

/* A statement of at least this many lines has the table analyzed at close */
#define STATEMENT_ANALYZE_LINES	10000

/* The last year a statement's period may reach */
#define STATEMENT_LAST_YEAR		9999

static SPIPlanPtr begin_plan;
static SPIPlanPtr read_plan;
static SPIPlanPtr lock_plan;
static SPIPlanPtr add_plan;
static SPIPlanPtr close_plan;

static bool
check_statement_id(char **newval, void **extra, GucSource source)
{
	int64	   *id;
	char	   *end;
	long long	v;

	if (**newval == '\0')
		v = 0;
	else
	{
		errno = 0;
		v = strtoll(*newval, &end, 10);
		if (errno != 0 || *end != '\0' || v <= 0)
		{
			GUC_check_errdetail("A statement id is a positive integer, as payments.statement_begin returns it.");
			return false;
		}
	}
	id = malloc(sizeof(int64));	/* the GUC machinery frees it with free() */
	if (id == NULL)
		return false;
	*id = v;
	*extra = id;
	return true;
}

static void
assign_statement_id(const char *newval, void *extra)
{
	statement_id_for_copy = *(int64 *) extra;
}

void
statement_init(void)
{
	DefineCustomStringVariable("payments.statement_id",
							   "The statement that lines loaded without a statement_id go to.",
							   "COPY payments.statement_lines without the statement_id column fills it from this setting.",
							   &statement_id_setting,
							   "",
							   PGC_USERSET,
							   0,
							   check_statement_id, assign_statement_id, NULL);
}

/*
 * payments.statement_for_copy(): the default of statement_lines'
 * statement_id, so that a provider's file, which does not name our
 * statement, is loaded by COPY as it is.
 */
Datum
payments_statement_for_copy(PG_FUNCTION_ARGS)
{
	if (statement_id_for_copy == 0)
		ereport(ERROR,
				(errcode(ERRCODE_NOT_NULL_VIOLATION),
				 errmsg("no statement is chosen for these lines"),
				 errdetail("A line without a statement_id goes to the statement that payments.statement_id names, and it is not set."),
				 errhint("SET payments.statement_id to the id that payments.statement_begin returned, then COPY.")));
	PG_RETURN_INT64(statement_id_for_copy);
}

/* The bounds of a period, which must both be finite. */
static void
period_bounds(Datum period, Statement *s)
{
	RangeType  *r = DatumGetRangeTypeP(period);
	TypeCacheEntry *typcache;
	RangeBound	lower;
	RangeBound	upper;
	bool		empty;

	typcache = lookup_type_cache(RangeTypeGetOid(r), TYPECACHE_RANGE_INFO);
	range_deserialize(typcache, r, &lower, &upper, &empty);
	if (empty)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("period must not be empty")));
	if (lower.infinite || upper.infinite ||
		TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(lower.val)) ||
		TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(upper.val)))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("period must have finite bounds"),
				 errdetail("A statement covers a span of time that ends, such as a day.")));
	/* so that a time of the period plus any grace is a timestamp */
	if (DatumGetTimestampTz(upper.val) >
		(date2j(STATEMENT_LAST_YEAR + 1, 1, 1) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("period must end by the end of year %d", STATEMENT_LAST_YEAR)));
	s->lower = DatumGetTimestampTz(lower.val);
	s->upper = DatumGetTimestampTz(upper.val);
	s->lower_inc = lower.inclusive;
	s->upper_inc = upper.inclusive;
}

static void
report_closed(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_STATEMENT_CLOSED),
			 errmsg("statement %lld is closed", (long long) id),
			 errdetail("A closed statement receives no more lines."),
			 errhint("Begin a new statement for a corrected file.")));
}

static void
report_not_owner(int64 id, Oid caller)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for statement %lld", (long long) id),
			 errdetail("The statement was begun by a role whose privileges role \"%s\" does not have.",
					   GetUserNameFromId(caller, false))));
}

/*
 * Statement id, after checking that caller has the privileges of the role
 * that began it (PM502 if there is none).  With for_update the statement
 * is locked, after that check, so that a role without rights on it cannot
 * make anyone wait.  The result is allocated in the caller's memory
 * context.
 */
Statement *
statement_lookup(int64 id, Oid caller, Oid tables_owner, bool for_update)
{
	MemoryContext outer = CurrentMemoryContext;
	PaymentsSavedUser saved;
	Datum		arg = Int64GetDatum(id);
	Statement  *s = NULL;
	bool		isnull;

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	payments_prepare(&read_plan,
					 "SELECT provider, period, status = 'closed', opened_by::oid"
					 " FROM @extschema@.statements WHERE id = $1",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(read_plan, &arg, NULL, SPI_OK_SELECT, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(outer);

		s = palloc0(sizeof(Statement));
		s->id = id;
		s->provider = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		s->closed = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
		s->opened_by = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
		period_bounds(SPI_getbinval(tup, desc, 2, &isnull), s);
		MemoryContextSwitchTo(spi);
	}
	if (s == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_STATEMENT_NOT_FOUND),
				 errmsg("statement %lld does not exist", (long long) id)));
	if (!has_privs_of_role(caller, s->opened_by))
		report_not_owner(id, caller);
	if (for_update)
	{
		payments_prepare(&lock_plan,
						 "SELECT status = 'closed' FROM @extschema@.statements"
						 " WHERE id = $1 FOR UPDATE",
						 1, (Oid[]) {INT8OID});
		if (payments_execute(lock_plan, &arg, NULL, SPI_OK_SELECT, 0) != 1)
			elog(ERROR, "statement %lld disappeared while it was locked", (long long) id);
		s->closed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	return s;
}

static int64
arg_statement_id(FunctionCallInfo fcinfo)
{
	return payments_arg_int64_range(fcinfo, 0, "statement_id", 1, PG_INT64_MAX);
}

/*
 * payments.statement_begin(provider, period, source, expected_lines,
 * expected_total): an open statement of the caller's.
 */
Datum
payments_statement_begin(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, TSTZRANGEOID, TEXTOID, INT8OID,
	NUMERICOID, OIDOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Statement	bounds;
	PaymentsSavedUser saved;
	int64		id;
	bool		isnull;

	values[0] = PointerGetDatum(payments_arg_text(fcinfo, 0, "provider",
												  STATEMENT_PROVIDER_MAX_BYTES));
	payments_arg_not_null(fcinfo, 1, "period");
	values[1] = PG_GETARG_DATUM(1);
	period_bounds(values[1], &bounds);
	if (PG_ARGISNULL(2))
		nulls[2] = 'n';
	else
		values[2] = PointerGetDatum(payments_arg_text(fcinfo, 2, "source",
													  STATEMENT_SOURCE_MAX_BYTES));
	if (PG_ARGISNULL(3))
		nulls[3] = 'n';
	else
		values[3] = Int64GetDatum(payments_arg_int64_range(fcinfo, 3, "expected_lines",
														   0, PG_INT64_MAX));
	if (PG_ARGISNULL(4))
		nulls[4] = 'n';
	else
		values[4] = payments_arg_amount(fcinfo, 4, "expected_total");
	values[5] = ObjectIdGetDatum(GetUserId());
	payments_check_not_in_recovery();

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid), true, &saved);
	SPI_connect();
	payments_prepare(&begin_plan,
					 "INSERT INTO @extschema@.statements"
					 " (provider, period, source, expected_lines, expected_total, opened_by)"
					 " VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole) RETURNING id",
					 6, argtypes);
	payments_execute(begin_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0);
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_INT64(id);
}

/*
 * payments.statement_add(statement_id, lines): lines is a JSON array of
 * objects with the columns of payments.statement_lines as keys.  The
 * INSERT runs with the caller's rights, as a COPY would, and the trigger
 * checks it.
 */
Datum
payments_statement_add(PG_FUNCTION_ARGS)
{
	int64		id = arg_statement_id(fcinfo);
	Datum		values[2];
	Jsonb	   *lines;
	Statement  *s;
	uint64		n;

	payments_arg_not_null(fcinfo, 1, "lines");
	lines = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_ARRAY(lines) || JB_ROOT_IS_SCALAR(lines))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("lines must be a JSON array of objects")));
	payments_check_not_in_recovery();
	s = statement_lookup(id, GetUserId(),
						 payments_function_owner(fcinfo->flinfo->fn_oid), false);
	if (s->closed)
		report_closed(id);

	values[0] = Int64GetDatum(id);
	values[1] = JsonbPGetDatum(lines);
	SPI_connect();
	payments_prepare(&add_plan,
					 "INSERT INTO @extschema@.statement_lines"
					 " (statement_id, external_id, payment_ref, amount, currency, status,"
					 "  occurred_at, fee, raw)"
					 " SELECT $1, l.external_id, l.payment_ref, l.amount, l.currency, l.status,"
					 "  l.occurred_at, l.fee, l.raw"
					 " FROM pg_catalog.jsonb_to_recordset($2) AS l(external_id text,"
					 "  payment_ref text, amount bigint, currency text, status text,"
					 "  occurred_at timestamptz, fee bigint, raw jsonb)",
					 2, (Oid[]) {INT8OID, JSONBOID});
	n = payments_execute(add_plan, values, NULL, SPI_OK_INSERT, 0);
	SPI_finish();
	PG_RETURN_INT64((int64) n);
}

/*
 * payments.statement_close(statement_id): count the lines and close the
 * statement if they agree with its header; a closed statement is left as
 * it is, so a retried close succeeds.
 */
Datum
payments_statement_close(PG_FUNCTION_ARGS)
{
	int64		id = arg_statement_id(fcinfo);
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	PaymentsSavedUser saved;
	Statement  *s;
	Datum		values[4];
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	payments_check_not_in_recovery();
	s = statement_lookup(id, GetUserId(), tables_owner, true);
	if (s->closed)
		PG_RETURN_VOID();

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	values[0] = Int64GetDatum(id);
	payments_execute_latest("SELECT t.n, t.total, t.totals,"
						  "  (s.expected_lines IS NULL OR s.expected_lines = t.n)"
						  "  AND (s.expected_total IS NULL OR s.expected_total = t.total),"
						  "  s.expected_lines, s.expected_total"
						  " FROM @extschema@.statements s,"
						  "  (SELECT coalesce(sum(g.n), 0)::bigint AS n,"
						  "    coalesce(sum(g.total), 0) AS total,"
						  "    coalesce(pg_catalog.jsonb_object_agg(g.currency,"
						  "      pg_catalog.jsonb_build_array(g.n, g.total)), '{}') AS totals"
						  "   FROM (SELECT l.currency::text AS currency, count(*) AS n,"
						  "          sum(l.amount) AS total"
						  "         FROM @extschema@.statement_lines l"
						  "        WHERE l.statement_id = $1 GROUP BY l.currency) g) t"
						  " WHERE s.id = $1",
						  1, (Oid[]) {INT8OID}, values, NULL, SPI_OK_SELECT);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (!DatumGetBool(SPI_getbinval(tup, desc, 4, &isnull)))
	{
		char	   *expected_lines = SPI_getvalue(tup, desc, 5);
		char	   *expected_total = SPI_getvalue(tup, desc, 6);
		char	   *lines = SPI_getvalue(tup, desc, 1);
		char	   *total = SPI_getvalue(tup, desc, 2);

		if (expected_total == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PM_STATEMENT_HEADER_MISMATCH),
					 errmsg("statement %lld does not agree with its header", (long long) id),
					 errdetail("The header announces %s lines; the statement holds %s.",
							   expected_lines, lines),
					 errhint("The file may be incomplete: begin a new statement and load the whole file into it.")));
		if (expected_lines == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PM_STATEMENT_HEADER_MISMATCH),
					 errmsg("statement %lld does not agree with its header", (long long) id),
					 errdetail("The header announces a total of %s; the statement's lines add up to %s.",
							   expected_total, total),
					 errhint("The file may be incomplete: begin a new statement and load the whole file into it.")));
		ereport(ERROR,
				(errcode(ERRCODE_PM_STATEMENT_HEADER_MISMATCH),
				 errmsg("statement %lld does not agree with its header", (long long) id),
				 errdetail("The header announces %s lines and a total of %s; the statement holds %s lines adding up to %s.",
						   expected_lines, expected_total, lines, total),
				 errhint("The file may be incomplete: begin a new statement and load the whole file into it.")));
	}
	values[1] = SPI_getbinval(tup, desc, 1, &isnull);
	values[2] = SPI_getbinval(tup, desc, 2, &isnull);
	values[3] = SPI_getbinval(tup, desc, 3, &isnull);
	payments_prepare(&close_plan,
					 "UPDATE @extschema@.statements SET status = 'closed', lines = $2,"
					 " total = $3, totals = $4, closed_at = pg_catalog.now()"
					 " WHERE id = $1",
					 4, (Oid[]) {INT8OID, INT8OID, NUMERICOID, JSONBOID});
	payments_execute(close_plan, values, NULL, SPI_OK_UPDATE, 0);

	/*
	 * A file of many lines, loaded a moment ago, is reconciled next: give
	 * the planner its statistics now rather than when autovacuum comes by,
	 * or it takes the statement for a few lines and plans the run so.
	 */
	if (DatumGetInt64(values[1]) >= STATEMENT_ANALYZE_LINES)
		payments_execute_once("ANALYZE @extschema@.statement_lines", 0, NULL, NULL, NULL,
							  SPI_OK_UTILITY);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * Statement-level AFTER INSERT trigger of payments.statement_lines: the
 * batch's lines (the transition table new_lines) must each belong to an
 * open statement of the inserting role whose period covers them.
 */
Datum
payments_statement_lines_check(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Oid			caller = GetUserId();
	PaymentsSavedUser saved;
	Datum		arg;
	bool		isnull;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event) ||
		trigdata->tg_newtable == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("statement_lines_check must be fired after INSERT for each statement, with a transition table")));

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid), true, &saved);
	SPI_connect();
	SPI_register_trigger_data(trigdata);

	/*
	 * The first statement of the batch that is missing, another role's or
	 * closed; then every statement of the batch locked, and looked at
	 * again as it is once locked (one that closed meanwhile is refused).
	 * Set-based, so that memory does not grow with the batch.  The lock is
	 * taken in a materialized CTE, so that the test of the status is not
	 * pushed below it, where it would skip the rows it should wait for.
	 */
	arg = ObjectIdGetDatum(caller);
	for (int pass = 0; pass < 2; pass++)
	{
		HeapTuple	tup;
		TupleDesc	desc;
		int64		id;

		if (payments_execute_once(pass == 0 ?
								  "SELECT n.statement_id, s.id IS NULL,"
								  "  NOT pg_catalog.pg_has_role($1, s.opened_by, 'USAGE')"
								  " FROM (SELECT DISTINCT statement_id FROM new_lines) n"
								  " LEFT JOIN @extschema@.statements s ON s.id = n.statement_id"
								  " WHERE s.id IS NULL OR s.status <> 'open'"
								  "    OR NOT pg_catalog.pg_has_role($1, s.opened_by, 'USAGE')"
								  " ORDER BY s.id IS NULL DESC,"
								  "  NOT pg_catalog.pg_has_role($1, s.opened_by, 'USAGE') DESC"
								  " LIMIT 1" :
								  "WITH l AS MATERIALIZED (SELECT s.id, s.status"
								  "   FROM @extschema@.statements s"
								  "  WHERE s.id IN (SELECT statement_id FROM new_lines)"
								  "  FOR SHARE)"
								  "SELECT l.id, false, false FROM l"
								  " WHERE l.status <> 'open' LIMIT 1",
								  1, (Oid[]) {OIDOID}, &arg, NULL, SPI_OK_SELECT) == 0)
			continue;
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		if (DatumGetBool(SPI_getbinval(tup, desc, 2, &isnull)))
			ereport(ERROR,
					(errcode(ERRCODE_PM_STATEMENT_NOT_FOUND),
					 errmsg("statement %lld does not exist", (long long) id),
					 errhint("Begin a statement with payments.statement_begin and load its lines with its id.")));
		if (DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull)))
			report_not_owner(id, caller);
		report_closed(id);
	}

	if (payments_execute_once("SELECT n.statement_id, n.external_id, n.occurred_at::text, s.period::text"
							  " FROM new_lines n JOIN @extschema@.statements s"
							  "   ON s.id = n.statement_id"
							  " WHERE NOT s.period OPERATOR(pg_catalog.@>) n.occurred_at LIMIT 1",
							  0, NULL, NULL, NULL, SPI_OK_SELECT) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		ereport(ERROR,
				(errcode(ERRCODE_PM_STATEMENT_LINE_OUTSIDE),
				 errmsg("line \"%s\" of statement %s is outside the statement's period",
						SPI_getvalue(tup, desc, 2), SPI_getvalue(tup, desc, 1)),
				 errdetail("The line occurred at %s; the statement covers %s.",
						   SPI_getvalue(tup, desc, 3), SPI_getvalue(tup, desc, 4))));
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	return PointerGetDatum(NULL);
}
