/*-------------------------------------------------------------------------
 *
 * citus_tables.c
 *	  Which of the extension's tables Citus manages, cached per backend,
 *	  and the error that refuses to use them.
 *
 * Citus records every table it manages (distributed, reference, or added
 * to its metadata as a local table) in pg_catalog.pg_dist_partition, on the
 * coordinator and on every node it syncs its metadata to.  The local
 * relation of such a table is a shell: its rows are in shards, so a direct
 * heap read or write, or a plan the extension made for a plain table,
 * would miss them.  One layout is supported, the one payments.distribute()
 * makes (doc/citus.md): the reservation, idempotency and TCC tables
 * distributed by their key in one co-location group, the scope
 * restrictions and state machines reference tables, and every other table
 * local.  Calls then use the shards
 * this node holds (citus_shards.c).  Any other layout is refused with a
 * clear error rather than read or written through a shell.
 *
 * The answers "none" and "the supported layout" are kept until they may
 * change: Citus's trigger on
 * pg_dist_partition sends a relcache invalidation of the table it adds or
 * removes, so a relcache callback that knows the extension's tables (its
 * members in pg_depend) drops the answer when one of them is invalidated,
 * and a syscache callback on schemas drops it when the extension is
 * created or dropped.  Without Citus there is no pg_dist_partition and the
 * answer is "none".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "citus_tables.h"
#include "extension_catalog.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "miscadmin.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

/* The answer, valid until an invalidation says otherwise */
static bool cache_valid = false;
static bool callbacks_registered = false;

/* Counts invalidations, so that a read they overtook is not kept */
static uint64 invalidations = 0;

/* The extension's tables, sorted (TopMemoryContext) */
static Oid *members = NULL;
static int	nmembers = 0;

/* Those Citus manages, for the error's detail; NULL if none */
static char *managed = NULL;

/* What that adds up to, and the co-location group of the supported layout */
static PaymentsCitusLayout layout = PAYMENTS_CITUS_NONE;
static int32 layout_colocation = 0;

/*
 * The supported layout, table by table: distributed by hash of a column
 * in one co-location group, or a reference table (column NULL).
 */
typedef struct LayoutTable
{
	const char *name;
	const char *column;
} LayoutTable;

static const LayoutTable layout_tables[] = {
	{"stock", "sku"},
	{"stock_slots", "sku"},
	{"reservations", "sku"},
	{"idempotency_keys", "key"},
	{"tcc_fence", "gid"},
	{"compensations", "flow"},
	{"compensation_attempts", "flow"},
	{"idempotency_scopes", NULL},
	{"state_machine_definitions", NULL},
	{"external_handlers", NULL},
};

static bool
is_member(Oid relid)
{
	return members != NULL &&
		bsearch(&relid, members, nmembers, sizeof(Oid), oid_cmp) != NULL;
}

static void
relcache_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || is_member(relid))
	{
		cache_valid = false;
		invalidations++;
	}
}

static void
schema_invalidate(Datum arg, int cacheid, uint32 hashvalue)
{
	cache_valid = false;
	invalidations++;
}

/* The extension's ordinary and partitioned tables, palloc'd and sorted. */
static Oid *
extension_tables(Oid ext, int *n)
{
	Relation	dep;
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;
	int			cap = 64;
	Oid		   *result = palloc(sizeof(Oid) * cap);

	*n = 0;
	dep = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&keys[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(ExtensionRelationId));
	ScanKeyInit(&keys[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(ext));
	scan = systable_beginscan(dep, DependReferenceIndexId, true, NULL, 2, keys);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend d = (Form_pg_depend) GETSTRUCT(tup);
		char		relkind;

		if (d->classid != RelationRelationId || d->objsubid != 0 ||
			d->deptype != DEPENDENCY_EXTENSION)
			continue;
		relkind = get_rel_relkind(d->objid);
		if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
			continue;
		if (*n == cap)
		{
			cap *= 2;
			result = repalloc(result, sizeof(Oid) * cap);
		}
		result[(*n)++] = d->objid;
	}
	systable_endscan(scan);
	table_close(dep, AccessShareLock);
	qsort(result, *n, sizeof(Oid), oid_cmp);
	return result;
}

/* What Citus's metadata says a managed table is, for the error's detail */
static const char *
citus_kind(char partmethod, char repmodel, int32 colocationid)
{
	if (partmethod == 'h' || partmethod == 'r' || partmethod == 'a')
		return "distributed";
	if (repmodel == 't')
		return "reference";
	if (colocationid != 0)
		return "single-shard distributed";
	return "added to the Citus metadata";
}

/*
 * The rows of pg_dist_partition for relations in *oids (sorted, n of them),
 * as "schema.table (kind)" separated by commas into buf; the first one is
 * put into *first.  Returns how many.  Each column is found by name so
 * that a Citus version that adds columns is still read right.
 */
/*
 * The column a hash-distributed table is distributed by, from
 * pg_dist_partition.partkey (a Var's node string); 0 if none.
 */
static AttrNumber
partkey_column(const char *partkey)
{
	const char *p = partkey ? strstr(partkey, ":varattno ") : NULL;

	return p ? (AttrNumber) atoi(p + strlen(":varattno ")) : 0;
}

/*
 * Whether one managed table fits the supported layout; *colocation is the
 * group of the first distributed one, which every other must share.
 */
static bool
fits_layout(Oid relid, char method, char repmodel, int32 coloc,
			const char *partkey, int32 *colocation, int *matched)
{
	const char *name = get_rel_name(relid);

	for (int i = 0; i < lengthof(layout_tables); i++)
	{
		if (name == NULL || strcmp(name, layout_tables[i].name) != 0)
			continue;
		if (layout_tables[i].column == NULL)
			return method == 'n' && repmodel == 't' && ++(*matched);
		if (method != 'h' ||
			partkey_column(partkey) != get_attnum(relid, layout_tables[i].column))
			return false;
		if (*colocation == 0)
			*colocation = coloc;
		return coloc == *colocation && ++(*matched);
	}
	return false;
}

/* Whether a table of the extension is one payments.distribute() distributes */
static bool
layout_member(const char *name)
{
	for (int i = 0; i < lengthof(layout_tables); i++)
		if (strcmp(name, layout_tables[i].name) == 0)
			return true;
	return false;
}

static int
read_dist_partition(Oid distrel, const Oid *oids, int n, StringInfo buf,
					char **first, PaymentsCitusLayout *result,
					int32 *result_colocation)
{
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	AttrNumber	att_relid = get_attnum(distrel, "logicalrelid");
	AttrNumber	att_method = get_attnum(distrel, "partmethod");
	AttrNumber	att_repmodel = get_attnum(distrel, "repmodel");
	AttrNumber	att_coloc = get_attnum(distrel, "colocationid");
	AttrNumber	att_partkey = get_attnum(distrel, "partkey");
	int			found = 0;
	int			matched = 0;
	bool		fits = true;
	int32		colocation = 0;

	*first = NULL;
	if (att_relid == InvalidAttrNumber)
		elog(ERROR, "pg_dist_partition has no column logicalrelid");

	rel = table_open(distrel, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		d = heap_getattr(tup, att_relid, desc, &isnull);
		Oid			relid = isnull ? InvalidOid : DatumGetObjectId(d);
		char		method = 0;
		char		repmodel = 0;
		int32		coloc = 0;
		char	   *partkey = NULL;
		char	   *name;

		if (!OidIsValid(relid) ||
			bsearch(&relid, oids, n, sizeof(Oid), oid_cmp) == NULL)
			continue;
		if (att_method != InvalidAttrNumber &&
			(d = heap_getattr(tup, att_method, desc, &isnull), !isnull))
			method = DatumGetChar(d);
		if (att_repmodel != InvalidAttrNumber &&
			(d = heap_getattr(tup, att_repmodel, desc, &isnull), !isnull))
			repmodel = DatumGetChar(d);
		if (att_coloc != InvalidAttrNumber &&
			(d = heap_getattr(tup, att_coloc, desc, &isnull), !isnull))
			coloc = DatumGetInt32(d);
		if (att_partkey != InvalidAttrNumber &&
			(d = heap_getattr(tup, att_partkey, desc, &isnull), !isnull))
			partkey = TextDatumGetCString(d);
		if (!fits_layout(relid, method, repmodel, coloc, partkey, &colocation,
						 &matched))
			fits = false;

		name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
										  get_rel_name(relid));
		if (*first == NULL)
			*first = name;
		appendStringInfo(buf, "%s%s (%s)", found > 0 ? ", " : "", name,
						 citus_kind(method, repmodel, coloc));
		found++;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (result != NULL)
	{
		if (found == 0)
			*result = PAYMENTS_CITUS_NONE;
		else if (fits && matched == lengthof(layout_tables))
			*result = PAYMENTS_CITUS_DISTRIBUTED;
		else
			*result = PAYMENTS_CITUS_UNSUPPORTED;
		*result_colocation = colocation;
	}
	return found;
}

/* Find out afresh which of the extension's tables Citus manages. */
static void
cache_fill(void)
{
	Oid			ext;
	Oid			distrel;
	Oid		   *oids = NULL;
	int			n = 0;
	StringInfoData buf;
	char	   *first = NULL;
	uint64		start;
	MemoryContext old;

	if (!callbacks_registered)
	{
		payments_register_relcache_callback(relcache_invalidate, (Datum) 0);
		CacheRegisterSyscacheCallback(NAMESPACEOID, schema_invalidate, (Datum) 0);
		callbacks_registered = true;
	}

	/*
	 * An invalidation that arrives while we read starts the read again.  The
	 * answer is marked valid only once a read has ended: an error in the
	 * middle of one (a cancel, a lock timeout) leaves it to be read again.
	 */
	cache_valid = false;
	do
	{
		start = invalidations;
		first = NULL;
		ext = get_extension_oid("payments", true);
		distrel = get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE);
		n = 0;
		oids = OidIsValid(ext) ? extension_tables(ext, &n) : NULL;

		/* the callback matches against the new list from now on */
		old = MemoryContextSwitchTo(TopMemoryContext);
		if (members != NULL)
			pfree(members);
		members = NULL;
		nmembers = 0;
		if (n > 0)
		{
			members = palloc(sizeof(Oid) * n);
			memcpy(members, oids, sizeof(Oid) * n);
			nmembers = n;
		}
		MemoryContextSwitchTo(old);

		initStringInfo(&buf);
		layout = PAYMENTS_CITUS_NONE;
		layout_colocation = 0;
		if (OidIsValid(distrel) && n > 0)
			(void) read_dist_partition(distrel, oids, n, &buf, &first,
									   &layout, &layout_colocation);
	} while (invalidations != start);

	if (managed != NULL)
		pfree(managed);
	managed = first ? MemoryContextStrdup(TopMemoryContext, buf.data) : NULL;
	cache_valid = true;

	/*
	 * An unsupported layout is not kept.  Every call is refused anyway, so
	 * each reads the answer again: a table returned to a local one is seen
	 * at once by every session, whichever invalidations the way back sent.
	 */
	if (layout == PAYMENTS_CITUS_UNSUPPORTED)
		cache_valid = false;
}

/*
 * Whether Citus manages the extension's tables, and if so whether in the
 * layout payments.distribute() makes; *colocation (if not NULL) is then
 * the co-location group of its distributed tables.  Needs a transaction.
 */
PaymentsCitusLayout
payments_citus_layout(int32 *colocation)
{
	if (!cache_valid)
		cache_fill();
	if (colocation != NULL)
		*colocation = layout_colocation;
	return layout;
}

/*
 * A number that changes whenever Citus's metadata of one of the
 * extension's tables may have changed (a shard moved, split or dropped):
 * what was derived from it (citus_shards.c) is then read again.
 */
uint64
payments_citus_generation(void)
{
	return invalidations;
}

/*
 * Whether Citus manages one of the extension's tables in a layout the
 * extension does not support; if so and tables is not NULL, *tables names
 * them (palloc'd).  Raises no error of its own:
 * the worker asks before it does anything.  Needs a transaction.
 */
bool
payments_citus_manages_extension(char **tables)
{
	if (!cache_valid)
		cache_fill();
	if (tables != NULL)
		*tables = managed ? pstrdup(managed) : NULL;
	return layout == PAYMENTS_CITUS_UNSUPPORTED;
}

/*
 * Refuse to go on if Citus manages one of the extension's tables.  Called
 * by every accessor of the extension's schema and relations, so by every
 * entry point before it reads or writes anything of the extension.
 */
void
payments_refuse_citus_extension(void)
{
	if (likely(cache_valid))
		return;
	if (payments_citus_layout(NULL) != PAYMENTS_CITUS_UNSUPPORTED)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("extension \"payments\" does not support tables managed by Citus"),
			 errdetail("Citus manages %s; the extension supports only the layout payments.distribute() makes, and would otherwise miss the rows Citus keeps in shards.",
					   managed),
			 errhint("Return them to local tables on the coordinator as the section \"Scaling out with Citus\" of the extension's README shows, then run SELECT payments.distribute().")));
}

/*
 * Before DROP EXTENSION payments: Citus keeps the shards of a table that
 * belongs to an extension when the extension is dropped, so they would
 * stay behind on every node.  In the layout payments.distribute() makes,
 * remove each table from Citus first, as Citus does when a table is
 * dropped (its drop trigger: metadata on the workers, the shards, the
 * metadata here), in the dropping transaction; the tables are then local
 * and go with the extension, on every node.  Any other layout is refused:
 * it was not made by the extension, and the user may want its rows.
 */
void
payments_citus_before_drop(void)
{
	static const char *const steps[] = {
		"SELECT pg_catalog.master_remove_distributed_table_metadata_from_workers($1, $2, $3)",
		"SELECT pg_catalog.citus_drop_all_shards($1, $2, $3)",
		"SELECT pg_catalog.master_remove_partition_metadata($1, $2, $3)",
	};
	Oid			argtypes[3] = {REGCLASSOID, TEXTOID, TEXTOID};
	Oid		   *tables;
	int			ntables;
	bool		isnull;

	switch (payments_citus_layout(NULL))
	{
		case PAYMENTS_CITUS_NONE:
			return;
		case PAYMENTS_CITUS_UNSUPPORTED:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot drop extension \"payments\" while Citus manages its tables"),
					 errdetail("Citus manages %s; their shards would stay behind on the nodes that hold them.",
							   managed),
					 errhint("Return them to local tables on the coordinator first, as the section \"Scaling out with Citus\" of the extension's README shows.")));
			break;
		case PAYMENTS_CITUS_DISTRIBUTED:
			break;
	}

	/* only the owner may drop it: leave the refusal to DROP EXTENSION */
	if (!pg_extension_ownercheck(get_extension_oid("payments", false), GetUserId()))
		return;

	/* the list changes as the tables leave Citus: work on a copy */
	ntables = nmembers;
	tables = palloc(sizeof(Oid) * ntables);
	memcpy(tables, members, sizeof(Oid) * ntables);

	SPI_connect();
	if (SPI_execute("SELECT pg_catalog.citus_is_coordinator()", true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1 ||
		!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									&isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot drop extension \"payments\" on a Citus worker while its tables are distributed"),
				 errhint("Drop it on the coordinator, which drops the shards on every node.")));
	for (int i = 0; i < ntables; i++)
	{
		const char *name = get_rel_name(tables[i]);

		if (name == NULL || !layout_member(name))
			continue;
		for (int j = 0; j < lengthof(steps); j++)
		{
			Datum		values[3];

			values[0] = ObjectIdGetDatum(tables[i]);
			values[1] = CStringGetTextDatum(get_namespace_name(get_rel_namespace(tables[i])));
			values[2] = CStringGetTextDatum(name);
			if (SPI_execute_with_args(steps[j], 3, argtypes, values, NULL,
									  false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not remove table \"%s\" from Citus", name);
		}
	}
	SPI_finish();
}

/*
 * The OID of pg_catalog.relation_is_a_known_shard(regclass), Citus's test
 * of whether a relation is one of its shards; InvalidOid without Citus.
 */
static Oid
known_shard_function(void)
{
	Oid			argtypes[1] = {REGCLASSOID};

	return LookupFuncName(list_make2(makeString("pg_catalog"),
									 makeString("relation_is_a_known_shard")),
						  1, argtypes, true);
}

/*
 * Refuse to guard a table that Citus manages, or a shard of one, unless
 * the extension's tables are in the layout payments.distribute() makes:
 * otherwise the guard on a shard would read the machines of its node,
 * defined on the coordinator only.  Meant for a caller that caches its
 * answer per relation: Citus invalidates the relation's relcache entry
 * when it adds it to its metadata or removes it.
 */
void
payments_refuse_citus_guarded(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			distrel = get_relname_relid("pg_dist_partition", PG_CATALOG_NAMESPACE);
	Oid			fn;
	StringInfoData buf;
	char	   *first;

	/*
	 * In the layout payments.distribute() makes, the machines are a
	 * reference table and each node keeps the history of the shards it
	 * holds (state_machine.c).
	 */
	if (!OidIsValid(distrel) ||
		payments_citus_layout(NULL) == PAYMENTS_CITUS_DISTRIBUTED)
		return;
	initStringInfo(&buf);
	if (read_dist_partition(distrel, &relid, 1, &buf, &first, NULL, NULL) > 0)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the state guard does not support table %s, which Citus manages",
						first),
				 errdetail("The guard runs on the node of each shard, where the state machines defined on the coordinator are missing until payments.distribute() makes them a reference table."),
				 errhint("Run SELECT payments.distribute() first, or keep guarded tables local: SELECT undistribute_table('%s').",
						 first)));

	fn = known_shard_function();
	if (OidIsValid(fn) && DatumGetBool(OidFunctionCall1(fn, ObjectIdGetDatum(relid))))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the state guard does not support relation \"%s\", which is a Citus shard",
						RelationGetRelationName(rel)),
				 errdetail("The guard runs on the node of each shard, where the state machines defined on the coordinator are missing until payments.distribute() makes them a reference table."),
				 errhint("Run SELECT payments.distribute() first, or keep guarded tables local.")));
}
