/*-------------------------------------------------------------------------
 *
 * idempotency.c
 *	  Idempotency keys: one request key, one effect, one stored answer.
 *
 * A key lives in payments.idempotency_keys as 'started' until its flow
 * completes, then as 'completed' with the stored response until it expires.
 *
 * Who may act on a key is decided by two mechanisms:
 *
 * - A transaction-level heavyweight lock on the key (src/key_lock.c: an
 *   advisory lock tag in our own lock space, see payments.h), taken by
 *   every function that changes the key.  It is held until the transaction
 *   ends, so a key in use by an open transaction is never taken over, and
 *   it is released by the lock manager the moment that transaction aborts
 *   or its backend dies.  Nothing is kept in session state, so this works
 *   behind a pooler in transaction mode.  Two different keys sharing the
 *   lock's hash would only make one wait for (or be told PM002 about) the
 *   other, never share a row.
 *
 * - A lease (lease_expires_at) for flows that span several transactions:
 *   between them no lock is held, and the committed 'started' row says the
 *   flow is alive until its lease runs out.  Every checkpoint renews it;
 *   after it has run out, the next caller resumes the flow ('recovering').
 *
 * A started key whose lease still runs has not expired, even past its TTL:
 * a TTL shorter than the lease must not hand a flow's key to another
 * caller (nor to purge) while the flow may still come back to it.
 *
 * Completed keys never change until they expire, so the replay path reads
 * the row without taking the lock.
 *
 * Scopes are shared by every role that may call these functions, unless
 * payments.restrict_scope names the roles that may use one: then only
 * members of those roles (and superusers) may begin, checkpoint, complete,
 * abandon or replay its keys.  The restrictions are read into a per-backend
 * cache, reloaded after a relcache invalidation of their table (sent by a
 * trigger on every change), so an unrestricted scope needs a hash lookup,
 * and no lookup at all while no scope is restricted.
 *
 * Rights.  The restriction is checked for the caller's role, so the four
 * key functions are not SECURITY DEFINER (owner_rights.c says why); they
 * read the key as the caller, with a direct index scan that checks no
 * privilege (EXECUTE on the function is the check), and take their owner's
 * rights with search_path pinned only around their SQL.
 *
 * Reading a key is the hot path of every call (a replay is nothing else), so
 * it is a direct scan of the primary key index rather than an SPI query:
 * executor start-up, plan revalidation and the result copy cost more than
 * the lookup itself.  Changes still go through SPI plans, which keep the
 * table's constraints, indexes and triggers in charge.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "idempotency.h"
#include "payments.h"
#include "fault.h"
#include "args.h"
#include "citus_shards.h"
#include "extension_catalog.h"
#include "fingerprint.h"
#include "key_lock.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_idempotency_begin);
PG_FUNCTION_INFO_V1(payments_idempotency_checkpoint);
PG_FUNCTION_INFO_V1(payments_idempotency_complete);
PG_FUNCTION_INFO_V1(payments_idempotency_abandon);
PG_FUNCTION_INFO_V1(payments_purge_idempotency_keys);
PG_FUNCTION_INFO_V1(payments_restrict_scope);
PG_FUNCTION_INFO_V1(payments_unrestrict_scope);
PG_FUNCTION_INFO_V1(payments_idempotency_scopes_changed);

#define SCOPE_MAX_BYTES			64
#define KEY_MAX_BYTES			255
#define RECOVERY_POINT_MAX_BYTES 255
/* a key may be kept a year: a client may retry that late (see reservation.h) */
#define IDEMPOTENCY_TTL_MAX_USECS (INT64CONST(366) * USECS_PER_DAY)

static bool idempotency_wait = false;
static int	idempotency_lease = 60;

/* A key's row, as read by the lookup query */
typedef struct KeyRow
{
	bool		found;
	bool		expired;		/* past its TTL and lease: the key counts as new */
	bool		completed;
	bool		lease_expired;
	bool		hash_matches;
	Datum		response;		/* valid in the caller's context */
	bool		response_isnull;
	int32		response_code;
	bool		response_code_isnull;
	text	   *recovery_point; /* NULL if none */
	TimestampTz lease_expires_at;
} KeyRow;

/* Plans kept for the backend's lifetime; see spi_util.c */
static SPIPlanPtr insert_plan;
static SPIPlanPtr restart_plan;
static SPIPlanPtr takeover_plan;
static SPIPlanPtr checkpoint_plan;
static SPIPlanPtr complete_plan;
static SPIPlanPtr abandon_plan;
static SPIPlanPtr purge_plan;
static SPIPlanPtr restrict_plan;
static SPIPlanPtr unrestrict_plan;

static const Oid key_argtypes[] = {TEXTOID, TEXTOID};

void
idempotency_init(void)
{
	DefineCustomBoolVariable("payments.idempotency_wait",
							 gettext_noop("Waits for a key held by another open transaction instead of failing at once."),
							 gettext_noop("When off, a key in use by another transaction raises SQLSTATE PM002. "
										  "When on, the caller waits, honouring lock_timeout."),
							 &idempotency_wait,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("payments.idempotency_lease",
							gettext_noop("How long a started idempotency key stays reserved for its flow between transactions."),
							gettext_noop("Every checkpoint renews the lease; once it runs out the next caller with "
										 "the same key gets outcome \"recovering\"."),
							&idempotency_lease,
							60,
							1,
							7 * 24 * 3600,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

/*
 * Take the key's lock for the rest of the transaction.  Without
 * payments.idempotency_wait a key held by another transaction is refused at
 * once (PM002, the caller answers 409); with it, the caller queues like any
 * lock waiter, so lock_timeout and deadlock detection apply.
 */
static void
lock_key(text *scope, text *key)
{
	if (!payments_lock_key(VARDATA_ANY(scope), VARSIZE_ANY_EXHDR(scope),
						   VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key),
						   PAYMENTS_LOCKSPACE_IDEMPOTENCY, idempotency_wait))
		ereport(ERROR,
				(errcode(ERRCODE_PM_IDEMPOTENCY_IN_PROGRESS),
				 errmsg("idempotency key \"%s\" is in use by another transaction",
						text_to_cstring(key)),
				 errdetail("A request with this key is being processed in scope \"%s\".",
						   text_to_cstring(scope)),
				 errhint("Retry the request after the other one has finished, or set payments.idempotency_wait to wait for it.")));
}

/*
 * The columns lookup_key reads, found by name and checked (with
 * payments_check_columns) the first time a backend opens the table and
 * again whenever extension_catalog.c says a relation of the extension
 * changed, so that an ALTER TABLE in an upgrade script cannot make the
 * numbers stale.
 */
enum
{
	KEY_REQUEST_HASH,
	KEY_STATE,
	KEY_RECOVERY_POINT,
	KEY_RESPONSE,
	KEY_RESPONSE_CODE,
	KEY_LEASE_EXPIRES_AT,
	KEY_EXPIRES_AT,
	KEY_NCOLUMNS
};

static const char *const key_column_names[KEY_NCOLUMNS] = {
	[KEY_REQUEST_HASH] = "request_hash",
	[KEY_STATE] = "state",
	[KEY_RECOVERY_POINT] = "recovery_point",
	[KEY_RESPONSE] = "response",
	[KEY_RESPONSE_CODE] = "response_code",
	[KEY_LEASE_EXPIRES_AT] = "lease_expires_at",
	[KEY_EXPIRES_AT] = "expires_at",
};

static const Oid key_column_types[KEY_NCOLUMNS] = {
	[KEY_REQUEST_HASH] = BYTEAOID,
	[KEY_STATE] = TEXTOID,
	[KEY_RECOVERY_POINT] = TEXTOID,
	[KEY_RESPONSE] = JSONBOID,
	[KEY_RESPONSE_CODE] = INT4OID,
	[KEY_LEASE_EXPIRES_AT] = TIMESTAMPTZOID,
	[KEY_EXPIRES_AT] = TIMESTAMPTZOID,
};

static AttrNumber key_columns[KEY_NCOLUMNS];
static uint64 key_columns_generation = 0;	/* 0: not checked yet */
static Oid	key_columns_relid = InvalidOid;	/* a shard has columns of its own */

/*
 * The scope restrictions, as payments.idempotency_scopes last held them:
 * scope (NUL-terminated) -> the roles whose members may use it.
 */
typedef struct ScopeEntry
{
	char		scope[SCOPE_MAX_BYTES + 1];
	int			nroles;
	Oid		   *roles;
} ScopeEntry;

static MemoryContext scopes_cxt = NULL;
static HTAB *scopes_hash = NULL;
static long scopes_count = 0;
static Oid	scopes_relid = InvalidOid;
static bool scopes_valid = false;
static uint64 scopes_invalidations = 0;

static bool scopes_callback_registered = false;

/*
 * The scope restrictions are data, not layout: they change with every
 * restrict_scope, whose trigger sends a relcache invalidation of their
 * table, so this cache keeps a callback of its own rather than reloading
 * whenever any relation of the extension changes.  The callback may run in
 * the middle of a call (whenever a lock is taken), so it only marks the
 * cache out of date.
 */
static void
scopes_invalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == scopes_relid)
	{
		scopes_valid = false;
		scopes_invalidations++;
	}
}

/*
 * Read the key's row into *row; fingerprint may be NULL to skip the check.
 *
 * The scan uses the transaction snapshot as a query would: under READ
 * COMMITTED a new one, so that after waiting for the key's lock we see what
 * its holder committed; under REPEATABLE READ the transaction's own.
 * Values that outlive the scan are copied (and detoasted) into resultcxt,
 * so that they survive SPI_finish.
 */
static void
lookup_key(text *scope, text *key, const unsigned char *fingerprint,
		   KeyRow *row, MemoryContext resultcxt)
{
	Relation	rel;
	Relation	index;
	Snapshot	snapshot;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	ScanKeyData skey[2];
	TimestampTz now = GetCurrentTimestamp();
	uint64		generation = payments_relations_generation();

	memset(row, 0, sizeof(KeyRow));

	rel = table_open(payments_relation(PAYMENTS_REL_IDEMPOTENCY_KEYS),
					 AccessShareLock);
	index = index_open(payments_relation(PAYMENTS_REL_IDEMPOTENCY_KEYS_PKEY),
					   AccessShareLock);
	if (generation != key_columns_generation ||
		RelationGetRelid(rel) != key_columns_relid)
	{
		payments_check_columns(rel, key_column_names, key_column_types,
							   KEY_NCOLUMNS, key_columns);
		key_columns_generation = generation;
		key_columns_relid = RelationGetRelid(rel);
	}
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(GetTransactionSnapshot());

	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(scope));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(key));
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, index, snapshot, 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);

	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;
		Datum		d;
		MemoryContext oldcxt;

		row->found = true;
		if (fingerprint != NULL)
		{
			bytea	   *stored = DatumGetByteaPP(slot_getattr(slot, key_columns[KEY_REQUEST_HASH],
															  &isnull));

			row->hash_matches =
				VARSIZE_ANY_EXHDR(stored) == PAYMENTS_FINGERPRINT_LEN &&
				payments_digest_equal((unsigned char *) VARDATA_ANY(stored),
									  fingerprint, PAYMENTS_FINGERPRINT_LEN);
		}

		d = slot_getattr(slot, key_columns[KEY_STATE], &isnull);
		row->completed = strcmp(TextDatumGetCString(d), "completed") == 0;

		oldcxt = MemoryContextSwitchTo(resultcxt);
		d = slot_getattr(slot, key_columns[KEY_RESPONSE], &row->response_isnull);
		if (!row->response_isnull)
			row->response = PointerGetDatum(PG_DETOAST_DATUM_COPY(d));
		row->response_code = DatumGetInt32(slot_getattr(slot, key_columns[KEY_RESPONSE_CODE],
														&row->response_code_isnull));
		d = slot_getattr(slot, key_columns[KEY_RECOVERY_POINT], &isnull);
		if (!isnull)
			row->recovery_point = (text *) PG_DETOAST_DATUM_COPY(d);
		MemoryContextSwitchTo(oldcxt);

		d = slot_getattr(slot, key_columns[KEY_LEASE_EXPIRES_AT], &isnull);
		row->lease_expires_at = isnull ? 0 : DatumGetTimestampTz(d);
		row->lease_expired = isnull || row->lease_expires_at <= now;
		d = slot_getattr(slot, key_columns[KEY_EXPIRES_AT], &isnull);
		row->expired = DatumGetTimestampTz(d) <= now &&
			(row->completed || row->lease_expired);
	}

	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(index, NoLock);
	table_close(rel, NoLock);
}

static bytea *
fingerprint_bytea(const unsigned char *fingerprint)
{
	bytea	   *b = palloc(VARHDRSZ + PAYMENTS_FINGERPRINT_LEN);

	SET_VARSIZE(b, VARHDRSZ + PAYMENTS_FINGERPRINT_LEN);
	memcpy(VARDATA(b), fingerprint, PAYMENTS_FINGERPRINT_LEN);
	return b;
}

/* Parameters $1..$5 of the two statements that start a key afresh. */
static const Oid start_argtypes[] = {TEXTOID, TEXTOID, BYTEAOID, INT4OID, INTERVALOID};

static void
start_values(Datum *values, text *scope, text *key, bytea *hash, Datum ttl)
{
	values[0] = PointerGetDatum(scope);
	values[1] = PointerGetDatum(key);
	values[2] = PointerGetDatum(hash);
	values[3] = Int32GetDatum(idempotency_lease);
	values[4] = ttl;
}

/*
 * Insert a new 'started' key.  Returns false if the key already exists:
 * under READ COMMITTED the caller then reads the row that won; under
 * REPEATABLE READ a conflicting row the snapshot cannot see raises a
 * serialization failure here, which the client retries like any other.
 */
static bool
insert_key(text *scope, text *key, bytea *hash, Datum ttl)
{
	Datum		values[5];

	payments_prepare(&insert_plan,
					 "INSERT INTO @extschema@.idempotency_keys"
					 " (scope, key, request_hash, lease_expires_at, expires_at)"
					 " VALUES ($1, $2, $3,"
					 "  clock_timestamp() + $4 * interval '1 second',"
					 "  clock_timestamp() + $5)"
					 " ON CONFLICT (scope, key) DO NOTHING",
					 5, start_argtypes);
	start_values(values, scope, key, hash, ttl);
	return payments_execute(insert_plan, values, NULL, SPI_OK_INSERT, 0) == 1;
}

/* An expired key (past its TTL and its lease) is used again as if new. */
static bool
restart_key(text *scope, text *key, bytea *hash, Datum ttl)
{
	Datum		values[5];

	payments_prepare(&restart_plan,
					 "UPDATE @extschema@.idempotency_keys"
					 " SET request_hash = $3, state = 'started',"
					 "  recovery_point = NULL, response = NULL, response_code = NULL,"
					 "  created_at = now(), updated_at = now(), completed_at = NULL,"
					 "  lease_expires_at = clock_timestamp() + $4 * interval '1 second',"
					 "  expires_at = clock_timestamp() + $5"
					 " WHERE scope = $1 AND key = $2"
					 "  AND expires_at <= clock_timestamp()"
					 "  AND (lease_expires_at IS NULL"
					 "   OR lease_expires_at <= clock_timestamp())",
					 5, start_argtypes);
	start_values(values, scope, key, hash, ttl);
	return payments_execute(restart_plan, values, NULL, SPI_OK_UPDATE, 0) == 1;
}

/* The caller resumes a flow whose lease ran out: the lease is now its own. */
static void
take_over_key(text *scope, text *key)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, INT4OID};
	Datum		values[3];

	payments_prepare(&takeover_plan,
					 "UPDATE @extschema@.idempotency_keys"
					 " SET lease_expires_at = clock_timestamp() + $3 * interval '1 second',"
					 "  updated_at = now()"
					 " WHERE scope = $1 AND key = $2",
					 3, argtypes);
	values[0] = PointerGetDatum(scope);
	values[1] = PointerGetDatum(key);
	values[2] = Int32GetDatum(idempotency_lease);
	payments_execute(takeover_plan, values, NULL, SPI_OK_UPDATE, 0);
}

static void
report_key_reused(text *scope, text *key)
{
	ereport(ERROR,
			(errcode(ERRCODE_PM_IDEMPOTENCY_KEY_REUSED),
			 errmsg("idempotency key \"%s\" was already used for a different request",
					text_to_cstring(key)),
			 errdetail("The request's fingerprint differs from the one stored for this key in scope \"%s\".",
					   text_to_cstring(scope)),
			 errhint("Use a new idempotency key for a new request.")));
}

/*
 * Build the (outcome, response, response_code, recovery_point) row.
 */
static Datum
begin_result(FunctionCallInfo fcinfo, const char *outcome, KeyRow *row)
{
	TupleDesc	tupdesc;
	Datum		values[4];
	bool		nulls[4] = {false, true, true, true};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");

	values[0] = CStringGetTextDatum(outcome);
	if (row != NULL)
	{
		values[1] = row->response;
		nulls[1] = row->response_isnull;
		values[2] = Int32GetDatum(row->response_code);
		nulls[2] = row->response_code_isnull;
		if (row->recovery_point != NULL)
		{
			values[3] = PointerGetDatum(row->recovery_point);
			nulls[3] = false;
		}
	}
	return HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc), values, nulls));
}

/*
 * Read payments.idempotency_scopes into the cache.  The table is read with
 * a fresh snapshot after its lock is taken (which processes pending
 * invalidations), so it holds every restriction committed before; one
 * committed later sends its invalidation after this read, and the cache is
 * only marked valid if none arrived while reading.  An error while reading
 * leaves it invalid, never half-filled.
 */
static void
load_scopes(void)
{
	Oid			relid;
	Relation	rel;
	TupleDesc	tupdesc;
	static const char *const names[] = {"scope", "roles"};
	static const Oid types[] = {TEXTOID, REGROLEARRAYOID};
	AttrNumber	attnums[2];
	Snapshot	snapshot;
	SysScanDesc scan;
	HeapTuple	tup;
	HASHCTL		ctl;
	uint64		invalidations;

	if (!scopes_callback_registered)
	{
		payments_register_relcache_callback(scopes_invalidate, (Datum) 0);
		scopes_callback_registered = true;
	}
	scopes_valid = false;
	relid = payments_relation(PAYMENTS_REL_IDEMPOTENCY_SCOPES);
	rel = table_open(relid, AccessShareLock);
	scopes_relid = relid;
	invalidations = scopes_invalidations;

	if (scopes_cxt == NULL)
		scopes_cxt = AllocSetContextCreate(CacheMemoryContext,
										   "payments idempotency scopes",
										   ALLOCSET_SMALL_SIZES);
	scopes_hash = NULL;
	scopes_count = 0;
	MemoryContextReset(scopes_cxt);
	ctl.keysize = SCOPE_MAX_BYTES + 1;
	ctl.entrysize = sizeof(ScopeEntry);
	ctl.hcxt = scopes_cxt;
	scopes_hash = hash_create("payments idempotency scopes", 16, &ctl,
							  HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	tupdesc = RelationGetDescr(rel);
	payments_check_columns(rel, names, types, 2, attnums);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d;
		text	   *scope;
		int			len;
		char		name[SCOPE_MAX_BYTES + 1];
		ArrayType  *roles;
		Datum	   *elems;
		bool	   *elemnulls;
		int			nelems;
		ScopeEntry *e;

		d = heap_getattr(tup, attnums[0], tupdesc, &isnull);
		if (isnull)
			continue;
		scope = DatumGetTextPP(d);
		len = VARSIZE_ANY_EXHDR(scope);
		/* no call can name a longer scope, so it restricts nothing */
		if (len > SCOPE_MAX_BYTES)
			continue;
		memcpy(name, VARDATA_ANY(scope), len);
		name[len] = '\0';

		/* a row without roles (written by hand) admits superusers only */
		nelems = 0;
		elems = NULL;
		elemnulls = NULL;
		d = heap_getattr(tup, attnums[1], tupdesc, &isnull);
		if (!isnull)
		{
			roles = DatumGetArrayTypeP(d);
			deconstruct_array(roles, REGROLEOID, sizeof(Oid), true,
							  TYPALIGN_INT, &elems, &elemnulls, &nelems);
		}

		e = hash_search(scopes_hash, name, HASH_ENTER, NULL);
		e->nroles = 0;
		e->roles = MemoryContextAlloc(scopes_cxt, sizeof(Oid) * Max(nelems, 1));
		for (int i = 0; i < nelems; i++)
			if (!elemnulls[i])
				e->roles[e->nroles++] = DatumGetObjectId(elems[i]);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	table_close(rel, AccessShareLock);

	scopes_count = hash_get_num_entries(scopes_hash);
	scopes_valid = (invalidations == scopes_invalidations);
}

/*
 * Refuse the call unless the scope is unrestricted or the caller's role
 * has the privileges of one of the roles it is restricted to.
 */
static void
check_scope_rights(text *scope)
{
	char		name[SCOPE_MAX_BYTES + 1];
	int			len = VARSIZE_ANY_EXHDR(scope);
	ScopeEntry *e;
	Oid			user;

	if (!scopes_valid)
		load_scopes();
	if (scopes_count == 0)
		return;

	memcpy(name, VARDATA_ANY(scope), len);
	name[len] = '\0';
	e = hash_search(scopes_hash, name, HASH_FIND, NULL);
	if (e == NULL)
		return;

	user = GetUserId();
	for (int i = 0; i < e->nroles; i++)
		if (has_privs_of_role(user, e->roles[i]))
			return;

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for idempotency scope \"%s\"", name),
			 errdetail("The scope is restricted to certain roles, and role \"%s\" is not a member of any of them.",
					   GetUserNameFromId(user, false)),
			 errhint("An operator can grant one of those roles, or change the restriction with payments.restrict_scope.")));
}

/*
 * Check the scope and key arguments, and the caller's right to use the
 * scope, before anything is read or written.
 */
static void
check_scope_key(FunctionCallInfo fcinfo, text **scope, text **key)
{
	*scope = payments_arg_text(fcinfo, 0, "idempotency scope", SCOPE_MAX_BYTES);
	*key = payments_arg_text(fcinfo, 1, "idempotency key", KEY_MAX_BYTES);
	check_scope_rights(*scope);
}

/*
 * payments.idempotency_begin(scope, key, request, ttl), once the key is
 * entered (citus_shards.c)
 */
static Datum
idempotency_begin(FunctionCallInfo fcinfo, text *scope, text *key)
{
	Datum		ttl;
	unsigned char fingerprint[PAYMENTS_FINGERPRINT_LEN];
	bytea	   *hash;
	KeyRow		row;
	const char *outcome;
	MemoryContext callcxt = CurrentMemoryContext;
	PaymentsSavedUser saved;

	payments_arg_not_null(fcinfo, 2, "request");
	ttl = payments_arg_interval(fcinfo, 3, "idempotency key TTL", IDEMPOTENCY_TTL_MAX_USECS);
	payments_check_not_in_recovery();

	payments_jsonb_fingerprint(PG_GETARG_DATUM(2), fingerprint);

	/* The replay path: a completed key is immutable until it expires. */
	lookup_key(scope, key, fingerprint, &row, callcxt);
	if (row.found && !row.expired)
	{
		if (!row.hash_matches)
			report_key_reused(scope, key);
		if (row.completed)
		{
			row.recovery_point = NULL;
			PG_RETURN_DATUM(begin_result(fcinfo, "replayed", &row));
		}
	}

	lock_key(scope, key);
	(void) PAYMENTS_FAULT(FAULT_IDEMPOTENCY_BEGIN);
	hash = fingerprint_bytea(fingerprint);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();

	/* A new key: the common write path is one INSERT. */
	if (!row.found && insert_key(scope, key, hash, ttl))
	{
		SPI_finish();
		payments_end_as_owner(&saved);
		PG_RETURN_DATUM(begin_result(fcinfo, "started", NULL));
	}

	/* Decide again from what is committed now that we hold the lock. */
	lookup_key(scope, key, fingerprint, &row, callcxt);
	if (!row.found)
	{
		if (!insert_key(scope, key, hash, ttl))
			elog(ERROR, "idempotency key vanished while locked");
		outcome = "started";
	}
	else if (row.expired)
	{
		/* a concurrent purge may have deleted it meanwhile */
		if (!restart_key(scope, key, hash, ttl) &&
			!insert_key(scope, key, hash, ttl))
			elog(ERROR, "expired idempotency key changed while locked");
		outcome = "started";
	}
	else if (!row.hash_matches)
		report_key_reused(scope, key);
	else if (row.completed)
	{
		row.recovery_point = NULL;
		outcome = "replayed";
	}
	else if (!row.lease_expired)
		ereport(ERROR,
				(errcode(ERRCODE_PM_IDEMPOTENCY_IN_PROGRESS),
				 errmsg("idempotency key \"%s\" is in use by another flow",
						text_to_cstring(key)),
				 errdetail("A flow in scope \"%s\" holds this key until its lease expires at %s.",
						   text_to_cstring(scope),
						   timestamptz_to_str(row.lease_expires_at)),
				 errhint("Retry the request after the lease has expired.")));
	else
	{
		take_over_key(scope, key);
		outcome = "recovering";
	}

	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_DATUM(begin_result(fcinfo, outcome,
								 strcmp(outcome, "started") == 0 ? NULL : &row));
}

/*
 * payments.idempotency_begin(scope, key, request, ttl)
 */
Datum
payments_idempotency_begin(PG_FUNCTION_ARGS)
{
	text	   *scope;
	text	   *key;
	PaymentsShardContext shard;
	Datum		result;

	check_scope_key(fcinfo, &scope, &key);
	shard = payments_shard_enter(key, "idempotency key");
	result = idempotency_begin(fcinfo, scope, key);
	payments_shard_leave(shard);
	return result;
}

/* The changes a started key can undergo */
typedef enum KeyChange
{
	KEY_CHECKPOINT,
	KEY_COMPLETE,
	KEY_ABANDON
} KeyChange;

/*
 * Explain why an UPDATE or DELETE of a started key found nothing: the key
 * was never begun (or has been purged), or it has completed.
 */
static void
report_not_started(text *scope, text *key, KeyChange change)
{
	KeyRow		row;
	char	   *keyname = text_to_cstring(key);

	lookup_key(scope, key, NULL, &row, CurrentMemoryContext);
	if (!row.found)
		ereport(ERROR,
				(errcode(ERRCODE_PM_IDEMPOTENCY_KEY_NOT_FOUND),
				 errmsg("idempotency key \"%s\" does not exist in scope \"%s\"",
						text_to_cstring(key), text_to_cstring(scope)),
				 errhint("Call payments.idempotency_begin first; expired keys are purged.")));
	ereport(ERROR,
			(errcode(ERRCODE_PM_IDEMPOTENCY_KEY_COMPLETED),
			 change == KEY_CHECKPOINT ?
			 errmsg("cannot checkpoint idempotency key \"%s\"", keyname) :
			 change == KEY_COMPLETE ?
			 errmsg("cannot complete idempotency key \"%s\"", keyname) :
			 errmsg("cannot abandon idempotency key \"%s\"", keyname),
			 errdetail("The key has already completed in scope \"%s\"; its response is final.",
					   text_to_cstring(scope))));
}

/*
 * Change a started key with one statement, under the key's lock, as the
 * owner of the function called (fcinfo's); values[0] and values[1] are
 * filled with the scope and key.  If the statement finds no started key,
 * say why.
 */
static void
change_started_key(FunctionCallInfo fcinfo, text *scope, text *key,
				   KeyChange change, SPIPlanPtr *plan, const char *sql,
				   int nargs, const Oid *argtypes, Datum *values, int expected)
{
	PaymentsSavedUser saved;
	PaymentsShardContext shard;

	shard = payments_shard_enter(key, "idempotency key");
	lock_key(scope, key);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(plan, sql, nargs, argtypes);
	values[0] = PointerGetDatum(scope);
	values[1] = PointerGetDatum(key);
	if (payments_execute(*plan, values, NULL, expected, 0) == 0)
		report_not_started(scope, key, change);
	SPI_finish();
	payments_end_as_owner(&saved);
	payments_shard_leave(shard);
}

/*
 * payments.idempotency_checkpoint(scope, key, recovery_point)
 */
Datum
payments_idempotency_checkpoint(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, TEXTOID, INT4OID};
	text	   *scope;
	text	   *key;
	Datum		values[4];

	check_scope_key(fcinfo, &scope, &key);
	values[2] = PointerGetDatum(payments_arg_text(fcinfo, 2, "recovery point",
												  RECOVERY_POINT_MAX_BYTES));
	payments_check_not_in_recovery();

	values[3] = Int32GetDatum(idempotency_lease);
	change_started_key(fcinfo, scope, key, KEY_CHECKPOINT, &checkpoint_plan,
					   "UPDATE @extschema@.idempotency_keys"
					   " SET recovery_point = $3, updated_at = now(),"
					   "  lease_expires_at = clock_timestamp() + $4 * interval '1 second'"
					   " WHERE scope = $1 AND key = $2 AND state = 'started'",
					   4, argtypes, values, SPI_OK_UPDATE);
	PG_RETURN_VOID();
}

/*
 * payments.idempotency_complete(scope, key, response, response_code)
 */
Datum
payments_idempotency_complete(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, JSONBOID, INT4OID};
	text	   *scope;
	text	   *key;
	Datum		values[4];

	check_scope_key(fcinfo, &scope, &key);
	payments_arg_not_null(fcinfo, 2, "response");
	values[3] = Int32GetDatum(payments_arg_int_range(fcinfo, 3, "response code",
													 100, 599));
	payments_check_not_in_recovery();

	values[2] = PG_GETARG_DATUM(2);
	(void) PAYMENTS_FAULT(FAULT_IDEMPOTENCY_COMPLETE);
	change_started_key(fcinfo, scope, key, KEY_COMPLETE, &complete_plan,
					   "UPDATE @extschema@.idempotency_keys"
					   " SET state = 'completed', response = $3, response_code = $4,"
					   "  lease_expires_at = NULL, completed_at = now(), updated_at = now()"
					   " WHERE scope = $1 AND key = $2 AND state = 'started'",
					   4, argtypes, values, SPI_OK_UPDATE);
	PG_RETURN_VOID();
}

/*
 * payments.idempotency_abandon(scope, key)
 *
 * A completed key cannot be abandoned: its stored answer may already have
 * been replayed to the client, and forgetting it would let a retry charge
 * again.
 */
Datum
payments_idempotency_abandon(PG_FUNCTION_ARGS)
{
	text	   *scope;
	text	   *key;
	Datum		values[2];

	check_scope_key(fcinfo, &scope, &key);
	payments_check_not_in_recovery();

	change_started_key(fcinfo, scope, key, KEY_ABANDON, &abandon_plan,
					   "DELETE FROM @extschema@.idempotency_keys"
					   " WHERE scope = $1 AND key = $2 AND state = 'started'",
					   2, key_argtypes, values, SPI_OK_DELETE);
	PG_RETURN_VOID();
}

static int32
purge_keys(int32 max_rows, void *arg)
{
	static const Oid argtypes[] = {INT4OID, TIMESTAMPTZOID};
	Datum		values[2];
	uint64		n;

	values[0] = Int32GetDatum(max_rows);
	values[1] = TimestampTzGetDatum(*(TimestampTz *) arg);
	SPI_connect();
	payments_prepare(&purge_plan,
					 "DELETE FROM @extschema@.idempotency_keys k"
					 " WHERE k.ctid = ANY (ARRAY("
					 "  SELECT ctid FROM @extschema@.idempotency_keys"
					 "  WHERE expires_at <= $2"
					 "   AND (lease_expires_at IS NULL OR lease_expires_at <= $2)"
					 "  ORDER BY expires_at LIMIT $1"
					 "  FOR UPDATE SKIP LOCKED))"
					 " AND k.expires_at <= $2"
					 " AND (k.lease_expires_at IS NULL OR k.lease_expires_at <= $2)",
					 2, argtypes);
	n = payments_execute(purge_plan, values, NULL, SPI_OK_DELETE, 0);
	SPI_finish();
	return (int32) n;
}

/*
 * payments.purge_idempotency_keys(max_rows)
 *
 * Deletes up to max_rows expired keys, oldest first; a started key whose
 * lease still runs is not expired, whatever its TTL.  Rows locked by a
 * transaction that is reusing an expired key are skipped, not waited for,
 * so a purge never blocks a request.  While the tables are distributed, of
 * the shards this node holds.
 */
Datum
payments_purge_idempotency_keys(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows",
												  1, PG_INT32_MAX);
	TimestampTz now;

	payments_check_not_in_recovery();

	/*
	 * The time is a parameter, not clock_timestamp(), so that it bounds the
	 * index scan on expires_at instead of filtering every key.
	 */
	now = GetCurrentTimestamp();
	PG_RETURN_INT32(payments_shard_batches(max_rows, purge_keys, &now));
}

/*
 * payments.restrict_scope(scope, roles)
 *
 * From now on only members of roles (and superusers) may use the scope's
 * keys; calling it again replaces the list.  EXECUTE on it is the right to
 * restrict: it is granted to no application role, since a role that could
 * restrict any scope could lock every other role out of theirs.
 */
Datum
payments_restrict_scope(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, REGROLEARRAYOID};
	Datum		values[2];
	ArrayType  *roles;
	Datum	   *elems;
	bool	   *nulls;
	int			n;

	values[0] = PointerGetDatum(payments_arg_text(fcinfo, 0, "idempotency scope",
												  SCOPE_MAX_BYTES));
	payments_arg_not_null(fcinfo, 1, "roles");
	roles = PG_GETARG_ARRAYTYPE_P(1);
	if (ARR_NDIM(roles) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("roles must be a one-dimensional array")));
	deconstruct_array(roles, REGROLEOID, sizeof(Oid), true, TYPALIGN_INT,
					  &elems, &nulls, &n);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("roles must not be empty"),
				 errhint("To share the scope with every role again, call payments.unrestrict_scope.")));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("roles must not contain nulls")));
		if (!SearchSysCacheExists1(AUTHOID, elems[i]))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("role with OID %u does not exist",
							DatumGetObjectId(elems[i]))));
	}
	values[1] = PointerGetDatum(roles);
	payments_check_not_in_recovery();

	/* The table's trigger makes every backend reload its restrictions. */
	SPI_connect();
	payments_prepare(&restrict_plan,
					 "INSERT INTO @extschema@.idempotency_scopes AS s"
					 " (scope, roles) VALUES ($1, $2)"
					 " ON CONFLICT (scope) DO UPDATE"
					 " SET roles = excluded.roles,"
					 "  restricted_at = excluded.restricted_at,"
					 "  restricted_by = excluded.restricted_by",
					 2, argtypes);
	payments_execute(restrict_plan, values, NULL, SPI_OK_INSERT, 0);
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * payments.unrestrict_scope(scope): the scope is shared by every role
 * again.  Returns false if it was not restricted.
 */
Datum
payments_unrestrict_scope(PG_FUNCTION_ARGS)
{
	Datum		values[1];
	uint64		n;

	values[0] = PointerGetDatum(payments_arg_text(fcinfo, 0, "idempotency scope",
												  SCOPE_MAX_BYTES));
	payments_check_not_in_recovery();

	SPI_connect();
	payments_prepare(&unrestrict_plan,
					 "DELETE FROM @extschema@.idempotency_scopes WHERE scope = $1",
					 1, (Oid[]) {TEXTOID});
	n = payments_execute(unrestrict_plan, values, NULL, SPI_OK_DELETE, 0);
	SPI_finish();
	PG_RETURN_BOOL(n > 0);
}

/*
 * Statement trigger on payments.idempotency_scopes: whatever changed it
 * (the functions above, an operator's own UPDATE, a restore's COPY), every
 * backend reloads the restrictions when the change commits, and this one
 * at its next command.
 */
Datum
payments_idempotency_scopes_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function payments.idempotency_scopes_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}
