/*-------------------------------------------------------------------------
 *
 * reconciliation_run.c
 *	  reconcile: one closed statement against our rows of its period,
 *	  every line and row classified in one set-based pass.
 *
 * Our side is read in one query of its own, with the rights of the role
 * the reconciliation belongs to (its owner) and as a security-restricted
 * operation, whoever calls reconcile: the source may be a view whose
 * functions, or a table whose row-level security, must act for that role
 * and for no other.  Every role that may define or run the reconciliation
 * has that role's privileges, so none reads more than it could itself;
 * reading as the caller instead would run the definition's code (a view's
 * function a member of a shared role wrote) with the caller's rights, a
 * superuser's among them.  What the query returns (reference, amount, status, time and
 * currency, each converted to a built-in type by that query) goes to a
 * tuplestore, which keeps work_mem in memory and spills the rest to disk.
 * The classification then runs with the extension owner's rights, joining
 * the statement's lines with the tuplestore, registered as the ephemeral
 * relation internal_rows; it writes only the differences, so its cost is
 * a scan of each side, the sort that finds duplicate lines and one hash
 * join.
 *
 * Lines and rows meet by reference: the first line of a reference (by
 * time, then external id) is compared with our row of that reference,
 * each further line of it is a duplicate_external.  The join is on the
 * reference and the line's number, our rows being number 1: two plain
 * columns, which the planner estimates from the lines' statistics (about
 * one row per line) and hashes; on an expression (the reference of first
 * lines only) it took the join for a product of both sides and sorted
 * both for a merge join.  A pair differs, in this order, by currency
 * (only if the reconciliation names a currency column), by amount (beyond
 * the tolerance; a NULL amount of ours always differs) or by status (after
 * the status map); else it is matched.  Amounts are subtracted only when
 * they are not equal, since nearly every pair is.
 *
 * The grace pool: a row of ours that the statement does not hold waits,
 * as a missing_external item marked waiting, until a statement whose
 * period reaches the row's time plus the grace is reconciled.  The rows
 * waiting from earlier statements are read again by reference (our side's
 * query again, with the same rights) and joined with the lines like
 * the rows of the period.  One that a line now holds is settled as
 * matched; one whose grace has ended is declared missing_external, and
 * only then can it be healed.  Waiting is measured against the statements'
 * periods, never against the clock, so a run gives the same answer
 * whenever it runs.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reconciliation.h"
#include "payments.h"
#include "args.h"
#include "fault.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/transam.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/tstoreReceiver.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/params.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/portal.h"
#include "utils/lsyscache.h"
#include "utils/queryenvironment.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(payments_reconcile);

/* The parameters of the classification and of the checks of our side */
#define RUN_NPARAMS		10

/* Whether a run is under way in this backend (see payments_reconcile) */
static bool running = false;

/*
 * Writes the differences of run $3 of reconciliation $2 on statement $1.
 * $4 tolerance, $5 the status map (written into the query as CASEs, see
 * status_expression), $6 the end of the statement's period, $7
 * the grace, $8 whether currencies are compared.
 */
static const char classify_sql[] =
"INSERT INTO @extschema@.reconciliation_items"
" (run_id, reconciliation_id, statement_id, class, reference, payment_ref,"
"  external_id, amount, currency, internal_amount, external_amount,"
"  internal_currency, external_currency, internal_status, external_status,"
"  internal_at, occurred_at, waiting, waited)"
" SELECT $3, $2, $1, c.class, coalesce(c.payment_ref, c.ref),"
"  coalesce(c.payment_ref, c.ref), c.external_id,"
"  coalesce(c.l_amount::pg_catalog.numeric, c.i_amount),"
"  coalesce(c.l_currency::pg_catalog.text,"
"           pg_catalog.upper(pg_catalog.btrim(c.i_currency))),"
"  c.i_amount, c.l_amount, c.i_currency, c.l_currency, c.i_status, c.l_status,"
"  c.at, c.occurred_at, c.class = 'missing_external' AND NOT c.due,"
"  c.pool_state IS NOT NULL"
" FROM (SELECT CASE"
"          WHEN l.external_id IS NULL THEN 'missing_external'"
"          WHEN l.payment_ref IS NULL THEN 'missing_internal'"
"          WHEN l.n > 1 THEN 'duplicate_external'"
"          WHEN i.ref IS NULL THEN 'missing_internal'"
"          WHEN $8 AND i.currency IS DISTINCT FROM l.currency::pg_catalog.text"
"               AND pg_catalog.upper(pg_catalog.btrim(i.currency))"
"                   IS DISTINCT FROM l.currency::pg_catalog.text THEN 'currency_mismatch'"
"          WHEN i.amount IS NULL"
"               OR i.amount <> l.amount"
"                  AND pg_catalog.abs(l.amount - i.amount) > $4 THEN 'amount_mismatch'"
"          WHEN %s IS DISTINCT FROM %s THEN 'status_mismatch'"
"          ELSE 'matched'"
"        END AS class,"
"        l.external_id, l.payment_ref, l.amount AS l_amount,"
"        l.currency AS l_currency, l.status AS l_status, l.occurred_at,"
"        i.ref, i.amount AS i_amount, i.currency AS i_currency,"
"        i.status AS i_status, i.at, i.pooled, i.pool_state,"
"        l.external_id IS NULL"
"        AND (i.at + $7 <= $6 OR i.pool_state IS NOT DISTINCT FROM 'declared') AS due"
"       FROM (SELECT s.external_id, s.payment_ref, s.amount, s.currency, s.status,"
"               s.occurred_at,"
"               pg_catalog.row_number() OVER"
"                 (PARTITION BY s.payment_ref ORDER BY s.occurred_at, s.external_id) AS n"
"             FROM @extschema@.statement_lines s WHERE s.statement_id = $1) l"
"       FULL JOIN (SELECT x.ref, x.amount, x.currency, x.status, x.at, x.pooled,"
"                    p.state AS pool_state, 1::pg_catalog.int8 AS n"
"                  FROM %s x"
"                  LEFT JOIN (SELECT o.reference, o.state"
"                               FROM @extschema@.reconciliation_pool o"
"                              WHERE o.reconciliation_id = $2"
"                                AND (o.state = 'waiting' OR o.statement_id = $1"
"                                     OR o.settled_statement_id = $1)) p"
"                         ON p.reference = x.ref) i"
"         ON i.ref = l.payment_ref AND i.n = l.n) c"
" WHERE (c.class <> 'matched' OR c.pool_state IS NOT NULL)"
"   AND NOT (c.class = 'missing_external' AND c.pool_state IS NOT DISTINCT FROM 'matched')"
"   AND NOT (c.class = 'missing_external' AND c.pooled AND NOT c.due)";

/*
 * The grace pool after run $3 (statement $1, reconciliation $2, grace $4):
 * rows now missing start waiting, or are declared at once if their grace
 * has already ended; rows that waited are settled as matched or declared.
 */
static const char pool_sql[] =
"INSERT INTO @extschema@.reconciliation_pool AS p"
" (reconciliation_id, reference, statement_id, waiting_until, state, settled_statement_id)"
" SELECT DISTINCT ON (i.reference) $2, i.reference, $1, i.internal_at + $4,"
"  CASE WHEN i.class <> 'missing_external' THEN 'matched'"
"       WHEN i.waiting THEN 'waiting' ELSE 'declared' END,"
"  CASE WHEN i.waiting THEN NULL ELSE $1 END"
" FROM @extschema@.reconciliation_items i"
" WHERE i.run_id = $3 AND i.internal_at IS NOT NULL"
"   AND (i.class = 'missing_external' OR i.waited)"
" ORDER BY i.reference, i.id"
" ON CONFLICT (reconciliation_id, reference) DO UPDATE"
"   SET state = excluded.state, settled_statement_id = excluded.settled_statement_id"
"   WHERE p.state = 'waiting' AND excluded.state <> 'waiting'";

/*
 * The totals of run $2 on statement $1.  The matched lines per currency
 * are the statement's lines less those that differ: every line is
 * classified exactly once; the rows of ours it classified are those
 * matched and those among its differences.
 */
static const char finish_sql[] =
"WITH m AS ("
"   SELECT t.key AS currency, (t.value ->> 0)::bigint - coalesce(d.n, 0) AS n,"
"          (t.value ->> 1)::pg_catalog.numeric - coalesce(d.amount, 0) AS amount"
"     FROM (SELECT e.key, e.value FROM @extschema@.statements st,"
"                  pg_catalog.jsonb_each(st.totals) e WHERE st.id = $1) t"
"     LEFT JOIN (SELECT i.external_currency::pg_catalog.text AS currency,"
"                       count(*) AS n, sum(i.external_amount) AS amount"
"                  FROM @extschema@.reconciliation_items i"
"                 WHERE i.run_id = $2 AND i.external_id IS NOT NULL"
"                   AND i.class <> 'matched'"
"                 GROUP BY 1) d ON d.currency = t.key),"
" d AS ("
"   SELECT count(*) FILTER (WHERE i.class <> 'matched' AND NOT i.waiting) AS differences,"
"          count(*) FILTER (WHERE i.waiting) AS waiting,"
"          count(*) FILTER (WHERE i.internal_at IS NOT NULL AND i.class <> 'matched') AS ours"
"     FROM @extschema@.reconciliation_items i WHERE i.run_id = $2)"
"UPDATE @extschema@.reconciliation_runs r"
" SET finished_at = pg_catalog.clock_timestamp(),"
"  lines = (SELECT st.lines FROM @extschema@.statements st WHERE st.id = $1),"
"  internal_rows = d.ours + (SELECT coalesce(sum(m.n), 0) FROM m),"
"  differences = d.differences, waiting = d.waiting,"
"  matched = (SELECT coalesce(pg_catalog.jsonb_object_agg(m.currency,"
"               pg_catalog.jsonb_build_array(m.n, m.amount)), '{}')"
"             FROM m WHERE m.n > 0)"
" FROM d WHERE r.id = $2";

static SPIPlanPtr run_plan;
static SPIPlanPtr pool_refs_plan;
static SPIPlanPtr supersede_plan;
static SPIPlanPtr queued_plan;

/* The rows of our side, as the classification reads them */
static TupleDesc
internal_rows_desc(void)
{
	TupleDesc	desc = CreateTemplateTupleDesc(6);

	TupleDescInitEntry(desc, 1, "ref", TEXTOID, -1, 0);
	TupleDescInitEntryCollation(desc, 1, C_COLLATION_OID);
	TupleDescInitEntry(desc, 2, "amount", NUMERICOID, -1, 0);
	TupleDescInitEntry(desc, 3, "status", TEXTOID, -1, 0);
	TupleDescInitEntry(desc, 4, "at", TIMESTAMPTZOID, -1, 0);
	TupleDescInitEntry(desc, 5, "currency", TEXTOID, -1, 0);
	TupleDescInitEntry(desc, 6, "pooled", BOOLOID, -1, 0);
	return desc;
}

/*
 * The query of our side: the rows of the period or, with pooled, the rows
 * before its end whose reference is one of an array, the parameters named
 * in p (lower bound, upper bound, references).  Every value is converted
 * here, so that the classification compares built-in types only: an
 * amount that is not a number (NaN, Infinity) reads as NULL, which differs
 * from any line's amount.  (A currency is compared upper-cased and
 * trimmed, as the lines' are written, by the classification, and only when
 * it is not equal as it is.)  References are compared as text, as the grace
 * pool keeps them: its references may come from an earlier definition
 * whose column had another type.  An index on the column (on ref::text
 * for another type than text) finds the few rows.  With direct, the query
 * reads the table itself (ONLY, see reconcile) and leaves out pooled rows
 * whose reference a row of the period has: a reference used again later
 * names the period's row.
 */
typedef struct OurSideParams
{
	const char *lower;
	const char *upper;
	const char *refs;
} OurSideParams;

static char *
internal_query(Reconciliation *r, Statement *s, const char *relname,
			   bool pooled, bool direct, const OurSideParams *p)
{
	StringInfoData buf;
	char	   *ref = pstrdup(quote_identifier(r->ref_col));
	char	   *at = pstrdup(quote_identifier(r->at_col));
	const char *only = direct ? "ONLY " : "";

#define IN_PERIOD(alias) \
	alias, at, s->lower_inc ? ">=" : ">", p->lower, \
	alias, at, s->upper_inc ? "<=" : "<", p->upper
#define IN_PERIOD_FMT \
	"%s.%s OPERATOR(pg_catalog.%s) %s AND %s.%s OPERATOR(pg_catalog.%s) %s"

	initStringInfo(&buf);
	appendStringInfo(&buf,
					 "SELECT t.%s::pg_catalog.text COLLATE \"C\" AS ref,"
					 " NULLIF(NULLIF(NULLIF("
					 "t.%s::pg_catalog.numeric, 'NaN'), 'Infinity'), '-Infinity') AS amount,"
					 " t.%s::pg_catalog.text COLLATE pg_catalog.\"default\" AS status,"
					 " t.%s::pg_catalog.timestamptz AS at, ",
					 ref, quote_identifier(r->amount_col),
					 quote_identifier(r->status_col), at);
	if (r->currency_col != NULL)
		appendStringInfo(&buf, "t.%s::pg_catalog.text COLLATE pg_catalog.\"default\"",
						 quote_identifier(r->currency_col));
	else
		appendStringInfoString(&buf, "NULL::pg_catalog.text");
	appendStringInfo(&buf, " AS currency, %s AS pooled FROM %s%s t WHERE ",
					 pooled ? "true" : "false", only, relname);
	if (!pooled)
	{
		appendStringInfo(&buf, IN_PERIOD_FMT, IN_PERIOD("t"));
		appendStringInfo(&buf, " AND t.%s::pg_catalog.text IS NOT NULL", ref);
		return buf.data;
	}
	appendStringInfo(&buf, "t.%s::pg_catalog.text OPERATOR(pg_catalog.=) ANY (%s)"
					 " AND NOT (" IN_PERIOD_FMT ") AND t.%s OPERATOR(pg_catalog.<) %s",
					 ref, p->refs, IN_PERIOD("t"), at, p->upper);
	if (direct)
	{
		appendStringInfo(&buf, " AND NOT EXISTS (SELECT FROM ONLY %s u WHERE ", relname);
		appendStringInfo(&buf, IN_PERIOD_FMT, IN_PERIOD("u"));
		appendStringInfo(&buf, " AND u.%s::pg_catalog.text OPERATOR(pg_catalog.=)"
						 " t.%s::pg_catalog.text)", ref, ref);
	}
	return buf.data;
#undef IN_PERIOD
#undef IN_PERIOD_FMT
}

/*
 * Run query as role, in a security-restricted operation, adding what it
 * returns to store (values detoasted: the store holds them, not pointers
 * into the source).  Whatever role's code does to the session does not
 * outlive the read: a setting it changed (search_path above all, under
 * which the caller's next statement would find role's functions) is
 * undone, and a cursor it left open is refused, as for a compensation
 * handler.  The caller is connected to SPI.
 */
static void
read_our_side(const char *query, Oid role, Statement *s, Datum refs,
			  Tuplestorestate *store, TupleDesc desc)
{
	Oid			save_userid;
	int			save_sec_context;
	int			nestlevel;
	bool		no_cursors_before = ThereAreNoReadyPortals();
	ParamListInfo params = makeParamList(3);
	DestReceiver *dest = CreateDestReceiver(DestTuplestore);
	SPIExecuteOptions options;
	int			rc;

	params->numParams = refs == (Datum) 0 ? 2 : 3;
	params->params[0] = (ParamExternData) {
		.value = TimestampTzGetDatum(s->lower),.isnull = false,
		.pflags = PARAM_FLAG_CONST,.ptype = TIMESTAMPTZOID
	};
	params->params[1] = (ParamExternData) {
		.value = TimestampTzGetDatum(s->upper),.isnull = false,
		.pflags = PARAM_FLAG_CONST,.ptype = TIMESTAMPTZOID
	};
	if (refs != (Datum) 0)
		params->params[2] = (ParamExternData) {
		.value = refs,.isnull = false,
		.pflags = PARAM_FLAG_CONST,.ptype = TEXTARRAYOID
	};
	SetTuplestoreDestReceiverParams(dest, store, CurrentMemoryContext, true,
									desc, "could not convert the rows of our side");
	memset(&options, 0, sizeof(options));
	options.params = params;
	options.dest = dest;
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	nestlevel = NewGUCNestLevel();
	SetUserIdAndSecContext(role, save_sec_context | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	rc = SPI_execute_extended(query, &options);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	AtEOXact_GUC(false, nestlevel);
	if (no_cursors_before && !ThereAreNoReadyPortals())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_CURSOR_STATE),
				 errmsg("the source of a reconciliation left a cursor open"),
				 errdetail("A function of the source opened a cursor and did not close it.")));
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "our side's query returned %s", SPI_result_code_string(rc));
	dest->rDestroy(dest);
}

/*
 * The references of rows of ours that wait in the grace pool since
 * another statement, and of those that an earlier run of this statement
 * settled (so that a run again finds them again), as a text array, or 0
 * if there are none.  The caller is connected to SPI and acts as the
 * owner.
 */
static Datum
waiting_references(Reconciliation *r, Statement *s)
{
	Datum		values[2] = {Int64GetDatum(r->id), Int64GetDatum(s->id)};
	bool		isnull;
	Datum		refs;

	payments_prepare(&pool_refs_plan,
					 "SELECT pg_catalog.array_agg(reference)"
					 " FROM @extschema@.reconciliation_pool"
					 " WHERE reconciliation_id = $1"
					 "   AND (state = 'waiting' AND statement_id <> $2"
					 "        OR settled_statement_id = $2)",
					 2, (Oid[]) {INT8OID, INT8OID});
	payments_execute(pool_refs_plan, values, NULL, SPI_OK_SELECT, 0);
	refs = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? (Datum) 0 : SPI_datumTransfer(refs, false, -1);
}

/*
 * The references of refs (a text array) that no row of internal_rows has,
 * or 0 if none is left.  The caller is connected to SPI, with
 * internal_rows registered, and acts as the owner.
 */
static Datum
references_not_read(Datum refs)
{
	bool		isnull;
	Datum		left;

	payments_execute_once("SELECT pg_catalog.array_agg(r) FROM pg_catalog.unnest($1) r"
						  " WHERE NOT EXISTS (SELECT FROM internal_rows x"
						  "                    WHERE x.ref OPERATOR(pg_catalog.=) r COLLATE \"C\")",
						  1, (Oid[]) {TEXTARRAYOID}, &refs, NULL, SPI_OK_SELECT);
	left = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? (Datum) 0 : left;
}

/*
 * Each reference of our side must name one row: a second row would meet
 * the same line and count it twice, and the totals would no longer add
 * up.  Not checked when a unique index on the column already says so.
 * our_side is what the classification reads, with its parameters.  The
 * caller is connected to SPI and acts as the owner.
 */
static void
check_unique_references(Reconciliation *r, const char *our_side,
						const Oid *types, Datum *values, const char *nulls)
{
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;

	if (payments_execute_once(psprintf("SELECT x.ref, pg_catalog.count(*) FROM %s x"
									   " GROUP BY x.ref"
									   " HAVING pg_catalog.count(*) OPERATOR(pg_catalog.>) 1"
									   " LIMIT 1", our_side),
							  RUN_NPARAMS, types, values, nulls, SPI_OK_SELECT) == 0)
		return;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	ereport(ERROR,
			(errcode(ERRCODE_CARDINALITY_VIOLATION),
			 errmsg("reference \"%s\" names %lld rows of the source of reconciliation \"%s\"",
					SPI_getvalue(tup, desc, 1),
					(long long) DatumGetInt64(SPI_getbinval(tup, desc, 2, &isnull)),
					r->name),
			 errdetail("A line is compared with the one row of ours that has its reference; with two, it would be counted twice."),
			 errhint("Make column \"%s\" unique among the rows a statement covers, or reconcile a view that keeps one row per reference.",
					 r->ref_col)));
}

/*
 * A reference of ours longer than a line's can be matches no line, so it
 * is among the differences run_id wrote: refused there, before the grace
 * pool would have to keep it.  The caller is connected to SPI and acts as
 * the owner.
 */
static void
check_reference_lengths(Reconciliation *r, int64 run_id)
{
	Datum		arg = Int64GetDatum(run_id);
	char	   *ref;

	if (payments_execute_once("SELECT i.reference FROM @extschema@.reconciliation_items i"
							  " WHERE i.run_id = $1"
							  "   AND pg_catalog.octet_length(i.reference) OPERATOR(pg_catalog.>) "
							  CppAsString2(RECONCILIATION_REF_MAX_BYTES) " LIMIT 1",
							  1, (Oid[]) {INT8OID}, &arg, NULL, SPI_OK_SELECT) == 0)
		return;
	ref = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	ereport(ERROR,
			(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
			 errmsg("a reference of the source of reconciliation \"%s\" is longer than %d bytes",
					r->name, RECONCILIATION_REF_MAX_BYTES),
			 errdetail("It starts \"%.*s\"; no line can name it.",
					   pg_mbcliplen(ref, strlen(ref), 40), ref)));
}

/*
 * The status of column mapped by side ("internal" or "external") of the
 * status map: a CASE of the map's (checked, quoted) strings, which the
 * classification evaluates for every line and row far faster than a look
 * up in the jsonb.  The caller is connected to SPI and acts as the owner.
 */
static char *
status_expression(Reconciliation *r, const char *side, const char *column)
{
	StringInfoData buf;
	Datum		values[2];
	uint64		n;

	if (r->status_map == (Datum) 0)
		return pstrdup(column);
	values[0] = r->status_map;
	values[1] = CStringGetTextDatum(side);
	n = payments_execute_once("SELECT m.key, m.value FROM pg_catalog.jsonb_each_text("
							  "  $1 OPERATOR(pg_catalog.->) $2) m ORDER BY m.key",
							  2, (Oid[]) {JSONBOID, TEXTOID}, values, NULL, SPI_OK_SELECT);
	if (n == 0)
		return pstrdup(column);
	initStringInfo(&buf);
	appendStringInfo(&buf, "CASE %s", column);
	for (uint64 i = 0; i < n; i++)
		appendStringInfo(&buf, " WHEN %s THEN %s",
						 quote_literal_cstr(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1)),
						 quote_literal_cstr(SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2)));
	appendStringInfo(&buf, " ELSE %s END", column);
	return buf.data;
}

/*
 * A run.  Our side is read one of two ways.  Where reading the source
 * cannot run any code of a user's (a plain table, without row-level
 * security, whose named columns have built-in types: no view, function,
 * policy, cast or output function of a user's is involved), the
 * classification reads the table itself, ONLY the table (a child attached
 * meanwhile could be anything), after the owner's privileges on its
 * columns were checked; the source stays locked to the end of the
 * transaction, so that none of this changes under the run.  Any other
 * source is read into a tuplestore with the owner's rights first.
 */
static int64
reconcile(Reconciliation *r, Statement *s, Oid caller, Oid tables_owner)
{
	static const Oid types[RUN_NPARAMS] = {INT8OID, INT8OID, INT8OID, NUMERICOID,
		JSONBOID, TIMESTAMPTZOID, INTERVALOID, BOOLOID, TIMESTAMPTZOID, TEXTARRAYOID};
	static const OurSideParams direct_params = {"$9", "$6", "$10"};
	static const OurSideParams read_params = {"$1", "$2", "$3"};
	const char *cols[5] = {r->ref_col, r->amount_col, r->status_col,
	r->at_col, r->currency_col};
	char	   *relname;
	bool		ref_unique;
	bool		direct;
	char	   *our_side;
	PaymentsSavedUser saved;
	Tuplestorestate *store = NULL;
	Datum		refs;
	Datum		values[RUN_NPARAMS];
	char		nulls[RUN_NPARAMS];
	int64		run_id;
	int64		queued;
	int			guc_level;
	bool		isnull;

	reconciliation_check_source(r->source, cols, r->owner, &relname,
								&ref_unique, &direct);

	SPI_connect();
	payments_begin_as_owner(tables_owner, true, &saved);
	values[0] = Int64GetDatum(r->id);
	values[1] = Int64GetDatum(s->id);
	values[2] = ObjectIdGetDatum(caller);
	payments_prepare(&run_plan,
					 "INSERT INTO @extschema@.reconciliation_runs"
					 " (reconciliation_id, statement_id, run_by)"
					 " VALUES ($1, $2, $3::pg_catalog.regrole) RETURNING id",
					 3, (Oid[]) {INT8OID, INT8OID, OIDOID});
	payments_execute(run_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
	run_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	refs = waiting_references(r, s);
	payments_end_as_owner(&saved);

	if (direct)
	{
		our_side = internal_query(r, s, relname, false, true, &direct_params);
		if (refs != (Datum) 0)
			our_side = psprintf("%s UNION ALL %s", our_side,
								internal_query(r, s, relname, true, true, &direct_params));
		our_side = psprintf("(%s)", our_side);
	}
	else
	{
		TupleDesc	desc = internal_rows_desc();
		EphemeralNamedRelation enr;

		/* Our side, with the rights of the reconciliation's role */
		store = tuplestore_begin_heap(false, false, work_mem);
		read_our_side(internal_query(r, s, relname, false, false, &read_params),
					  r->owner, s, (Datum) 0, store, desc);
		enr = palloc0(sizeof(EphemeralNamedRelationData));
		enr->md.name = "internal_rows";
		enr->md.reliddesc = InvalidOid;
		enr->md.tupdesc = desc;
		enr->md.enrtype = ENR_NAMED_TUPLESTORE;
		enr->reldata = store;
		if (SPI_register_relation(enr) != SPI_OK_REL_REGISTER)
			elog(ERROR, "could not register our side as an ephemeral relation");

		/*
		 * The rows waiting in the pool, but for references the period has
		 * a row of: a reference used again later names the period's row.
		 */
		if (refs != (Datum) 0)
		{
			payments_begin_as_owner(tables_owner, true, &saved);
			refs = references_not_read(refs);
			payments_end_as_owner(&saved);
		}
		if (refs != (Datum) 0)
			read_our_side(internal_query(r, s, relname, true, false, &read_params),
						  r->owner, s, refs, store, desc);
		enr->md.enrtuples = tuplestore_tuple_count(store);
		our_side = "internal_rows";
	}

	payments_begin_as_owner(tables_owner, true, &saved);
	memset(nulls, ' ', sizeof(nulls));
	values[0] = Int64GetDatum(s->id);
	values[1] = Int64GetDatum(r->id);
	values[2] = Int64GetDatum(run_id);
	values[3] = r->tolerance;
	values[4] = r->status_map;
	nulls[4] = r->status_map == (Datum) 0 ? 'n' : ' ';
	values[5] = TimestampTzGetDatum(s->upper);
	values[6] = r->grace;
	values[7] = BoolGetDatum(r->currency_col != NULL);
	values[8] = TimestampTzGetDatum(s->lower);
	values[9] = refs;
	nulls[9] = refs == (Datum) 0 ? 'n' : ' ';
	if (!ref_unique)
		check_unique_references(r, our_side, types, values, nulls);

	/*
	 * Without JIT: the classification's time goes to sorting the lines,
	 * hashing and temporary files, not to expressions, and a large
	 * statement's cost crosses the thresholds at which JIT inlines and
	 * optimizes, which costs more time and memory than it wins
	 * (doc/benchmarks.md).
	 */
	guc_level = NewGUCNestLevel();
	(void) set_config_option("jit", "off", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	payments_execute_once(psprintf(classify_sql,
								   status_expression(r, "internal", "i.status"),
								   status_expression(r, "external", "l.status"),
								   our_side),
						  RUN_NPARAMS, types, values, nulls, SPI_OK_INSERT);
	AtEOXact_GUC(true, guc_level);
	if (store != NULL)
	{
		SPI_unregister_relation("internal_rows");
		tuplestore_end(store);
	}
	check_reference_lengths(r, run_id);
	(void) PAYMENTS_FAULT(FAULT_RECONCILE_MID_RUN);

	values[3] = r->grace;
	payments_execute_once(pool_sql, 4,
						  (Oid[]) {INT8OID, INT8OID, INT8OID, INTERVALOID},
						  values, NULL, SPI_OK_INSERT);
	values[1] = Int64GetDatum(run_id);
	payments_execute_once(finish_sql, 2, (Oid[]) {INT8OID, INT8OID},
						  values, NULL, SPI_OK_UPDATE);

	values[0] = Int64GetDatum(r->id);
	values[1] = Int64GetDatum(s->id);

	/*
	 * The latest run on a statement, or on another statement of the same
	 * provider, period and source (the same file sent again, corrected),
	 * is the one the views show.
	 */
	payments_prepare(&supersede_plan,
					 "UPDATE @extschema@.reconciliation_runs r SET superseded_by = $3"
					 " FROM @extschema@.statements s, @extschema@.statements t"
					 " WHERE r.reconciliation_id = $1 AND r.id <> $3"
					 "   AND r.superseded_by IS NULL AND t.id = $2"
					 "   AND s.id = r.statement_id AND s.provider = t.provider"
					 "   AND s.period = t.period"
					 "   AND s.source IS NOT DISTINCT FROM t.source",
					 3, (Oid[]) {INT8OID, INT8OID, INT8OID});
	payments_execute(supersede_plan, values, NULL, SPI_OK_UPDATE, 0);

	queued = reconciliation_queue_heals(r, s, run_id, tables_owner);
	values[0] = Int64GetDatum(run_id);
	values[1] = Int64GetDatum(queued);
	payments_prepare(&queued_plan,
					 "UPDATE @extschema@.reconciliation_runs SET heals_queued = $2"
					 " WHERE id = $1",
					 2, (Oid[]) {INT8OID, INT8OID});
	payments_execute(queued_plan, values, NULL, SPI_OK_UPDATE, 0);
	payments_end_as_owner(&saved);
	SPI_finish();
	return run_id;
}

/*
 * A definition, a policy or a decision changed by a function that our
 * side's query calls, in the middle of a run, is refused: the run's lock
 * is the backend's own, so it would not stop it.
 */
void
reconciliation_refuse_in_run(void)
{
	if (running)
		ereport(ERROR,
				(errcode(ERRCODE_PM_RECONCILIATION_RUNNING),
				 errmsg("a reconciliation cannot be changed while one runs"),
				 errdetail("It was called by a function that the run's read of our side called.")));
}

/*
 * payments.reconcile(name, statement_id): a run of a closed statement of
 * the caller's.  A second run of the same reconciliation, in another
 * session or from a function that our side's query calls, is refused.
 */
Datum
payments_reconcile(PG_FUNCTION_ARGS)
{
	const char *name = reconciliation_arg_name(fcinfo, 0);
	int64		statement_id;
	Oid			caller = GetUserId();
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	Reconciliation *r;
	Statement  *s;
	int64		run_id;

	statement_id = payments_arg_int64_range(fcinfo, 1, "statement_id", 1, PG_INT64_MAX);
	payments_check_not_in_recovery();
	reconciliation_refuse_in_run();
	/* rights first, so that a role without them never holds the lock */
	(void) reconciliation_lookup(name, caller, tables_owner);
	s = statement_lookup(statement_id, caller, tables_owner, false);
	reconciliation_lock(name, false);
	r = reconciliation_lookup(name, caller, tables_owner);
	if (!s->closed)
		ereport(ERROR,
				(errcode(ERRCODE_PM_STATEMENT_OPEN),
				 errmsg("statement %lld is open", (long long) statement_id),
				 errdetail("Only a closed statement, whose lines agree with its header, is reconciled."),
				 errhint("Close it with payments.statement_close.")));

	running = true;
	PG_TRY();
	{
		run_id = reconcile(r, s, caller, tables_owner);
	}
	PG_FINALLY();
	{
		running = false;
	}
	PG_END_TRY();
	PG_RETURN_INT64(run_id);
}
