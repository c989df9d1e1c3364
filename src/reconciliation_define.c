/*-------------------------------------------------------------------------
 *
 * reconciliation_define.c
 *	  define_reconciliation and reconciliation_policy: which table or view
 *	  of the application is our side of a provider's statements, how its
 *	  columns compare with a statement's lines, and which handler heals
 *	  each class of difference.
 *
 * A reconciliation belongs to the role that defined it first (its owner);
 * that role and its members may redefine it, set its policies and run it,
 * and it acts with the owner's rights whoever does: the source is read as
 * the owner (checked for it at definition and at every run: USAGE on the
 * schema, SELECT on each column), and a heal is queued as the owner, who
 * must be able to call the handler.  So a member of a shared role who
 * redefines the source or sets a handler never has code of theirs run
 * with another member's rights, nor a superuser's, and a superuser who
 * fixes a member's definition does not lend it its own.
 *
 * Every change of a definition and every run take one lock per name
 * (reconciliation_lock), after the caller's rights are checked, so that a
 * role without rights cannot hold it: a definition waits for a run of the
 * same name to finish, and a second run fails at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reconciliation.h"
#include "compensation.h"
#include "payments.h"
#include "args.h"
#include "key_lock.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/transam.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_define_reconciliation);
PG_FUNCTION_INFO_V1(payments_reconciliation_policy);

/* A grace longer than this is a mistake, not a cut-off */
#define GRACE_MAX_DAYS	366

static SPIPlanPtr define_plan;
static SPIPlanPtr lookup_plan;
static SPIPlanPtr map_plan;
static SPIPlanPtr policy_plan;
static SPIPlanPtr unpolicy_plan;

/* The classes a run gives a difference, which a policy may heal */
static const char *const difference_classes[] = {
	"missing_internal", "missing_external", "amount_mismatch",
	"status_mismatch", "currency_mismatch", "duplicate_external"
};

/* A reconciliation name argument: 1 to RECONCILIATION_NAME_MAX_BYTES bytes. */
const char *
reconciliation_arg_name(FunctionCallInfo fcinfo, int argno)
{
	return text_to_cstring(payments_arg_text(fcinfo, argno, "reconciliation name",
											 RECONCILIATION_NAME_MAX_BYTES));
}

/*
 * The lock of a reconciliation's name, held to the end of the transaction.
 * Without wait, a run already holding it is reported (PM507).
 */
void
reconciliation_lock(const char *name, bool wait)
{
	if (!payments_lock_key("reconciliation", strlen("reconciliation"),
						   name, strlen(name),
						   PAYMENTS_LOCKSPACE_RECONCILIATION, wait))
		ereport(ERROR,
				(errcode(ERRCODE_PM_RECONCILIATION_RUNNING),
				 errmsg("reconciliation \"%s\" is in use by another session", name),
				 errdetail("Another session is running it or changing its definition; runs of one reconciliation share its grace pool and its heals, so they never overlap."),
				 errhint("Run it again when the other session has finished.")));
}

/* A reconciliation whose role was dropped acts for nobody. */
static void
report_orphan(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("the role that owns reconciliation \"%s\" no longer exists", name),
			 errhint("A superuser can give it to another role by defining it again as that role.")));
}

static void
check_role(const char *name, Oid caller, Oid owner)
{
	if (!has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for reconciliation \"%s\"", name),
				 errdetail("The reconciliation is defined by a role whose privileges role \"%s\" does not have.",
						   GetUserNameFromId(caller, false))));
}

static char *
copy_text(HeapTuple tup, TupleDesc desc, int col)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, col, &isnull);

	return isnull ? NULL : TextDatumGetCString(d);
}

/*
 * The reconciliation called name, or NULL.  The extension's tables are
 * read as tables_owner; the result is allocated in the caller's memory
 * context.
 */
static Reconciliation *
reconciliation_find(const char *name, Oid tables_owner)
{
	MemoryContext outer = CurrentMemoryContext;
	PaymentsSavedUser saved;
	Reconciliation *r = NULL;
	Datum		arg = CStringGetTextDatum(name);

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	payments_prepare(&lookup_plan,
					 "SELECT id, source::oid, ref_col::text, amount_col::text,"
					 " status_col::text, at_col::text, currency_col::text,"
					 " status_map, grace, amount_tolerance, owner::oid"
					 " FROM @extschema@.reconciliations WHERE name = $1",
					 1, (Oid[]) {TEXTOID});
	if (payments_execute(lookup_plan, &arg, NULL, SPI_OK_SELECT, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(outer);
		bool		isnull;
		Datum		d;

		r = palloc0(sizeof(Reconciliation));
		r->name = pstrdup(name);
		r->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		r->source = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		r->ref_col = copy_text(tup, desc, 3);
		r->amount_col = copy_text(tup, desc, 4);
		r->status_col = copy_text(tup, desc, 5);
		r->at_col = copy_text(tup, desc, 6);
		r->currency_col = copy_text(tup, desc, 7);
		d = SPI_getbinval(tup, desc, 8, &isnull);
		r->status_map = isnull ? (Datum) 0 : datumCopy(d, false, -1);
		r->grace = datumCopy(SPI_getbinval(tup, desc, 9, &isnull), false, sizeof(Interval));
		r->tolerance = datumCopy(SPI_getbinval(tup, desc, 10, &isnull), false, -1);
		r->owner = DatumGetObjectId(SPI_getbinval(tup, desc, 11, &isnull));
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	payments_end_as_owner(&saved);

	return r;
}

/*
 * The reconciliation called name, after checking that caller has the
 * privileges of its owner; unknown names raise PM501.
 */
Reconciliation *
reconciliation_lookup(const char *name, Oid caller, Oid tables_owner)
{
	Reconciliation *r = reconciliation_find(name, tables_owner);

	if (r == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_RECONCILIATION_NOT_FOUND),
				 errmsg("reconciliation \"%s\" does not exist", name),
				 errhint("Define it with payments.define_reconciliation.")));
	check_role(name, caller, r->owner);
	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(r->owner)))
		report_orphan(name);
	return r;
}

/*
 * A named column of rel that role may read; returns its type with any
 * domain looked through.  what says which argument named it.
 */
static Oid
check_column(Relation rel, const char *col, const char *what, Oid role)
{
	Oid			relid = RelationGetRelid(rel);
	AttrNumber	attnum = get_attnum(relid, col);

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						col, RelationGetRelationName(rel)),
				 errdetail("It is the reconciliation's %s.", what)));
	if (pg_class_aclcheck(relid, role, ACL_SELECT) != ACLCHECK_OK &&
		pg_attribute_aclcheck(relid, attnum, role, ACL_SELECT) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for column \"%s\" of relation \"%s\"",
						col, RelationGetRelationName(rel)),
				 errdetail("A reconciliation reads its source as the role it belongs to, \"%s\".",
						   GetUserNameFromId(role, false))));
	return getBaseType(get_atttype(relid, attnum));
}

/*
 * Whether a valid, unique, immediate, non-partial index of rel has the
 * column attnum as its only key.
 */
static bool
unique_column(Relation rel, AttrNumber attnum)
{
	List	   *indexes;
	ListCell   *lc;
	bool		unique = false;

	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		return false;
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index index;

		if (!HeapTupleIsValid(tup))
			continue;
		index = (Form_pg_index) GETSTRUCT(tup);
		if (index->indisunique && index->indimmediate && index->indisvalid &&
			index->indnkeyatts == 1 && index->indkey.values[0] == attnum &&
			heap_attisnull(tup, Anum_pg_index_indpred, NULL))
			unique = true;
		ReleaseSysCache(tup);
	}
	list_free(indexes);
	return unique;
}

/*
 * The source relation of a reconciliation and its columns (ref, amount,
 * status, time and currency, the last one NULL if there is none), checked
 * for role, the reconciliation's owner, whose rights every run reads it
 * with: the relation must be a table or view role may read, the amount
 * exact and the time a time.  Sets *relname to its qualified, quoted name,
 * *ref_unique to whether a unique index says that no two rows have the
 * same reference, and *direct to whether reading the named columns runs no
 * code of a user's: a plain table without row-level security whose
 * columns have built-in types.
 */
void
reconciliation_check_source(Oid relid, const char *const *cols, Oid role,
							char **relname, bool *ref_unique, bool *direct)
{
	Relation	rel;
	char		relkind;
	Oid			amount_type;
	Oid			at_type;

	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errhint("Define the reconciliation again with its new source.")));
	relkind = rel->rd_rel->relkind;
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE &&
		relkind != RELKIND_VIEW && relkind != RELKIND_MATVIEW &&
		relkind != RELKIND_FOREIGN_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table or view", RelationGetRelationName(rel))));
	if (pg_namespace_aclcheck(RelationGetNamespace(rel), role, ACL_USAGE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schema %s",
						get_namespace_name(RelationGetNamespace(rel)))));

	(void) check_column(rel, cols[0], "ref_col", role);
	*ref_unique = unique_column(rel, get_attnum(relid, cols[0]));
	amount_type = check_column(rel, cols[1], "amount_col", role);
	(void) check_column(rel, cols[2], "status_col", role);
	at_type = check_column(rel, cols[3], "at_col", role);
	if (cols[4] != NULL)
		(void) check_column(rel, cols[4], "currency_col", role);

	if (amount_type == FLOAT4OID || amount_type == FLOAT8OID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("amount column \"%s\" has a floating-point type", cols[1]),
				 errdetail("Floating-point numbers cannot hold money exactly."),
				 errhint("Keep amounts as integer minor units or numeric; a view can convert them.")));
	if (amount_type != INT2OID && amount_type != INT4OID &&
		amount_type != INT8OID && amount_type != NUMERICOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("amount column \"%s\" has type %s", cols[1],
						format_type_be(amount_type)),
				 errdetail("Amounts are integer minor units (smallint, integer, bigint) or numeric.")));
	if (at_type != TIMESTAMPTZOID && at_type != TIMESTAMPOID && at_type != DATEOID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("time column \"%s\" has type %s", cols[3],
						format_type_be(at_type)),
				 errdetail("The time of a row is a timestamp with time zone, a timestamp or a date.")));
	*direct = relkind == RELKIND_RELATION && !rel->rd_rel->relrowsecurity;
	for (int i = 0; i < 5; i++)
		if (cols[i] != NULL)
		{
			Oid			type = get_atttype(relid, get_attnum(relid, cols[i]));

			if (type >= FirstNormalObjectId ||
				getBaseType(type) >= FirstNormalObjectId ||
				type_is_rowtype(type))
				*direct = false;
		}
	*relname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
										  RelationGetRelationName(rel));
	/* kept to the end of the transaction, so that no ALTER slips in */
	relation_close(rel, NoLock);
}

/*
 * status_map: {"internal": {...}, "external": {...}}, either side optional,
 * each mapping a status as written to succeeded, failed, refunded or
 * pending.  The caller is connected to SPI.
 */
static void
check_status_map(Datum map)
{
	Jsonb	   *jb = DatumGetJsonbP(map);

	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("status_map must be a JSON object"),
				 errhint("Write it as {\"internal\": {\"paid\": \"succeeded\"}, \"external\": {\"SUCCESS\": \"succeeded\"}}.")));
	payments_prepare(&map_plan,
					 "SELECT e.key, pg_catalog.jsonb_typeof(e.value) = 'object', v.key, v.value::text"
					 " FROM pg_catalog.jsonb_each($1) e"
					 " LEFT JOIN LATERAL pg_catalog.jsonb_each(CASE WHEN"
					 "   pg_catalog.jsonb_typeof(e.value) = 'object' THEN e.value END) v ON true"
					 " WHERE e.key NOT IN ('internal', 'external')"
					 "    OR pg_catalog.jsonb_typeof(e.value) <> 'object'"
					 "    OR v.value NOT IN ('\"succeeded\"', '\"failed\"', '\"refunded\"', '\"pending\"')"
					 " LIMIT 1",
					 1, (Oid[]) {JSONBOID});
	if (payments_execute(map_plan, &map, NULL, SPI_OK_SELECT, 0) == 1)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *side = SPI_getvalue(tup, desc, 1);
		char	   *is_object = SPI_getvalue(tup, desc, 2);

		if (strcmp(side, "internal") != 0 && strcmp(side, "external") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("status_map has an unrecognized key \"%s\"", side),
					 errdetail("Its keys are \"internal\" and \"external\".")));
		if (strcmp(is_object, "t") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the value of key \"%s\" of status_map must be a JSON object", side)));
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("status_map \"%s\" maps status \"%s\" to %s",
						side, SPI_getvalue(tup, desc, 3), SPI_getvalue(tup, desc, 4)),
				 errdetail("A status maps to \"succeeded\", \"failed\", \"refunded\" or \"pending\".")));
	}
}

/* The grace: zero or more, in every field, and at most a year. */
static Datum
arg_grace(FunctionCallInfo fcinfo, int argno)
{
	Interval   *iv;

	payments_arg_not_null(fcinfo, argno, "grace");
	iv = PG_GETARG_INTERVAL_P(argno);
	if (iv->month < 0 || iv->day < 0 || iv->time < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("grace must not be negative"),
				 errdetail("Its months, days and time must each be zero or more.")));
	if (iv->month > 12 || iv->day > GRACE_MAX_DAYS ||
		iv->time > GRACE_MAX_DAYS * USECS_PER_DAY ||
		iv->month * 31 + iv->day + iv->time / USECS_PER_DAY > GRACE_MAX_DAYS)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("grace is too long"),
				 errdetail("The limit is %d days.", GRACE_MAX_DAYS)));
	return IntervalPGetDatum(iv);
}

static void
report_taken(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("reconciliation \"%s\" is defined by another role", name),
			 errdetail("Only the role that defined a reconciliation first and its members may redefine it."),
			 errhint("Choose another name.")));
}

/*
 * payments.define_reconciliation(name, source, ref_col, amount_col,
 * status_col, at_col, currency_col, status_map, grace, amount_tolerance):
 * a new name becomes the caller's; a name of a role whose privileges the
 * caller has is redefined; any other is refused.
 */
Datum
payments_define_reconciliation(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, OIDOID, NAMEOID, NAMEOID, NAMEOID,
	NAMEOID, NAMEOID, JSONBOID, INTERVALOID, NUMERICOID, OIDOID, BOOLOID};
	const char *name = reconciliation_arg_name(fcinfo, 0);
	Oid			caller = GetUserId();
	Datum		values[12];
	char		nulls[12];
	PaymentsSavedUser saved;
	int64		id = 0;
	bool		isnull;
	const char *cols[5];
	char	   *relname;
	bool		ref_unique;
	bool		direct;
	Oid			tables_owner;
	Reconciliation *existing;
	bool		take_over;

	payments_arg_not_null(fcinfo, 1, "source");
	payments_arg_not_null(fcinfo, 2, "ref_col");
	payments_arg_not_null(fcinfo, 3, "amount_col");
	payments_arg_not_null(fcinfo, 4, "status_col");
	payments_arg_not_null(fcinfo, 5, "at_col");
	for (int i = 0; i < 5; i++)
		cols[i] = PG_ARGISNULL(i + 2) ? NULL : NameStr(*PG_GETARG_NAME(i + 2));
	payments_check_not_in_recovery();
	reconciliation_refuse_in_run();
	tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);

	/*
	 * Another role's name is refused before its lock is taken, so that no
	 * role without rights holds it; then, under the lock, the definition is
	 * read again and the source checked for the role it will belong to.  A
	 * name whose role was dropped is taken over by the caller, if a
	 * superuser.
	 */
	existing = reconciliation_find(name, tables_owner);
	if (existing != NULL && !has_privs_of_role(caller, existing->owner))
		report_taken(name);
	reconciliation_lock(name, true);
	existing = reconciliation_find(name, tables_owner);
	if (existing != NULL && !has_privs_of_role(caller, existing->owner))
		report_taken(name);
	take_over = existing != NULL &&
		!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(existing->owner));
	if (take_over && !superuser_arg(caller))
		report_orphan(name);
	reconciliation_check_source(PG_GETARG_OID(1), cols,
								existing != NULL && !take_over ? existing->owner : caller,
								&relname, &ref_unique, &direct);
	values[0] = CStringGetTextDatum(name);
	for (int i = 1; i <= 7; i++)
	{
		values[i] = PG_ARGISNULL(i) ? (Datum) 0 : PG_GETARG_DATUM(i);
		nulls[i] = PG_ARGISNULL(i) ? 'n' : ' ';
	}
	nulls[0] = ' ';
	values[8] = arg_grace(fcinfo, 8);
	nulls[8] = ' ';
	values[9] = payments_arg_amount(fcinfo, 9, "amount_tolerance");
	nulls[9] = ' ';
	values[10] = ObjectIdGetDatum(caller);
	nulls[10] = ' ';
	values[11] = BoolGetDatum(take_over);
	nulls[11] = ' ';

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	if (!PG_ARGISNULL(7))
		check_status_map(values[7]);
	payments_prepare(&define_plan,
					 "INSERT INTO @extschema@.reconciliations AS r"
					 " (name, source, ref_col, amount_col, status_col, at_col,"
					 "  currency_col, status_map, grace, amount_tolerance, owner, defined_by)"
					 " VALUES ($1, $2::pg_catalog.regclass, $3, $4, $5, $6, $7, $8, $9, $10,"
					 "  $11::pg_catalog.regrole, $11::pg_catalog.regrole)"
					 " ON CONFLICT (name) DO UPDATE SET source = excluded.source,"
					 "  ref_col = excluded.ref_col, amount_col = excluded.amount_col,"
					 "  status_col = excluded.status_col, at_col = excluded.at_col,"
					 "  currency_col = excluded.currency_col, status_map = excluded.status_map,"
					 "  grace = excluded.grace, amount_tolerance = excluded.amount_tolerance,"
					 "  defined_by = excluded.defined_by, defined_at = pg_catalog.now(),"
					 "  owner = CASE WHEN $12 THEN excluded.owner ELSE r.owner END"
					 " WHERE $12 OR pg_catalog.pg_has_role($11, r.owner, 'USAGE')"
					 " RETURNING id",
					 12, argtypes);
	if (payments_execute(define_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0) == 1)
		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	payments_end_as_owner(&saved);
	if (id == 0)
		report_taken(name);
	PG_RETURN_INT64(id);
}

/*
 * payments.reconciliation_policy(name, class, handler): heal each new
 * difference of class with handler, queued as the reconciliation's owner,
 * who must be able to call it; a NULL handler removes the policy.
 */
Datum
payments_reconciliation_policy(PG_FUNCTION_ARGS)
{
	const char *name = reconciliation_arg_name(fcinfo, 0);
	const char *class;
	Oid			caller = GetUserId();
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	Reconciliation *r;
	PaymentsSavedUser saved;
	bool		known = false;
	Datum		values[5];

	class = text_to_cstring(payments_arg_text(fcinfo, 1, "class", NAMEDATALEN));
	for (int i = 0; i < lengthof(difference_classes); i++)
		known |= strcmp(class, difference_classes[i]) == 0;
	if (!known)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"%s\" is not a class of difference", class),
				 errdetail("The classes are missing_internal, missing_external, amount_mismatch, status_mismatch, currency_mismatch and duplicate_external.")));
	payments_check_not_in_recovery();
	reconciliation_refuse_in_run();
	r = reconciliation_lookup(name, caller, tables_owner);
	reconciliation_lock(name, true);

	values[0] = Int64GetDatum(r->id);
	values[1] = CStringGetTextDatum(class);
	if (!PG_ARGISNULL(2))
	{
		Oid			handler = PG_GETARG_OID(2);
		Oid			owner = compensation_check_handler(handler, r->owner);

		values[2] = CStringGetTextDatum(compensation_handler_name(handler));
		values[3] = ObjectIdGetDatum(owner);
		values[4] = ObjectIdGetDatum(caller);
	}

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	if (PG_ARGISNULL(2))
	{
		payments_prepare(&unpolicy_plan,
						 "DELETE FROM @extschema@.reconciliation_policies"
						 " WHERE reconciliation_id = $1 AND class = $2",
						 2, (Oid[]) {INT8OID, TEXTOID});
		payments_execute(unpolicy_plan, values, NULL, SPI_OK_DELETE, 0);
	}
	else
	{
		payments_prepare(&policy_plan,
						 "INSERT INTO @extschema@.reconciliation_policies"
						 " (reconciliation_id, class, handler, handler_owner, defined_by)"
						 " VALUES ($1, $2, $3, $4::pg_catalog.regrole, $5::pg_catalog.regrole)"
						 " ON CONFLICT (reconciliation_id, class) DO UPDATE"
						 " SET handler = excluded.handler, handler_owner = excluded.handler_owner,"
						 "  defined_by = excluded.defined_by, defined_at = pg_catalog.now()",
						 5, (Oid[]) {INT8OID, TEXTOID, TEXTOID, OIDOID, OIDOID});
		payments_execute(policy_plan, values, NULL, SPI_OK_INSERT, 0);
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}
