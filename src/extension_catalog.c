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
 * The installed version must be the library's own: the library's SQL
 * names the tables and columns of its version, and an older schema left in
 * place after a package upgrade is reported with a hint to update it.  A
 * mismatch is never cached, so the ALTER EXTENSION takes effect at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "extension_catalog.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "miscadmin.h"
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
};

static Oid	schema_oid = InvalidOid;
static char *schema_quoted = NULL;	/* in TopMemoryContext */
static bool schema_valid = false;
static uint64 schema_generation = 0;
static Oid	relation_oids[PAYMENTS_NUM_RELATIONS];
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

static void
schema_lookup(void)
{
	Oid			ext;
	Oid			nsp = InvalidOid;
	char	   *version = NULL;
	char	   *name;
	const char *quoted;

	if (!callbacks_registered)
	{
		CacheRegisterSyscacheCallback(NAMESPACEOID, schema_invalidate, (Datum) 0);
		CacheRegisterRelcacheCallback(relations_invalidate, (Datum) 0);
		callbacks_registered = true;
	}

	ext = get_extension_oid("payments", true);
	if (OidIsValid(ext))
		nsp = extension_row(ext, &version);
	name = OidIsValid(nsp) ? get_namespace_name(nsp) : NULL;
	if (name == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"payments\" is not installed in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("Run CREATE EXTENSION payments.")));
	if (version == NULL || strcmp(version, PAYMENTS_VERSION) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"payments\" version \"%s\" is installed, but the loaded library is version \"%s\"",
						version ? version : "", PAYMENTS_VERSION),
				 errhint("Run ALTER EXTENSION payments UPDATE.")));

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
	if (!schema_valid)
		schema_lookup();
	return schema_oid;
}

/* The extension's schema name, quoted for SQL text. */
const char *
payments_schema_quoted(void)
{
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
	if (!schema_valid)
		schema_lookup();
	return schema_generation;
}

/* The OID of one of the extension's relations (table, index or sequence). */
Oid
payments_relation(PaymentsRelation which)
{
	Oid			schema = payments_schema_oid();
	Oid			relid;

	Assert(which >= 0 && which < PAYMENTS_NUM_RELATIONS);
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
