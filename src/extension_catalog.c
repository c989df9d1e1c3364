/*-------------------------------------------------------------------------
 *
 * extension_catalog.c
 *	  The extension's schema, its installed version and its relations,
 *	  looked up by OID and cached per backend.
 *
 * The schema is the one pg_extension records, never one found by name: a
 * database owner can create a schema called "payments" and fill it with
 * look-alikes.  The relations are looked up in that schema and kept in one
 * array, cleared by one relcache callback when any of them changes (the
 * extension dropped, a table altered) or when all relations are reset; a
 * backend accepts invalidations at the start of every transaction, so no
 * transaction starts with an OID that was dropped before it.
 *
 * Each of them refuses to answer while Citus manages one of the tables
 * (citus_tables.c): every entry point asks here before it reads or writes
 * anything of the extension, so none of them reaches a Citus shell table.
 *
 * The installed version must be the library's own: the library's SQL
 * names the tables and columns of its version, and an older schema left in
 * place after a package upgrade is reported with a hint to update it.  A
 * mismatch is never cached, so the ALTER EXTENSION takes effect at once.
 * The worker asks first (payments_install_state) and waits for the update
 * instead of failing every round.
 *
 * A component that derives something from a relation (the numbers of the
 * columns it reads) keeps it with payments_relations_generation() and
 * derives it again when that changes, rather than registering a callback
 * of its own.  The columns themselves are checked by payments_check_columns,
 * the one check of a table altered by hand.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "extension_catalog.h"

#include "citus_shards.h"
#include "citus_tables.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_am.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/primnodes.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

static const char *const relation_names[PAYMENTS_NUM_RELATIONS] = {
	[PAYMENTS_REL_IDEMPOTENCY_KEYS] = "idempotency_keys",
	[PAYMENTS_REL_IDEMPOTENCY_KEYS_PKEY] = "idempotency_keys_pkey",
	[PAYMENTS_REL_IDEMPOTENCY_SCOPES] = "idempotency_scopes",
	[PAYMENTS_REL_STOCK_SLOTS] = "stock_slots",
	[PAYMENTS_REL_RESERVATIONS] = "reservations",
	[PAYMENTS_REL_RESERVATIONS_ID_SEQ] = "reservations_id_seq",
	[PAYMENTS_REL_STATE_MACHINE_DEFINITIONS] = "state_machine_definitions",
	[PAYMENTS_REL_STATE_HISTORY] = "state_history",
	[PAYMENTS_REL_STATE_HISTORY_ID_SEQ] = "state_history_id_seq",
	[PAYMENTS_REL_TCC_FENCE] = "tcc_fence",
	[PAYMENTS_REL_TCC_FENCE_PKEY] = "tcc_fence_pkey",
	[PAYMENTS_REL_COMPENSATIONS_ID_SEQ] = "compensations_id_seq",
	[PAYMENTS_REL_OUTBOX] = "outbox",
	[PAYMENTS_REL_OUTBOX_ID_SEQ] = "outbox_id_seq",
	[PAYMENTS_REL_OUTBOX_KEY_IDX] = "outbox_key_idx",
	[PAYMENTS_REL_OUTBOX_GRANTS] = "outbox_grants",
	[PAYMENTS_REL_OUTBOX_GRANTS_PKEY] = "outbox_grants_pkey",
};

static Oid	schema_oid = InvalidOid;
static char *schema_quoted = NULL;	/* in TopMemoryContext */
static bool schema_valid = false;
static uint64 schema_generation = 0;
static Oid	relation_oids[PAYMENTS_NUM_RELATIONS];
static uint64 relations_generation = 1;
static bool callbacks_registered = false;

static void
schema_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	schema_valid = false;
}

static void
relations_invalidate(Datum arg, Oid relid)
{
	for (int i = 0; i < PAYMENTS_NUM_RELATIONS; i++)
		if (relid == InvalidOid || relid == relation_oids[i])
		{
			memset(relation_oids, 0, sizeof(relation_oids));
			relations_generation++;
			return;
		}
}

/*
 * The extension's schema and installed version (palloc'd) from its
 * pg_extension row; PostgreSQL 15 keeps get_extension_schema static.
 */
static Oid
extension_row(Oid ext, char **version)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	*version = NULL;
	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Datum		d;
		bool		isnull;

		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
		d = heap_getattr(tup, Anum_pg_extension_extversion,
						 RelationGetDescr(rel), &isnull);
		if (!isnull)
			*version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/*
 * Whether the extension is installed, and in which version (*version,
 * palloc'd, NULL if not installed); *nsp is its schema.
 */
static PaymentsInstallState
install_state(Oid *nsp, char **version)
{
	Oid			ext = get_extension_oid("payments", true);

	*nsp = InvalidOid;
	*version = NULL;
	if (OidIsValid(ext))
		*nsp = extension_row(ext, version);
	if (!OidIsValid(*nsp))
		return PAYMENTS_NOT_INSTALLED;
	if (*version == NULL || strcmp(*version, PAYMENTS_VERSION) != 0)
		return PAYMENTS_OTHER_VERSION;
	return PAYMENTS_INSTALLED;
}

/*
 * Whether this database has the extension in the library's version, without
 * raising an error; version as for install_state.  Needs a transaction.
 */
PaymentsInstallState
payments_install_state(char **version)
{
	Oid			nsp;

	return install_state(&nsp, version);
}

/*
 * Report that the installed version is not the library's: an ERROR for a
 * call, a LOG line for the worker, which then leaves the database alone.
 */
void
payments_report_other_version(int elevel, const char *version)
{
	ereport(elevel,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("extension \"payments\" version \"%s\" is installed in database \"%s\", but the loaded library is version \"%s\"",
					version ? version : "", get_database_name(MyDatabaseId),
					PAYMENTS_VERSION),
			 elevel < ERROR ?
			 errdetail("The payments worker does nothing in this database until the extension is updated.") : 0,
			 errhint("Run ALTER EXTENSION payments UPDATE.")));
}

/*
 * PostgreSQL keeps ten relcache callbacks per backend (MAX_RELCACHE_CALLBACKS),
 * which every loaded library shares, and ends the session when an
 * eleventh is registered; with Citus loaded too, the extension's five took
 * the last ones.  So the extension registers one, which calls each of its
 * components'.
 */
#define PAYMENTS_RELCACHE_CALLBACKS 8

typedef struct RelcacheCallback
{
	RelcacheCallbackFunction fn;
	Datum		arg;
} RelcacheCallback;

static RelcacheCallback relcache_callbacks[PAYMENTS_RELCACHE_CALLBACKS];
static int	nrelcache_callbacks = 0;

static void
relcache_dispatch(Datum arg, Oid relid)
{
	for (int i = 0; i < nrelcache_callbacks; i++)
		relcache_callbacks[i].fn(relcache_callbacks[i].arg, relid);
}

/* CacheRegisterRelcacheCallback for the extension's components */
void
payments_register_relcache_callback(RelcacheCallbackFunction fn, Datum arg)
{
	if (nrelcache_callbacks == 0)
		CacheRegisterRelcacheCallback(relcache_dispatch, (Datum) 0);
	if (nrelcache_callbacks >= PAYMENTS_RELCACHE_CALLBACKS)
		elog(FATAL, "out of payments relcache callback slots");
	relcache_callbacks[nrelcache_callbacks].fn = fn;
	relcache_callbacks[nrelcache_callbacks].arg = arg;
	nrelcache_callbacks++;
}

static void
schema_lookup(void)
{
	Oid			nsp;
	char	   *version;
	char	   *name = NULL;
	const char *quoted;

	if (!callbacks_registered)
	{
		CacheRegisterSyscacheCallback(NAMESPACEOID, schema_invalidate, (Datum) 0);
		payments_register_relcache_callback(relations_invalidate, (Datum) 0);
		callbacks_registered = true;
	}

	switch (install_state(&nsp, &version))
	{
		case PAYMENTS_NOT_INSTALLED:
			break;
		case PAYMENTS_OTHER_VERSION:
			payments_report_other_version(ERROR, version);
			break;
		case PAYMENTS_INSTALLED:
			name = get_namespace_name(nsp);
			break;
	}
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"payments\" is not installed in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("Run CREATE EXTENSION payments.")));

	quoted = quote_identifier(name);
	if (schema_quoted == NULL || strcmp(schema_quoted, quoted) != 0)
	{
		if (schema_quoted != NULL)
			pfree(schema_quoted);
		schema_quoted = MemoryContextStrdup(TopMemoryContext, quoted);
		schema_generation++;
	}
	schema_oid = nsp;
	schema_valid = true;
}

Oid
payments_schema_oid(void)
{
	payments_refuse_citus_extension();
	if (!schema_valid)
		schema_lookup();
	return schema_oid;
}

/* The extension's schema name, quoted for SQL text. */
const char *
payments_schema_quoted(void)
{
	payments_refuse_citus_extension();
	if (!schema_valid)
		schema_lookup();
	return schema_quoted;
}

/*
 * A number that changes whenever the extension's schema has a name other
 * than the one payments_schema_quoted last returned: plans whose text
 * named the old one are then prepared again.
 */
uint64
payments_schema_generation(void)
{
	payments_refuse_citus_extension();
	if (!schema_valid)
		schema_lookup();
	return schema_generation;
}

/*
 * The OID of one of the extension's relations (table, index or sequence);
 * while the tables are distributed, of its shard for the key the call
 * entered (citus_shards.c).
 */
Oid
payments_relation(PaymentsRelation which)
{
	Oid			schema = payments_schema_oid();
	Oid			relid;

	Assert(which >= 0 && which < PAYMENTS_NUM_RELATIONS);
	relid = payments_shard_relation(which, relation_names[which]);
	if (OidIsValid(relid))
		return relid;
	if (OidIsValid(relation_oids[which]))
		return relation_oids[which];

	relid = get_relname_relid(relation_names[which], schema);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation \"%s.%s\" does not exist",
						payments_schema_quoted(), relation_names[which]),
				 errhint("Reinstall the extension.")));
	relation_oids[which] = relid;
	return relid;
}

/*
 * A number that changes whenever the relation OIDs payments_relation
 * returns may have changed, or one of those relations was altered: what a
 * caller derived from one of them (column numbers) is then derived again.
 */
uint64
payments_relations_generation(void)
{
	payments_refuse_citus_extension();
	return relations_generation;
}

/*
 * The one check of a table altered by hand: rel, one of the extension's
 * relations as opened by the caller (so even a change committed a moment
 * ago is seen), must have the columns names, of types types.
 *
 * With attnums NULL the caller fills or reads rows by position (a direct
 * write), so the relation must have exactly these columns, in this order.
 * Otherwise each column is found by name, wherever it is, and its number
 * stored in attnums[i].  Either way a table that does not fit gets one
 * clear error rather than values read from or written to the wrong column.
 */
void
payments_check_columns(Relation rel, const char *const *names,
					   const Oid *types, int natts, AttrNumber *attnums)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		ok = (attnums != NULL || desc->natts == natts);
	StringInfoData expected;

	for (int i = 0; ok && i < natts; i++)
	{
		Form_pg_attribute att = NULL;

		if (attnums == NULL)
			att = TupleDescAttr(desc, i);
		else
		{
			for (int j = 0; j < desc->natts && att == NULL; j++)
				if (strcmp(NameStr(TupleDescAttr(desc, j)->attname), names[i]) == 0)
					att = TupleDescAttr(desc, j);
		}
		ok = att != NULL && !att->attisdropped && att->atttypid == types[i] &&
			strcmp(NameStr(att->attname), names[i]) == 0;
		if (ok && attnums != NULL)
			attnums[i] = att->attnum;
	}
	if (ok)
		return;

	initStringInfo(&expected);
	for (int i = 0; i < natts; i++)
		appendStringInfo(&expected, "%s%s %s", i > 0 ? ", " : "",
						 names[i], format_type_be(types[i]));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("relation \"%s.%s\" does not have the columns the extension writes",
					get_namespace_name(RelationGetNamespace(rel)),
					RelationGetRelationName(rel)),
			 attnums == NULL ?
			 errdetail("Expected (%s).", expected.data) :
			 errdetail("Expected the columns (%s).", expected.data),
			 errhint("Undo the change to the table, or reinstall the extension.")));
}

/*
 * Whether a direct scan can build its keys for index: a valid btree index,
 * without expressions, whose first nkeys columns are the columns attnums
 * of rel (NULL: its first nkeys), text ones in the "C" collation (the
 * collation ScanKeyInit gives a key).
 */
static bool
index_leads_with(Relation rel, Relation index, const AttrNumber *attnums,
				 int nkeys)
{
	if (index->rd_rel->relam != BTREE_AM_OID ||
		!index->rd_index->indisvalid ||
		IndexRelationGetNumberOfKeyAttributes(index) < nkeys ||
		RelationGetIndexExpressions(index) != NIL)
		return false;
	for (int i = 0; i < nkeys; i++)
	{
		AttrNumber	attnum = attnums != NULL ? attnums[i] : i + 1;
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);

		if (index->rd_index->indkey.values[i] != attnum ||
			(att->atttypid == TEXTOID &&
			 index->rd_indcollation[i] != C_COLLATION_OID))
			return false;
	}
	return true;
}

/*
 * A direct index scan builds its keys for the keys the extension creates:
 * a valid unique btree index, without predicate or expressions, on the
 * columns attnums of rel in that order (NULL: the first nkeys columns),
 * text ones in the "C" collation (the collation ScanKeyInit gives a key).
 * An index rebuilt by hand any other way is refused rather than scanned
 * with keys that do not fit it, or trusted to keep keys unique.
 */
void
payments_check_key_index(Relation rel, Relation index, const AttrNumber *attnums,
						 int nkeys)
{
	bool		ok = (index != NULL &&
					  index_leads_with(rel, index, attnums, nkeys) &&
					  index->rd_index->indisunique &&
					  index->rd_index->indimmediate &&
					  IndexRelationGetNumberOfKeyAttributes(index) == nkeys &&
					  RelationGetIndexPredicate(index) == NIL);

	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("relation \"%s.%s\" does not have the primary key the extension created",
						get_namespace_name(RelationGetNamespace(rel)),
						RelationGetRelationName(rel)),
				 errhint("Undo the change to the table, or reinstall the extension.")));
}

/*
 * A direct index scan by the leading columns of an index that is not a
 * key: a valid btree index, without expressions, whose first nkeys columns
 * are attnums of rel, text ones in the "C" collation.  The caller checks
 * the rows it finds, but cannot see the rows the index leaves out: the
 * index has no predicate, or (null_attnum valid) only "column null_attnum
 * IS NULL", so that it holds every row the scan looks for.
 */
void
payments_check_index_prefix(Relation rel, Relation index,
							const AttrNumber *attnums, int nkeys,
							AttrNumber null_attnum)
{
	List	   *predicate = RelationGetIndexPredicate(index);
	bool		ok = index_leads_with(rel, index, attnums, nkeys);

	if (ok && predicate != NIL)
	{
		NullTest   *test = (NullTest *) linitial(predicate);

		ok = (null_attnum != InvalidAttrNumber &&
			  list_length(predicate) == 1 &&
			  IsA(test, NullTest) &&
			  test->nulltesttype == IS_NULL &&
			  !test->argisrow &&
			  IsA(test->arg, Var) &&
			  ((Var *) test->arg)->varattno == null_attnum);
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("index \"%s.%s\" is not the one the extension created",
						get_namespace_name(RelationGetNamespace(index)),
						RelationGetRelationName(index)),
				 errhint("Undo the change to the index, or reinstall the extension.")));
}
