/*-------------------------------------------------------------------------
 *
 * check_run.c
 *	  Runs of user checks: the worker's task that queues the due ones, the
 *	  handler that runs one as its owner, and what a run records.
 *
 * A due check is run through the compensation queue: the worker's task
 * queue_due_checks queues payments.run_check({"check": name}) as the
 * check's owner, once per period (it moves the check's next run in the
 * same transaction, under the check's row lock), and the
 * queue runs it like any handler, as that role, within
 * payments.handler_timeout, in a subtransaction whose locks, settings and
 * cursors go with it.  A check is thus never run with more rights than its
 * owner has, cannot stop another role's check, and a crash in the middle
 * of one is counted like any interrupted handler.
 *
 * The handler runs the query read-only in a subtransaction of its own,
 * always rolled back, with payments.check_timeout: a query that fails or
 * runs out of time is recorded as the check's last error, and the run
 * itself succeeds.  Then, as the extension's owner, it records what the
 * query found: a violation first seen opens a row of check_results, one
 * seen again moves its last_seen, one no longer found is cleared.  A check
 * with a heal queues the heal once per object (a violation of an object
 * healed before keeps that heal), as the owner; a violation that is still found after its
 * heal has run is escalated from warning to error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "check.h"
#include "citus_shards.h"
#include "payments.h"
#include "args.h"
#include "compensation.h"
#include "extension_catalog.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "commands/extension.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_func.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_run_check);
PG_FUNCTION_INFO_V1(payments_queue_due_checks);

/* Whether the heal queued for the result r has run its course */
#define HEAL_SETTLED_SQL \
	"coalesce(@extschema@.compensation_status(r.heal_id)" \
	" IN ('succeeded', 'dead', 'cancelled'), false)"

/* The most violations one run records; the rest wait for the next runs */
#define CHECK_MAX_VIOLATIONS	1000

static int	check_timeout = 60 * 1000;
static TimeoutId check_timeout_id = MAX_TIMEOUTS;
static volatile sig_atomic_t check_timed_out = false;

static SPIPlanPtr due_plan;
static SPIPlanPtr scheduled_plan;
static SPIPlanPtr query_plan;
static SPIPlanPtr ran_plan;
static SPIPlanPtr seen_plan;
static SPIPlanPtr clear_plan;
static SPIPlanPtr healed_before_plan;
static SPIPlanPtr unhealed_plan;
static SPIPlanPtr healing_plan;

void
check_init(void)
{
	DefineCustomIntVariable("payments.check_timeout",
							gettext_noop("How long one run of a user check's query may take."),
							gettext_noop("A query that runs longer is cancelled and recorded as the check's last error."),
							&check_timeout,
							60 * 1000,
							1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/*
 * The timeout cancels the query as a cancel request would, without a
 * signal, so that the compensation runner does not take it for a cancel
 * of its own.
 */
static void
check_timeout_fired(void)
{
	check_timed_out = true;
	InterruptPending = true;
	QueryCancelPending = true;
	SetLatch(MyLatch);
}

/* What one run of a check found */
typedef struct CheckFindings
{
	int			n;
	Datum	   *objects;		/* text */
	Datum	   *details;		/* text */
	char	   *error;			/* NULL if the query ran */
} CheckFindings;

/*
 * Run query as the current role, read-only, within payments.check_timeout,
 * in a subtransaction that is always rolled back; its rows (at most
 * CHECK_MAX_VIOLATIONS) or its error go into *found, in the caller's
 * memory context.  A cancel that is not the timeout's is re-thrown.
 */
static void
run_query(const char *query, CheckFindings *found)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	memset(found, 0, sizeof(CheckFindings));
	if (check_timeout_id == MAX_TIMEOUTS)
		check_timeout_id = RegisterTimeout(USER_TIMEOUT, check_timeout_fired);
	check_timed_out = false;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		char	   *sql = check_wrapped_query(query,
											  psprintf("LIMIT %d", CHECK_MAX_VIOLATIONS));

		check_begin_read_only();
		SPI_connect();
		enable_timeout_after(check_timeout_id, check_timeout);
		if (SPI_execute(sql, true, 0) != SPI_OK_SELECT ||
			SPI_tuptable->tupdesc->natts != 2)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the check query no longer returns two columns")));
		disable_timeout(check_timeout_id, false);

		found->n = (int) SPI_processed;
		found->objects = MemoryContextAlloc(cxt, sizeof(Datum) * Max(found->n, 1));
		found->details = MemoryContextAlloc(cxt, sizeof(Datum) * Max(found->n, 1));
		for (int i = 0; i < found->n; i++)
		{
			char	   *object = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1);
			char	   *detail = SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2);
			MemoryContext old = MemoryContextSwitchTo(cxt);

			found->objects[i] = CStringGetTextDatum(object ? object : "");
			found->details[i] = CStringGetTextDatum(detail ? detail : "");
			MemoryContextSwitchTo(old);
		}
		SPI_finish();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		disable_timeout(check_timeout_id, false);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED && check_timed_out)
			found->error = psprintf("the check query ran past payments.check_timeout (%d ms)",
									check_timeout);
		else if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
				 edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN)
			ReThrowError(edata);
		else
			found->error = psprintf("%s (SQLSTATE %s)", edata->message,
									unpack_sql_state(edata->sqlerrcode));
		found->n = 0;
	}
	PG_END_TRY();
}

/*
 * Heal every open violation of the check that has no heal yet, as the
 * check's owner: an object healed before, by an earlier violation of the
 * same check, keeps that heal (an object is healed once), the others get
 * one queued now.  Dedup keys are not used: they are shared by every role
 * that may run the handler, so another role could take one first.  The
 * caller is connected to SPI, as the extension's owner.
 */
static void
queue_heals(Datum *key, const char *heal, Oid heal_owner, Oid owner,
			Oid tables_owner)
{
	Oid			handler = compensation_resolve_handler(heal, heal_owner);
	SPITupleTable *open;
	uint64		n;

	payments_prepare(&healed_before_plan,
					 "UPDATE @extschema@.check_results r SET heal_id = p.heal_id"
					 " FROM (SELECT DISTINCT ON (object) object, heal_id"
					 "        FROM @extschema@.check_results"
					 "       WHERE owner = $1::regrole AND check_name = $2 AND heal_id IS NOT NULL"
					 "       ORDER BY object, id DESC) p"
					 " WHERE r.owner = $1::regrole AND r.check_name = $2"
					 "  AND r.cleared_at IS NULL AND r.heal_id IS NULL AND r.object = p.object",
					 2, (Oid[]) {OIDOID, TEXTOID});
	payments_prepare(&unhealed_plan,
					 "SELECT id, jsonb_build_object('check', check_name, 'object', object,"
					 "  'detail', detail)"
					 " FROM @extschema@.check_results"
					 " WHERE owner = $1::regrole AND check_name = $2"
					 "  AND cleared_at IS NULL AND heal_id IS NULL",
					 2, (Oid[]) {OIDOID, TEXTOID});
	payments_prepare(&healing_plan,
					 "UPDATE @extschema@.check_results SET heal_id = $2 WHERE id = $1",
					 2, (Oid[]) {INT8OID, INT8OID});
	payments_execute(healed_before_plan, key, NULL, SPI_OK_UPDATE, 0);
	n = payments_execute(unhealed_plan, key, NULL, SPI_OK_SELECT, 0);
	open = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		values[2];

		values[0] = SPI_getbinval(open->vals[i], open->tupdesc, 1, &isnull);
		values[1] = Int64GetDatum(compensation_enqueue(handler,
													   SPI_getbinval(open->vals[i], open->tupdesc, 2, &isnull),
													   NULL, 0, GetCurrentTimestamp(), 0,
													   owner, tables_owner));
		payments_execute(healing_plan, values, NULL, SPI_OK_UPDATE, 0);
	}
}

/*
 * Record a run of the check key (owner, name): its error, or its findings
 * and the heals they need.  The caller is connected to SPI, as the
 * extension's owner.
 */
static void
record_run(Datum *key, CheckFindings *found, Oid tables_owner)
{
	Datum		values[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	bool		isnull;
	char	   *heal;
	Oid			heal_owner;
	Datum		objects;
	Datum		details;

	values[0] = key[0];
	values[1] = key[1];
	if (found->error != NULL)
		values[2] = CStringGetTextDatum(found->error);
	else
		nulls[2] = 'n';
	values[3] = Int32GetDatum(found->n);
	payments_prepare(&ran_plan,
					 "UPDATE @extschema@.checks"
					 " SET last_run_at = clock_timestamp(), last_error = $3,"
					 "  last_violations = CASE WHEN $3 IS NULL THEN $4 ELSE last_violations END"
					 " WHERE owner = $1::regrole AND name = $2"
					 " RETURNING heal, heal_owner::oid",
					 4, (Oid[]) {OIDOID, TEXTOID, TEXTOID, INT4OID});
	if (payments_execute(ran_plan, values, nulls, SPI_OK_UPDATE_RETURNING, 0) == 0)
		return;					/* dropped meanwhile */
	heal = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	heal_owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 2, &isnull));
	if (found->error != NULL)
		return;

	objects = PointerGetDatum(construct_array(found->objects, found->n, TEXTOID,
											  -1, false, TYPALIGN_INT));
	details = PointerGetDatum(construct_array(found->details, found->n, TEXTOID,
											  -1, false, TYPALIGN_INT));
	values[2] = objects;
	values[3] = details;

	/*
	 * Seen again after its heal has settled, a violation is escalated: the
	 * heal ran and the invariant still does not hold.
	 */
	payments_prepare(&seen_plan,
					 "INSERT INTO @extschema@.check_results AS r"
					 " (owner, check_name, object, detail, first_seen, last_seen)"
					 " SELECT DISTINCT ON (u.o) $1::regrole, $2, u.o, u.d, now(), now()"
					 "  FROM unnest($3::text[], $4::text[]) AS u(o, d) ORDER BY u.o"
					 " ON CONFLICT (owner, check_name, object) WHERE cleared_at IS NULL"
					 " DO UPDATE SET last_seen = excluded.last_seen, detail = excluded.detail,"
					 "  severity = CASE WHEN " HEAL_SETTLED_SQL " THEN 'error' ELSE r.severity END,"
					 "  escalated_at = CASE WHEN r.escalated_at IS NULL AND " HEAL_SETTLED_SQL
					 "   THEN now() ELSE r.escalated_at END",
					 4, (Oid[]) {OIDOID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID});
	payments_execute(seen_plan, values, NULL, SPI_OK_INSERT, 0);
	payments_prepare(&clear_plan,
					 "UPDATE @extschema@.check_results SET cleared_at = now()"
					 " WHERE owner = $1::regrole AND check_name = $2 AND cleared_at IS NULL"
					 "  AND object <> ALL ($3::text[])",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTARRAYOID});
	payments_execute(clear_plan, values, NULL, SPI_OK_UPDATE, 0);

	if (heal != NULL)
		queue_heals(key, heal, heal_owner, DatumGetObjectId(key[0]), tables_owner);
}

/*
 * payments.run_check({"check": name}): run the calling role's check now and
 * record what it finds.  Queued by queue_due_checks as the check's owner;
 * a role may also call it for its own checks.
 */
Datum
payments_run_check(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	Jsonb	   *payload;
	JsonbValue *name;
	Datum		key[2];
	char	   *query;
	CheckFindings found;
	PaymentsSavedUser saved;

	payments_arg_not_null(fcinfo, 0, "payload");
	payload = PG_GETARG_JSONB_P(0);
	name = getKeyJsonValueFromContainer(&payload->root, "check", 5, NULL);
	if (name == NULL || name->type != jbvString ||
		name->val.string.len < 1 || name->val.string.len > CHECK_NAME_MAX_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("payload must name a check"),
				 errdetail("The payload of payments.run_check is {\"check\": \"name of the check\"}.")));
	payments_check_not_in_recovery();
	key[0] = ObjectIdGetDatum(GetUserId());
	key[1] = PointerGetDatum(cstring_to_text_with_len(name->val.string.val,
													  name->val.string.len));

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	payments_prepare(&query_plan,
					 "SELECT query FROM @extschema@.checks"
					 " WHERE owner = $1::regrole AND name = $2",
					 2, (Oid[]) {OIDOID, TEXTOID});
	if (payments_execute(query_plan, key, NULL, SPI_OK_SELECT, 0) == 0)
	{
		/* dropped since it was queued: nothing to run */
		SPI_finish();
		payments_end_as_owner(&saved);
		PG_RETURN_VOID();
	}
	query = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	SPI_finish();
	payments_end_as_owner(&saved);

	/* As the caller, the check's owner */
	run_query(query, &found);

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	record_run(key, &found, tables_owner);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}

/*
 * The OID of payments.run_check(jsonb), in the extension's schema, and a
 * member of the extension (as the worker checks its tasks), so that no
 * function someone else created there can stand in for it.
 */
static Oid
run_check_oid(void)
{
	Oid			argtypes[1] = {JSONBOID};
	Oid			fn;

	fn = LookupFuncName(list_make2(makeString(get_namespace_name(payments_schema_oid())),
								   makeString("run_check")),
						1, argtypes, false);
	if (getExtensionOfObject(ProcedureRelationId, fn) != get_extension_oid("payments", false))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("function %s does not belong to extension \"payments\"",
						format_procedure(fn)),
				 errhint("Reinstall the extension.")));
	return fn;
}

/*
 * payments.queue_due_checks(max_checks): the worker's task.  Each due
 * check gets one run queued as its owner, and its next run is set one
 * interval on.  A check whose run cannot be queued (its owner may no
 * longer execute run_check) records why.
 */
Datum
payments_queue_due_checks(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	int32		max_checks = payments_arg_int_range(fcinfo, 0, "max_checks", 1, 100000);
	Oid			handler = run_check_oid();
	Datum		values[1];
	SPITupleTable *due;
	uint64		n;

	payments_check_not_in_recovery();
	/* their runs would be items on other nodes (see define_check): none */
	if (payments_shards_distributed())
		PG_RETURN_INT32(0);
	values[0] = Int32GetDatum(max_checks);
	SPI_connect();
	payments_prepare(&due_plan,
					 "SELECT owner::oid, name, jsonb_build_object('check', name)"
					 " FROM @extschema@.checks"
					 " WHERE next_run_at <= clock_timestamp()"
					 " ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED",
					 1, (Oid[]) {INT4OID});
	payments_prepare(&scheduled_plan,
					 "UPDATE @extschema@.checks"
					 " SET next_run_at = greatest(next_run_at + every, clock_timestamp()),"
					 "  last_error = coalesce($3, last_error)"
					 " WHERE owner = $1::regrole AND name = $2",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTOID});
	n = payments_execute(due_plan, values, NULL, SPI_OK_SELECT, 0);
	due = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Oid			owner = DatumGetObjectId(SPI_getbinval(due->vals[i], due->tupdesc, 1, &isnull));
		char	   *name = SPI_getvalue(due->vals[i], due->tupdesc, 2);
		Datum		payload = SPI_getbinval(due->vals[i], due->tupdesc, 3, &isnull);
		Datum		key[3];
		char		nulls[3] = {' ', ' ', 'n'};

		CHECK_FOR_INTERRUPTS();

		/* A role that lost its rights gets its reason on the check. */
		if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(owner)) ||
			pg_namespace_aclcheck(get_func_namespace(handler), owner, ACL_USAGE) != ACLCHECK_OK ||
			pg_proc_aclcheck(handler, owner, ACL_EXECUTE) != ACLCHECK_OK)
		{
			key[2] = CStringGetTextDatum("the check's role may no longer run payments.run_check: grant it payments_app");
			nulls[2] = ' ';
		}
		else
			(void) compensation_enqueue(handler, payload, NULL, 1,
										GetCurrentTimestamp(), 0, owner,
										tables_owner);
		key[0] = ObjectIdGetDatum(owner);
		key[1] = CStringGetTextDatum(name);
		payments_execute(scheduled_plan, key, nulls, SPI_OK_UPDATE, 0);
	}
	SPI_finish();
	PG_RETURN_INT32((int32) n);
}
