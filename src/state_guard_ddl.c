/*-------------------------------------------------------------------------
 *
 * state_guard_ddl.c
 *	  The state guard's SQL API: define_state_machine, guard_state and
 *	  unguard_state.
 *
 * define_state_machine parses a definition (state_machine.c), stores its
 * normal form in payments.state_machine_definitions and tells every
 * backend to drop its cached machines when the transaction commits.
 *
 * guard_state and unguard_state create and drop the trigger,
 * payments_state_guard_<attnum>, and run as the caller, so that
 * PostgreSQL's own CREATE TRIGGER and DROP TRIGGER checks apply.  They
 * check the caller's rights before they lock the table, so that nobody
 * can lock a table they have no rights on, and then take the lock the
 * trigger command takes.  guard_state checks the column, the primary key
 * and the machine as the trigger will, so that a mistake is reported when
 * the guard is attached rather than at the first write.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "extension_catalog.h"
#include "citus_tables.h"
#include "spi_util.h"

#include "access/table.h"
#include "catalog/objectaddress.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "state_guard.h"

PG_FUNCTION_INFO_V1(payments_define_state_machine);
PG_FUNCTION_INFO_V1(payments_guard_state);
PG_FUNCTION_INFO_V1(payments_unguard_state);

static SPIPlanPtr definer_plan;
static SPIPlanPtr upsert_plan;

/*
 * payments.define_state_machine(name, transitions, initial)
 */
Datum
payments_define_state_machine(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, JSONBOID, TEXTARRAYOID, NAMEOID,
	NAMEOID};
	Oid			caller = GetUserId();
	char	   *name;
	Machine    *m;
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', 'n', ' '};
	PaymentsSavedUser saved;

	name = text_to_cstring(payments_arg_text(fcinfo, 0, "state machine name",
											 MACHINE_NAME_MAX_BYTES));
	payments_arg_not_null(fcinfo, 1, "transitions");
	payments_check_not_in_recovery();

	m = state_machine_parse(name, PG_GETARG_JSONB_P(1),
							PG_ARGISNULL(2) ? NULL : PG_GETARG_ARRAYTYPE_P(2));
	values[0] = CStringGetTextDatum(name);
	values[1] = state_machine_transitions_jsonb(m);
	values[2] = state_machine_initial_array(m);
	values[4] = DirectFunctionCall1(namein,
									CStringGetDatum(GetUserNameFromId(caller, false)));

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							false, &saved);
	SPI_connect();

	/*
	 * A machine guards its definer's tables and moves them on callbacks:
	 * only the role that defined it (a member of it, or a superuser)
	 * replaces it.  The definer is the calling role (current_user), whose
	 * privileges are those a handler, a SET ROLE or a SECURITY DEFINER
	 * function of another role act with.  The replacement is made only if
	 * the definer is still the one checked, so that two roles defining a
	 * new name at once cannot both win.
	 */
	payments_prepare(&definer_plan,
					 "SELECT defined_by FROM @extschema@.state_machine_definitions"
					 " WHERE name = $1",
					 1, argtypes);
	if (payments_execute(definer_plan, values, NULL, SPI_OK_SELECT, 0) == 1)
	{
		char	   *definer = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		Oid			definer_oid = get_role_oid(definer, true);

		if (OidIsValid(definer_oid) ?
			!has_privs_of_role(caller, definer_oid) :
			!superuser_arg(caller))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("permission denied to redefine state machine \"%s\"", name),
					 errdetail("The machine was defined by role \"%s\", whose privileges role \"%s\" does not have.",
							   definer, GetUserNameFromId(caller, false)),
					 errhint("Define a machine under another name.")));
		values[3] = DirectFunctionCall1(namein, CStringGetDatum(definer));
		nulls[3] = ' ';
	}
	payments_prepare(&upsert_plan,
					 "INSERT INTO @extschema@.state_machine_definitions"
					 " (name, transitions, initial, defined_by)"
					 " VALUES ($1, $2, $3, $5)"
					 " ON CONFLICT (name) DO UPDATE"
					 " SET transitions = excluded.transitions,"
					 "  initial = excluded.initial,"
					 "  defined_at = excluded.defined_at, defined_by = excluded.defined_by"
					 " WHERE state_machine_definitions.defined_by = $4",
					 5, argtypes);
	if (payments_execute(upsert_plan, values, nulls, SPI_OK_INSERT, 0) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("state machine \"%s\" was defined by another transaction meanwhile", name),
				 errhint("Try again.")));
	SPI_finish();
	payments_end_as_owner(&saved);

	/*
	 * Every backend drops its cached machines when this transaction commits
	 * (this one, at its next command); see state_machine.c.
	 */
	CacheInvalidateRelcacheByRelid(payments_relation(PAYMENTS_REL_STATE_MACHINE_DEFINITIONS));
	PG_RETURN_VOID();
}

static Oid
state_guard_function_oid(void)
{
	return LookupFuncName(list_make2(makeString(get_namespace_name(payments_schema_oid())),
									 makeString("state_guard")),
						  0, NULL, false);
}

/*
 * The guard triggers on rel for column attnum (normally zero or one).  If
 * machine is not NULL, it is set to the machine they follow.
 */
static List *
guard_triggers(Relation rel, AttrNumber attnum, char **machine)
{
	Oid			fn = state_guard_function_oid();
	TriggerDesc *trigdesc = rel->trigdesc;
	List	   *names = NIL;

	for (int i = 0; trigdesc != NULL && i < trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &trigdesc->triggers[i];

		if (tg->tgfoid != fn || tg->tgnattr != 1 || tg->tgattr[0] != attnum)
			continue;
		names = lappend(names, pstrdup(tg->tgname));
		if (machine != NULL && tg->tgnargs == 1)
			*machine = pstrdup(tg->tgargs[0]);
	}
	return names;
}

/*
 * The machine column attnum of rel is guarded by, or NULL if it is not
 * guarded or its guard is disabled (callback routes move guarded columns
 * only).
 */
char *
state_guard_column_machine(Relation rel, AttrNumber attnum)
{
	char	   *machine = NULL;
	List	   *names = guard_triggers(rel, attnum, &machine);
	ListCell   *lc;

	foreach(lc, names)
	{
		for (int i = 0; i < rel->trigdesc->numtriggers; i++)
		{
			Trigger    *tg = &rel->trigdesc->triggers[i];

			if (strcmp(tg->tgname, (char *) lfirst(lc)) == 0 &&
				tg->tgenabled == TRIGGER_DISABLED)
				return NULL;
		}
	}
	return machine;
}

static AttrNumber
guarded_column(Relation rel, Name col)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), NameStr(*col));

	if (attnum <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						NameStr(*col), RelationGetRelationName(rel))));
	return attnum;
}

static char *
qualified_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * Citus creates and drops a distributed table's triggers on its shards
 * only when told to: the guard then runs on the node of each row
 * (doc/citus.md).  Returns the GUC nest level to end with AtEOXact_GUC.
 */
static int
citus_triggers_begin(void)
{
	int			nestlevel = NewGUCNestLevel();

	if (payments_citus_layout(NULL) == PAYMENTS_CITUS_DISTRIBUTED)
		(void) set_config_option("citus.enable_unsafe_triggers", "on",
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	return nestlevel;
}

static void
execute_ddl(const char *sql)
{
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not execute \"%s\"", sql);
}

/*
 * payments.guard_state(tbl, col, machine)
 *
 * Runs as the caller: CREATE TRIGGER checks the caller's TRIGGER privilege
 * on the table.  That privilege is checked here first, before the table is
 * locked, so that nobody can lock a table they have no rights on.
 */
Datum
payments_guard_state(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Name		col;
	char	   *machine;
	Relation	rel;
	AttrNumber	attnum;
	AclResult	aclresult;
	Oid			typoutput;
	bool		bpchar;
	AttrNumber	pk[INDEX_MAX_KEYS];
	char	   *current = NULL;
	char	   *tbl;
	int			nestlevel;

	payments_arg_not_null(fcinfo, 0, "table");
	payments_arg_not_null(fcinfo, 1, "column");
	relid = PG_GETARG_OID(0);
	col = PG_GETARG_NAME(1);
	machine = text_to_cstring(payments_arg_text(fcinfo, 2, "state machine name",
												MACHINE_NAME_MAX_BYTES));
	payments_check_not_in_recovery();

	aclresult = pg_class_aclcheck(relid, GetUserId(), ACL_TRIGGER);
	if (aclresult != ACLCHECK_OK)
		aclcheck_error(aclresult, get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));

	/* the lock CREATE TRIGGER takes */
	rel = table_open(relid, ShareRowExclusiveLock);
	if (rel->rd_rel->relkind != RELKIND_RELATION &&
		rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot guard a column of relation \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("The state guard supports ordinary and partitioned tables only.")));
	/* only a guard at the root sees every move between partitions */
	if (rel->rd_rel->relispartition)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("cannot guard a column of partition \"%s\"",
						RelationGetRelationName(rel)),
				 errdetail("A row that an UPDATE moves to another partition can be checked only if every partition is guarded alike."),
				 errhint("Guard the partitioned table \"%s\" instead: its guard applies to every partition.",
						 get_rel_name(llast_oid(get_partition_ancestors(relid))))));
	payments_refuse_citus_guarded(rel);
	attnum = guarded_column(rel, col);
	state_guard_check_column(rel, attnum, &typoutput, &bpchar);
	(void) state_guard_primary_key(rel, pk);

	if (guard_triggers(rel, attnum, &current) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("column \"%s\" of relation \"%s\" is already guarded",
						NameStr(*col), RelationGetRelationName(rel)),
				 current ? errdetail("The column follows state machine \"%s\".",
									 current) : 0,
				 errhint("Call payments.unguard_state first to guard it with another machine.")));

	state_guard_cache_begin_statement();
	if (state_machine_lookup(machine) == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("state machine \"%s\" does not exist", machine),
				 errhint("Define it with payments.define_state_machine.")));

	/*
	 * PostgreSQL clones a partitioned table's row trigger to every
	 * partition, present and future.  Only there can a row move between
	 * partitions, which the trigger sees as a DELETE and an INSERT: see
	 * state_guard.c, "Rows that move between partitions".
	 */
	tbl = qualified_name(rel);
	SPI_connect();

	nestlevel = citus_triggers_begin();
	execute_ddl(psprintf("CREATE TRIGGER payments_state_guard_%d"
						 " AFTER INSERT OR UPDATE OF %s%s ON %s"
						 " FOR EACH ROW EXECUTE FUNCTION %s.state_guard(%s)",
						 attnum, quote_identifier(NameStr(*col)),
						 rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ?
						 " OR DELETE" : "",
						 tbl, payments_schema_quoted(),
						 quote_literal_cstr(machine)));
	AtEOXact_GUC(true, nestlevel);
	SPI_finish();
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}

/*
 * payments.unguard_state(tbl, col)
 *
 * Runs as the caller: DROP TRIGGER needs the table's owner.
 */
Datum
payments_unguard_state(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Name		col;
	Relation	rel;
	AttrNumber	attnum;
	List	   *names;
	ListCell   *lc;
	char	   *tbl;
	int			nestlevel;

	payments_arg_not_null(fcinfo, 0, "table");
	payments_arg_not_null(fcinfo, 1, "column");
	relid = PG_GETARG_OID(0);
	col = PG_GETARG_NAME(1);
	payments_check_not_in_recovery();

	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER,
					   get_relkind_objtype(get_rel_relkind(relid)),
					   get_rel_name(relid));

	/* the lock DROP TRIGGER takes */
	rel = table_open(relid, AccessExclusiveLock);
	attnum = guarded_column(rel, col);
	names = guard_triggers(rel, attnum, NULL);
	if (names == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("column \"%s\" of relation \"%s\" is not guarded",
						NameStr(*col), RelationGetRelationName(rel))));

	tbl = qualified_name(rel);
	SPI_connect();
	nestlevel = citus_triggers_begin();
	foreach(lc, names)
		execute_ddl(psprintf("DROP TRIGGER %s ON %s",
							 quote_identifier(lfirst(lc)), tbl));
	AtEOXact_GUC(true, nestlevel);
	SPI_finish();
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}
