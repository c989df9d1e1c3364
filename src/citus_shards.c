/*-------------------------------------------------------------------------
 *
 * citus_shards.c
 *	  In the layout payments.distribute() makes: which shards a key
 *	  belongs to, whether this node holds them, and the key a call is
 *	  working on.
 *
 * Every call that reads or writes a distributed table of the extension
 * works on one key, a SKU, an idempotency key or a TCC transaction's gid,
 * and payments.distribute() makes each such function a distributed
 * function that Citus sends to the node holding the key's shard.  There the call enters its key, and from
 * then on the extension's relations (payments_relation) and the tables
 * its plans name (spi_util.c) are that key's shards on this node: plain
 * tables, read and written exactly as the local tables are without Citus.
 * A key whose shards are on another node is refused, never reached
 * through a shell.
 *
 * The shards' hash ranges and placements come from Citus's metadata
 * (pg_dist_shard, pg_dist_placement, pg_dist_local_group), read once and
 * kept until Citus invalidates one of the extension's tables
 * (citus_tables.c).  A key is hashed as Citus hashes it: with its type's
 * hash function, in the column's collation ("C").
 *
 * The key entered is forgotten when the call leaves it, and when the
 * transaction, or the subtransaction it was entered in, aborts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "citus_shards.h"
#include "citus_tables.h"
#include "payments.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/typcache.h"

/* The distributed tables, all in one co-location group */
typedef enum ShardTable
{
	SHARD_STOCK,
	SHARD_STOCK_SLOTS,
	SHARD_RESERVATIONS,
	SHARD_IDEMPOTENCY_KEYS,
	SHARD_TCC_FENCE,
	SHARD_COMPENSATIONS,
	SHARD_COMPENSATION_ATTEMPTS,
	SHARD_NUM_TABLES
} ShardTable;

static const char *const shard_table_names[SHARD_NUM_TABLES] = {
	"stock", "stock_slots", "reservations", "idempotency_keys", "tcc_fence",
	"compensations", "compensation_attempts"
};

/*
 * The advisory lock class of Citus's lock on the metadata of co-located
 * shards (its resource_lock.h): its executor takes it in share mode on the
 * shards it writes, a shard move or split exclusively.
 */
#define CITUS_COLOCATED_SHARDS_METADATA 8

/* One hash range of the co-location group: a shard of each table */
typedef struct ShardRange
{
	int32		min;
	int32		max;
	bool		local;			/* placed on this node */
	char		probe[24];		/* a key in the range, found when first asked */
	int64		shardid[SHARD_NUM_TABLES];
	Oid			relids[PAYMENTS_NUM_RELATIONS]; /* resolved when first used */
} ShardRange;

/* The ranges in hash order (TopMemoryContext), valid for map_generation */
static ShardRange *ranges = NULL;
static int	nranges = 0;
static bool map_valid = false;
static uint64 map_generation = 0;

/* This node's Citus group, which numbers the rows it inserts */
static int32 map_group = 0;

/* The co-location group of the distributed tables */
static int32 map_colocation = 0;

/*
 * The reference tables: read from their placement on this node by the C
 * code (which), and in a query on a shard by the query if on_shard;
 * otherwise a query names the table itself and Citus plans it.
 */
typedef struct ReferenceTable
{
	const char *name;
	PaymentsRelation which;		/* PAYMENTS_NUM_RELATIONS: none */
	bool		on_shard;
	int64		shardid;
	bool		local;			/* placed on this node */
	Oid			relid;			/* resolved when first used */
} ReferenceTable;

static ReferenceTable references[] = {
	{"idempotency_scopes", PAYMENTS_REL_IDEMPOTENCY_SCOPES, false},
	{"state_machine_definitions", PAYMENTS_REL_STATE_MACHINE_DEFINITIONS, false},
	{"external_handlers", PAYMENTS_NUM_RELATIONS, true},
};

/*
 * The hash of the key entered, and where it was entered; a hash rather
 * than a range, so that it outlives a reload of the map in the middle of
 * a call (a relcache reset, say).  NO_KEY when none.
 */
#define NO_KEY PAYMENTS_SHARD_NO_KEY
static int64 current_key = NO_KEY;
static SubTransactionId current_subid = InvalidSubTransactionId;
static bool callbacks_registered = false;

static void
shard_xact_callback(XactEvent event, void *arg)
{
	current_key = NO_KEY;
}

static void
shard_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB && current_key != NO_KEY &&
		current_subid >= mySubid)
		current_key = NO_KEY;
}

/* Whether the extension's tables are in the layout payments.distribute() makes. */
bool
payments_shards_distributed(void)
{
	return payments_citus_layout(NULL) == PAYMENTS_CITUS_DISTRIBUTED;
}

static ShardTable
shard_table_of(const char *name)
{
	for (int t = 0; t < SHARD_NUM_TABLES; t++)
		if (strcmp(name, shard_table_names[t]) == 0)
			return (ShardTable) t;
	return SHARD_NUM_TABLES;
}

/* Column attname of a Citus catalog, which must have it. */
static AttrNumber
catalog_column(Oid rel, const char *attname)
{
	AttrNumber	att = get_attnum(rel, attname);

	if (att == InvalidAttrNumber)
		elog(ERROR, "Citus catalog \"%s\" has no column \"%s\"",
			 get_rel_name(rel), attname);
	return att;
}

static Oid
citus_catalog(const char *name)
{
	Oid			relid = get_relname_relid(name, PG_CATALOG_NAMESPACE);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("Citus catalog \"pg_catalog.%s\" does not exist", name)));
	return relid;
}

/* This node's group id, from pg_dist_local_group */
static int32
local_group(void)
{
	Oid			relid = citus_catalog("pg_dist_local_group");
	AttrNumber	att = catalog_column(relid, "groupid");
	Relation	rel = table_open(relid, AccessShareLock);
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	HeapTuple	tup = systable_getnext(scan);
	int32		group = -1;
	bool		isnull;

	if (HeapTupleIsValid(tup))
	{
		Datum		d = heap_getattr(tup, att, RelationGetDescr(rel), &isnull);

		if (!isnull)
			group = DatumGetInt32(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return group;
}

/* The shards placed on group (pg_dist_placement), sorted; *n of them */
static int64 *
shards_placed_on(int32 group, int *n)
{
	Oid			relid = citus_catalog("pg_dist_placement");
	AttrNumber	att_shard = catalog_column(relid, "shardid");
	AttrNumber	att_group = catalog_column(relid, "groupid");
	Relation	rel = table_open(relid, AccessShareLock);
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	HeapTuple	tup;
	int			cap = 64;
	int64	   *result = palloc(sizeof(int64) * cap);

	*n = 0;
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		null1;
		bool		null2;
		Datum		s = heap_getattr(tup, att_shard, RelationGetDescr(rel), &null1);
		Datum		g = heap_getattr(tup, att_group, RelationGetDescr(rel), &null2);

		if (null1 || null2 || DatumGetInt32(g) != group)
			continue;
		if (*n == cap)
		{
			cap *= 2;
			result = repalloc(result, sizeof(int64) * cap);
		}
		result[(*n)++] = DatumGetInt64(s);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	qsort(result, *n, sizeof(int64), payments_int64_cmp);
	return result;
}

/* One row of pg_dist_shard of a distributed table of the layout */
typedef struct ShardRow
{
	int32		min;
	int32		max;
	int64		shardid;
	ShardTable	table;
} ShardRow;

static int
shard_row_cmp(const void *a, const void *b)
{
	const ShardRow *x = (const ShardRow *) a;
	const ShardRow *y = (const ShardRow *) b;

	if (x->min != y->min)
		return (x->min > y->min) - (x->min < y->min);
	return (x->table > y->table) - (x->table < y->table);
}

static void
report_inconsistent(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("Citus's shards of the extension's distributed tables do not match"),
			 errdetail("The tables payments.distribute() distributes must have the same hash ranges, one shard of each per range."),
			 errhint("Distribute them again with payments.distribute().")));
}

/* The shards' ranges and placements, read afresh from Citus's metadata. */
static void
map_load(void)
{
	Oid			schema = payments_schema_oid();
	Oid			shells[SHARD_NUM_TABLES];
	Oid			ref_shells[lengthof(references)];
	Oid			relid = citus_catalog("pg_dist_shard");
	AttrNumber	att_rel = catalog_column(relid, "logicalrelid");
	AttrNumber	att_shard = catalog_column(relid, "shardid");
	AttrNumber	att_min = catalog_column(relid, "shardminvalue");
	AttrNumber	att_max = catalog_column(relid, "shardmaxvalue");
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	ShardRow   *rows;
	int			nrows;
	int			cap = 64;
	int64	   *local;
	int			nlocal;
	int32		group;
	uint64		generation;

	/* an invalidation while we read means the metadata changed: again */
	do
	{
		generation = payments_citus_generation();
		for (int t = 0; t < SHARD_NUM_TABLES; t++)
			shells[t] = get_relname_relid(shard_table_names[t], schema);
		for (int r = 0; r < lengthof(references); r++)
		{
			ref_shells[r] = get_relname_relid(references[r].name, schema);
			references[r].shardid = 0;
		}
		group = local_group();
		local = shards_placed_on(group, &nlocal);
		rows = palloc(sizeof(ShardRow) * cap);
		nrows = 0;

		rel = table_open(relid, AccessShareLock);
		scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
		while (HeapTupleIsValid(tup = systable_getnext(scan)))
		{
			TupleDesc	desc = RelationGetDescr(rel);
			bool		isnull;
			Oid			logical = DatumGetObjectId(heap_getattr(tup, att_rel, desc, &isnull));
			int64		shardid = DatumGetInt64(heap_getattr(tup, att_shard, desc, &isnull));
			Datum		dmin;
			Datum		dmax;
			bool		minnull;
			bool		maxnull;
			int			t;

			if (!OidIsValid(logical))
				continue;
			for (int r = 0; r < lengthof(references); r++)
				if (logical == ref_shells[r])
					references[r].shardid = shardid;
			for (t = 0; t < SHARD_NUM_TABLES; t++)
				if (logical == shells[t])
					break;
			if (t == SHARD_NUM_TABLES)
				continue;
			dmin = heap_getattr(tup, att_min, desc, &minnull);
			dmax = heap_getattr(tup, att_max, desc, &maxnull);
			if (minnull || maxnull)
				report_inconsistent();
			if (nrows == cap)
			{
				cap *= 2;
				rows = repalloc(rows, sizeof(ShardRow) * cap);
			}
			rows[nrows].min = pg_strtoint32(TextDatumGetCString(dmin));
			rows[nrows].max = pg_strtoint32(TextDatumGetCString(dmax));
			rows[nrows].shardid = shardid;
			rows[nrows].table = (ShardTable) t;
			nrows++;
		}
		systable_endscan(scan);
		table_close(rel, AccessShareLock);
	} while (generation != payments_citus_generation());

	/*
	 * Sorted by range and table, the rows must be one per table for each
	 * range: co-located tables have the same ranges.
	 */
	qsort(rows, nrows, sizeof(ShardRow), shard_row_cmp);
	if (nrows == 0 || nrows % SHARD_NUM_TABLES != 0)
		report_inconsistent();
	if (ranges != NULL)
		pfree(ranges);
	ranges = NULL;
	nranges = nrows / SHARD_NUM_TABLES;
	ranges = MemoryContextAllocZero(TopMemoryContext, sizeof(ShardRange) * nranges);
	for (int i = 0; i < nranges; i++)
	{
		ShardRange *r = &ranges[i];

		r->min = rows[i * SHARD_NUM_TABLES].min;
		r->max = rows[i * SHARD_NUM_TABLES].max;
		for (int t = 0; t < SHARD_NUM_TABLES; t++)
		{
			ShardRow   *row = &rows[i * SHARD_NUM_TABLES + t];

			if (row->table != (ShardTable) t || row->min != r->min || row->max != r->max)
				report_inconsistent();
			r->shardid[t] = row->shardid;
		}
		r->local = bsearch(&r->shardid[SHARD_STOCK], local, nlocal,
						   sizeof(int64), payments_int64_cmp) != NULL;
	}
	for (int r = 0; r < lengthof(references); r++)
	{
		if (references[r].shardid == 0)
			report_inconsistent();
		references[r].local = bsearch(&references[r].shardid, local, nlocal,
									  sizeof(int64), payments_int64_cmp) != NULL;
		references[r].relid = InvalidOid;
	}
	map_group = group;
	(void) payments_citus_layout(&map_colocation);
	pfree(rows);
	pfree(local);

	map_generation = generation;
	map_valid = true;
}

static void
map_check(void)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(shard_xact_callback, NULL);
		RegisterSubXactCallback(shard_subxact_callback, NULL);
		callbacks_registered = true;
	}
	if (!map_valid || map_generation != payments_citus_generation())
	{
		map_valid = false;
		map_load();
	}
}

/*
 * Take, until the end of the transaction, the lock Citus's executor takes
 * before it writes a shard, on the range's shards: a shard move or split
 * takes it exclusively while it copies them, so a write here either lands
 * before the copy or waits for the move, and is then judged on the new
 * placements.  Returns false if the map changed meanwhile (it is read
 * again), and the caller finds the key's range again.
 */
/*
 * Whether the worker may take that lock now, without waiting: a move or a
 * split holds it exclusively, and may itself wait for an application's
 * transaction, which the worker must never wait for.
 */
static bool
lock_range_now(int range)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) range,
						 (uint32) map_colocation, CITUS_COLOCATED_SHARDS_METADATA);
	return LockAcquire(&tag, ShareLock, false, true) != LOCKACQUIRE_NOT_AVAIL;
}

static bool
lock_range(int range)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) range,
						 (uint32) map_colocation, CITUS_COLOCATED_SHARDS_METADATA);
	(void) LockAcquire(&tag, ShareLock, false, false);
	AcceptInvalidationMessages();
	if (map_valid && map_generation == payments_citus_generation())
		return true;
	map_check();
	return false;
}

/* A key's hash, as Citus hashes a row's distribution column */
static int32
key_hash(text *key)
{
	TypeCacheEntry *tc = lookup_type_cache(TEXTOID, TYPECACHE_HASH_PROC_FINFO);

	return DatumGetInt32(FunctionCall1Coll(&tc->hash_proc_finfo, C_COLLATION_OID,
										   PointerGetDatum(key)));
}

/* The range a hash falls into, in the current map */
static int
range_of_hash(int32 hash)
{
	int			lo = 0;
	int			hi = nranges - 1;

	while (lo <= hi)
	{
		int			mid = lo + (hi - lo) / 2;

		if (hash < ranges[mid].min)
			hi = mid - 1;
		else if (hash > ranges[mid].max)
			lo = mid + 1;
		else
			return mid;
	}
	report_inconsistent();
	return -1;					/* keep the compiler quiet */
}

/*
 * Tell Citus to commit the current transaction's writes on other nodes by
 * two-phase commit.  Citus counts writes on more than one node for that,
 * and a shard written directly here, or a local table, is a write it does
 * not see: with one remote write it would commit that node first, in one
 * phase, and this node after, so that a commit failing here (a
 * serialization failure, say) would leave the remote write.  Citus's own
 * local execution does the same (Use2PCForCoordinatedTransaction only sets
 * a flag for the transaction).  Call only with the distributed layout.
 */
void
payments_citus_use_2pc(void)
{
	static void (*use_2pc) (void) = NULL;
	static bool looked_up = false;

	if (!looked_up)
	{
		use_2pc = (void (*) (void)) load_external_function("citus",
														   "Use2PCForCoordinatedTransaction",
														   false, NULL);
		looked_up = true;
	}
	if (use_2pc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("this version of Citus does not let extension \"payments\" ask for two-phase commit"),
				 errdetail("Its library has no function Use2PCForCoordinatedTransaction; without it a write on another node could commit without this one."),
				 errhint("Use a version of Citus that payments supports (see the README), or payments.undistribute().")));
	use_2pc();
}

/*
 * Enter the key a call works on (kind says what it is, for the error):
 * from here on the distributed tables are its shards on this node, until
 * payments_shard_leave with what this returned.  Refuses a key whose
 * shards are on another node.  Does nothing for a NULL key or unless the
 * tables are distributed.
 */
PaymentsShardContext
payments_shard_enter(text *key, const char *kind)
{
	PaymentsShardContext previous = current_key;
	int32		hash;
	int			range;

	if (key == NULL || !payments_shards_distributed())
		return previous;
	map_check();
	hash = key_hash(key);
	range = range_of_hash(hash);
	while (!lock_range(range))
		range = range_of_hash(hash);
	if (!ranges[range].local)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("the shard of %s \"%s\" is not on this node",
						kind, text_to_cstring(key)),
				 errdetail("The extension's tables are distributed: a call for one key runs on the node that holds its shard."),
				 errhint("Call the function as a statement of its own, SELECT payments.function(...), so that Citus sends it to that node.")));
	current_key = hash;
	current_subid = GetCurrentSubTransactionId();
	payments_citus_use_2pc();
	return previous;
}

void
payments_shard_leave(PaymentsShardContext previous)
{
	current_key = previous;
}

/*
 * Leave the key entered, if any, until payments_shard_leave with what this
 * returns: for code of others (a compensation handler) run in the middle
 * of a call on a shard.
 */
PaymentsShardContext
payments_shard_clear(void)
{
	PaymentsShardContext previous = current_key;

	current_key = NO_KEY;
	return previous;
}

/*
 * Whether the shards of key are on this node: always without the
 * distributed layout.
 */
bool
payments_shard_local(text *key)
{
	if (!payments_shards_distributed())
		return true;
	map_check();
	return ranges[range_of_hash(key_hash(key))].local;
}

/*
 * The key entered, as its hash (PAYMENTS_SHARD_NO_KEY if none), to enter
 * it again later with payments_shard_enter_hash.
 */
int64
payments_shard_key(void)
{
	return current_key;
}

/*
 * Enter a key by its hash, as payments_shard_enter does; false, entering
 * nothing, if its shards are not on this node (any more), or if there is
 * no key (PAYMENTS_SHARD_NO_KEY, taken before the tables were
 * distributed).  Without the distributed layout there is nothing to enter.
 */
bool
payments_shard_enter_hash(int64 hash, PaymentsShardContext *previous)
{
	int			range;

	*previous = current_key;
	if (!payments_shards_distributed())
		return true;
	if (hash == PAYMENTS_SHARD_NO_KEY)
		return false;
	map_check();
	range = range_of_hash((int32) hash);
	while (!lock_range(range))
		range = range_of_hash((int32) hash);
	if (!ranges[range].local)
		return false;
	current_key = hash;
	current_subid = GetCurrentSubTransactionId();
	payments_citus_use_2pc();
	return true;
}

/*
 * Run fn(probe, local, arg) once for each range of the distributed layout,
 * in hash order from the range start (modulo their number) on: probe is a
 * key of the range (so that Citus routes a call by it there), local
 * whether its shards are on this node.
 */
void
payments_shard_foreach(void (*fn) (text *probe, bool local, void *arg), void *arg,
					   uint32 start)
{
	map_check();
	for (int k = 0; k < nranges; k++)
	{
		int			i = (int) ((start + (uint32) k) % (uint32) nranges);
		ShardRange *r = &ranges[i];

		/* decimal numbers hash evenly: one in the range comes soon */
		for (uint32 n = 0; r->probe[0] == '\0'; n++)
		{
			char		candidate[24];

			snprintf(candidate, sizeof(candidate), "%u", n);
			if (range_of_hash(key_hash(cstring_to_text(candidate))) == i)
				strlcpy(r->probe, candidate, sizeof(r->probe));
		}
		fn(cstring_to_text(r->probe), r->local, arg);
		map_check();
	}
}

/* The range of the key entered in the current map, -1 if none */
static int
current_range(void)
{
	if (current_key == NO_KEY)
		return -1;
	map_check();
	return range_of_hash((int32) current_key);
}

/*
 * The shard of the key entered, as one number for the whole co-location
 * group (its stock shard's id), 0 if none: plans are kept per shard.
 */
int64
payments_shard_current(void)
{
	int			range = current_range();

	return range >= 0 ? ranges[range].shardid[SHARD_STOCK] : 0;
}

static void
report_no_key(const char *relname)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("this call cannot read or write the distributed table payments.%s",
					relname),
			 errdetail("payments.distribute() distributed the extension's tables by key; only calls for one key, on the node of its shard, read and write them directly."),
			 errhint("The section \"Scaling out with Citus\" of the extension's README lists the calls.")));
}

static void
report_no_placement(const ReferenceTable *ref)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("this node has no placement of the reference table payments.%s",
					ref->name),
			 errhint("Run SELECT replicate_reference_tables() on the coordinator.")));
}

/* The placement on this node of one of the reference tables */
static Oid
reference_relation(PaymentsRelation which)
{
	ReferenceTable *ref = NULL;

	for (int r = 0; r < lengthof(references); r++)
		if (references[r].which == which)
			ref = &references[r];
	Assert(ref != NULL);
	map_check();
	if (!ref->local)
		report_no_placement(ref);
	if (!OidIsValid(ref->relid))
	{
		ref->relid = get_relname_relid(psprintf("%s_" INT64_FORMAT, ref->name,
												ref->shardid),
									   payments_schema_oid());
		if (!OidIsValid(ref->relid))
			report_inconsistent();
	}
	return ref->relid;
}

/*
 * The relation to use for one of the extension's relations (relname, as
 * named in its schema): its shard on this node for the key entered if it
 * is a distributed table or an index of one, the local placement of the
 * reference table, InvalidOid for the extension's own local relation.
 */
Oid
payments_shard_relation(PaymentsRelation which, const char *relname)
{
	ShardTable	t;
	ShardRange *r;
	char	   *name;
	int			range;

	if (!payments_shards_distributed())
		return InvalidOid;

	switch (which)
	{
		case PAYMENTS_REL_IDEMPOTENCY_KEYS:
		case PAYMENTS_REL_IDEMPOTENCY_KEYS_PKEY:
			t = SHARD_IDEMPOTENCY_KEYS;
			break;
		case PAYMENTS_REL_STOCK_SLOTS:
			t = SHARD_STOCK_SLOTS;
			break;
		case PAYMENTS_REL_RESERVATIONS:
			t = SHARD_RESERVATIONS;
			break;
		case PAYMENTS_REL_TCC_FENCE:
		case PAYMENTS_REL_TCC_FENCE_PKEY:
			t = SHARD_TCC_FENCE;
			break;
		case PAYMENTS_REL_IDEMPOTENCY_SCOPES:
		case PAYMENTS_REL_STATE_MACHINE_DEFINITIONS:
			return reference_relation(which);
		default:
			return InvalidOid;
	}

	range = current_range();
	if (range < 0)
		report_no_key(shard_table_names[t]);
	r = &ranges[range];
	if (!OidIsValid(r->relids[which]))
	{
		name = psprintf("%s_" INT64_FORMAT, relname, r->shardid[t]);
		r->relids[which] = get_relname_relid(name, payments_schema_oid());
		if (!OidIsValid(r->relids[which]))
			report_inconsistent();
	}
	return r->relids[which];
}

/*
 * For a table named in a query's text (relname, len bytes, after the
 * schema): the name of its shard for the key entered if it is distributed
 * (palloc'd), NULL otherwise.  A reference table keeps its name, so that
 * Citus plans the query and writes every placement; *citus is then set.
 */
char *
payments_shard_table_name(const char *relname, int len, bool *citus)
{
	char	   *name = pnstrdup(relname, len);
	ShardTable	t = shard_table_of(name);
	int			range;

	if (!payments_shards_distributed())
		return NULL;
	for (int r = 0; r < lengthof(references); r++)
	{
		if (strcmp(name, references[r].name) != 0)
			continue;
		if (references[r].on_shard && current_range() >= 0)
		{
			map_check();
			if (!references[r].local)
				report_no_placement(&references[r]);
			return psprintf("%s_" INT64_FORMAT, name, references[r].shardid);
		}
		*citus = true;
	}
	if (t == SHARD_NUM_TABLES)
		return NULL;
	range = current_range();
	if (range < 0)
		report_no_key(name);
	return psprintf("%s_" INT64_FORMAT, name, ranges[range].shardid[t]);
}

/*
 * The id of a new row (a hold, a history entry) from its sequence's next
 * value: each node has a sequence of its own, so while the tables are
 * distributed the node's Citus group is put in the top bits (as Citus does
 * for the sequences it creates), and ids stay unique across nodes without
 * coordination.
 */
int64
payments_shard_unique_id(int64 next)
{
	if (!payments_shards_distributed())
		return next;
	map_check();
	if (next <= 0 || next >= (INT64CONST(1) << 48) || map_group < 0 ||
		map_group >= (1 << 14))
		ereport(ERROR,
				(errcode(ERRCODE_SEQUENCE_GENERATOR_LIMIT_EXCEEDED),
				 errmsg("id %lld does not fit in the range of Citus group %d",
						(long long) next, map_group)));
	return ((int64) map_group << 48) | next;
}

/*
 * What payments_shard_unique_id adds to a sequence's value, for an id made
 * in SQL: 0 without the distributed layout.
 */
int64
payments_shard_id_base(void)
{
	if (!payments_shards_distributed())
		return 0;
	return payments_shard_unique_id(1) - 1;
}

/*
 * Lock the shards of a range for writing if that can be done without
 * waiting: false if any of them is locked against it (by DDL such as
 * payments.undistribute() dropping them), or is gone.  The worker's round
 * holds the locks of the ranges it did until it commits; waiting here
 * could close a cycle with a command that locks the same shards in
 * another order.
 */
static bool
lock_range_shards(int range)
{
	for (int t = 0; t < SHARD_NUM_TABLES; t++)
	{
		char	   *name = psprintf("%s_" INT64_FORMAT, shard_table_names[t],
									ranges[range].shardid[t]);
		Oid			relid = get_relname_relid(name, payments_schema_oid());

		pfree(name);
		if (!OidIsValid(relid) || !ConditionalLockRelationOid(relid, RowExclusiveLock))
			return false;
	}
	return true;
}

/*
 * Run fn(arg) once for each range whose shards are on this node, with its
 * key entered: the worker's maintenance of the shards this node holds.  A
 * range whose shards, or whose shard metadata (a move, a split), another
 * command has locked is left for the next call: the worker never waits.
 * Without the distributed layout, once, as it is.
 */
void
payments_shard_foreach_local(void (*fn) (void *arg), void *arg)
{
	PaymentsShardContext previous = current_key;

	if (!payments_shards_distributed())
	{
		fn(arg);
		return;
	}
	map_check();
	for (int i = 0; i < nranges; i++)
	{
		if (!ranges[i].local || !lock_range_now(i))
			continue;
		AcceptInvalidationMessages();
		if (!map_valid || map_generation != payments_citus_generation())
		{
			/* the map changed: start over on the new one */
			map_check();
			i = -1;
			continue;
		}
		if (!ranges[i].local || !lock_range_shards(i))
			continue;
		current_key = ranges[i].min;
		current_subid = GetCurrentSubTransactionId();
		payments_citus_use_2pc();
		fn(arg);
		/* fn may have read the metadata again */
		map_check();
	}
	current_key = previous;
}

/* What is left of a budget of rows spread over the shards, and what was done */
typedef struct ShardBatches
{
	int32		(*batch) (int32 max_rows, void *arg);
	void	   *arg;
	int32		left;
	int32		done;
} ShardBatches;

static void
shard_batch(void *arg)
{
	ShardBatches *b = (ShardBatches *) arg;
	int32		n;

	if (b->left <= 0)
		return;
	n = b->batch(b->left, b->arg);
	b->left -= n;
	b->done += n;
}

/*
 * A maintenance call of up to max_rows rows: batch(rows left, arg) on each
 * shard this node holds while rows are left (once, without the
 * distributed layout); returns how many rows the batches handled.
 */
int32
payments_shard_batches(int32 max_rows, int32 (*batch) (int32 max_rows, void *arg),
					   void *arg)
{
	ShardBatches b = {batch, arg, max_rows, 0};

	payments_shard_foreach_local(shard_batch, &b);
	return b.done;
}

/*
 * The distributed table relid is a shard of, while the extension's tables
 * are distributed; InvalidOid for any other relation.  A shard is named
 * <table>_<shard id>, in its table's schema.
 */
Oid
payments_shard_logical_relid(Oid relid)
{
	const char *name;
	const char *suffix;
	Oid			relation;
	Oid			logical = InvalidOid;
	int64		shardid;
	char	   *end;
	Oid			index;
	AttrNumber	att_shard;
	ScanKeyData key;
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;

	/* the layout first: it is cached, and "none" without Citus */
	if (!payments_shards_distributed())
		return InvalidOid;
	name = get_rel_name(relid);
	relation = get_relname_relid("pg_dist_shard", PG_CATALOG_NAMESPACE);
	if (name == NULL || !OidIsValid(relation) ||
		(suffix = strrchr(name, '_')) == NULL || suffix[1] == '\0')
		return InvalidOid;
	errno = 0;
	shardid = strtoi64(suffix + 1, &end, 10);
	if (*end != '\0' || errno != 0 || shardid <= 0)
		return InvalidOid;

	/* by Citus's index on pg_dist_shard (shardid), if it has one */
	index = get_relname_relid("pg_dist_shard_shardid_index", PG_CATALOG_NAMESPACE);
	att_shard = catalog_column(relation, "shardid");
	ScanKeyInit(&key, att_shard, BTEqualStrategyNumber, F_INT8EQ,
				Int64GetDatum(shardid));
	rel = table_open(relation, AccessShareLock);
	scan = systable_beginscan(rel, index, OidIsValid(index), NULL,
							  OidIsValid(index) ? 1 : 0, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, att_shard, RelationGetDescr(rel), &isnull);

		if (isnull || DatumGetInt64(d) != shardid)
			continue;
		d = heap_getattr(tup, catalog_column(relation, "logicalrelid"),
						 RelationGetDescr(rel), &isnull);
		if (!isnull)
			logical = DatumGetObjectId(d);
		break;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	/* the name must be the shard's own, in its table's schema */
	if (!OidIsValid(logical) ||
		get_rel_namespace(logical) != get_rel_namespace(relid) ||
		strcmp(psprintf("%s_" INT64_FORMAT, get_rel_name(logical), shardid), name) != 0)
		return InvalidOid;
	return logical;
}
