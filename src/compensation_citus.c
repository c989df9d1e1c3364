/*-------------------------------------------------------------------------
 *
 * compensation_citus.c
 *	  Where a call on the compensation queue runs once payments.distribute()
 *	  has distributed the queue by flow: on the node of the flow's shard.
 *
 * An item's flow (src/sql/50_compensation.sql) keeps its chain, and the
 * items of one dedup key, on one shard, so every statement of
 * compensation.c, which reads an item together with the items before and
 * after it, runs there on the shard as on a plain local table
 * (citus_shards.c).  A call made on a node without that shard (the
 * coordinator holds none) calls a function *_on_shard, which
 * payments.distribute() made a distributed function by the flow, with
 * every argument a constant (payments_execute_delegated): Citus sends the
 * call to the node of the flow's shard inside the caller's transaction,
 * as a write that commits or aborts with it (two-phase commit if the
 * transaction wrote on more than one node).  A query on the table with
 * the call in its target list would be routed there too, but Citus takes
 * it for a read and, outside a transaction block, commits it on its own.
 *
 * The *_on_shard functions act for the role named in their arguments, so
 * only the extension's owner may call them: EXECUTE is revoked from
 * PUBLIC, they check their caller again, and this file runs them as that
 * owner.  The role's rights are checked where the call runs, as they are
 * without Citus.
 *
 * Claims (claim_compensations) go to every shard in turn, from one chosen
 * at random, up to the number asked for: items are claimed in due order
 * within a shard, and a shard on another node hands back at most
 * CLAIM_ROUTED_MAX_BYTES of payloads (by payments.max_payload_size).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "compensation.h"
#include "citus_shards.h"
#include "payments.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_enqueue_compensation_on_shard);
PG_FUNCTION_INFO_V1(payments_change_compensation_on_shard);
PG_FUNCTION_INFO_V1(payments_claim_compensations_on_shard);

/* The payloads one claim on another node's shard may hand back, at most */
#define CLAIM_ROUTED_MAX_BYTES	(256 * 1024 * 1024)

static const char *const change_names[] = {
	[COMPENSATION_RETRY] = "retry",
	[COMPENSATION_CANCEL] = "cancel",
	[COMPENSATION_COMPLETE] = "complete",
	[COMPENSATION_FAIL] = "fail",
	[COMPENSATION_CANCEL_PENDING] = "cancel pending",
	[COMPENSATION_ACCEPT] = "accept",
};

/*
 * The flow of item id, read over every shard (an index on each) as the
 * tables' owner, once caller's rights on the item are judged here as the
 * item's node would judge them (compensation_judge_item_rights; executor
 * for a completion or failure report): a call that would be refused is
 * refused before it is sent anywhere, so where an id would be sent tells
 * nothing about it.  caller InvalidOid is the extension itself, which may
 * change any item; it gets NULL for an id that does not exist.  The roles
 * are read by name: each node has OIDs of its own for them.
 */
text *
compensation_flow_of(int64 id, Oid caller, bool executor, Oid tables_owner)
{
	static const Oid argtypes[] = {INT8OID};
	Datum		values[1] = {Int64GetDatum(id)};
	PaymentsSavedUser saved;
	text	   *flow = NULL;
	Oid			enqueued_by = InvalidOid;
	Oid			claimed_by = InvalidOid;
	bool		found;

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	found = payments_execute_citus("SELECT flow, pg_catalog.pg_get_userbyid(enqueued_by),"
								   " pg_catalog.pg_get_userbyid(claimed_by)"
								   " FROM @extschema@.compensations WHERE id = $1",
								   1, argtypes, values, NULL, SPI_OK_SELECT) > 0;
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *name;
		bool		isnull;

		flow = (text *) SPI_datumTransfer(SPI_getbinval(tup, desc, 1, &isnull),
										  false, -1);
		if ((name = SPI_getvalue(tup, desc, 2)) != NULL)
			enqueued_by = get_role_oid(name, true);
		if ((name = SPI_getvalue(tup, desc, 3)) != NULL)
			claimed_by = get_role_oid(name, true);
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	if (OidIsValid(caller))
		compensation_judge_item_rights(id, caller, executor, found, enqueued_by,
									   claimed_by);
	return flow;
}

/*
 * The id and flow (*flow) of an item caller queues, distributed: its flow
 * is the flow of the item it comes after (which caller must be allowed to
 * queue after), else its dedup key, else its id.  A dedup key stays unique
 * only within its flow, so an item that comes after another cannot have
 * one.
 */
int64
compensation_route(int64 after, text *dedup_key, Oid caller, Oid tables_owner,
				   text **flow)
{
	text	   *after_flow = NULL;
	PaymentsSavedUser saved;
	int64		id;

	if (after != 0 && dedup_key != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("a compensation queued after another cannot have a dedup key while the queue is distributed"),
				 errdetail("payments.distribute() keeps a chain on the shard of its first item, and a dedup key unique on the shard it names."),
				 errhint("Queue the first item of the chain with the dedup key.")));
	if (after != 0)
		after_flow = compensation_flow_of(after, caller, false, tables_owner);
	payments_begin_as_owner(tables_owner, true, &saved);
	id = compensation_new_item(after_flow, dedup_key, flow);
	payments_end_as_owner(&saved);
	return id;
}

/*
 * Refuse a caller of an *_on_shard function that is not the extension's
 * owner, and null arguments among the first nargs; returns the owner.
 */
static Oid
check_routed_call(FunctionCallInfo fcinfo, int nargs)
{
	Oid			owner = payments_function_owner(fcinfo->flinfo->fn_oid);

	if (!has_privs_of_role(GetUserId(), owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s",
						get_func_name(fcinfo->flinfo->fn_oid)),
				 errdetail("Only the owner of extension \"payments\" calls it, to run a call on the node of a compensation's shard.")));
	for (int i = 0; i < nargs; i++)
		if (PG_ARGISNULL(i))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("argument %d of %s cannot be null", i + 1,
							get_func_name(fcinfo->flinfo->fn_oid))));
	return owner;
}

/*
 * Call fn(...) on the node of its flow's shard (payments_execute_delegated)
 * as the tables' owner; its one result, in the caller's memory context,
 * NULL if it is NULL.
 */
static Datum
call_on_shard(const char *fn, int nargs, const Oid *argtypes, Datum *values,
			  const char *nulls, Oid tables_owner, bool *isnull)
{
	PaymentsSavedUser saved;
	Datum		result;

	payments_begin_as_owner(tables_owner, true, &saved);
	SPI_connect();
	payments_execute_delegated(fn, nargs, argtypes, values, nulls);
	result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, isnull);
	if (!*isnull)
	{
		Form_pg_attribute att = TupleDescAttr(SPI_tuptable->tupdesc, 0);

		result = SPI_datumTransfer(result, att->attbyval, att->attlen);
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	return result;
}

/*
 * Queue an item on the node of its flow's shard: what compensation_enqueue
 * or compensation_enqueue_dead (dead_error not NULL) does there.
 */
int64
compensation_enqueue_routed(text *flow, int64 id, const char *handler,
							Oid handler_owner, Datum payload, text *dedup_key,
							int32 max_attempts, TimestampTz run_at, int64 after,
							Oid caller, Oid tables_owner, const char *dead_error)
{
	static const Oid argtypes[] = {TEXTOID, INT8OID, TEXTOID, REGROLEOID, JSONBOID,
		TEXTOID, INT4OID, TIMESTAMPTZOID, INT8OID, REGROLEOID, TEXTOID};
	Datum		values[11];
	char		nulls[11] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;

	values[0] = PointerGetDatum(flow);
	values[1] = Int64GetDatum(id);
	values[2] = CStringGetTextDatum(handler);
	values[3] = ObjectIdGetDatum(handler_owner);
	values[4] = payload;
	values[5] = PointerGetDatum(dedup_key);
	nulls[5] = dedup_key == NULL ? 'n' : ' ';
	values[6] = Int32GetDatum(max_attempts);
	values[7] = TimestampTzGetDatum(run_at);
	values[8] = Int64GetDatum(after);
	values[9] = ObjectIdGetDatum(caller);
	if (dead_error != NULL)
		values[10] = CStringGetTextDatum(dead_error);
	else
		nulls[10] = 'n';

	return DatumGetInt64(call_on_shard("enqueue_compensation_on_shard", 11, argtypes,
									   values, nulls, tables_owner, &isnull));
}

/*
 * payments.enqueue_compensation_on_shard(flow, id, handler, handler_owner,
 * payload, dedup_key, max_attempts, run_at, after, enqueued_by,
 * dead_error): see compensation_enqueue_routed.
 */
Datum
payments_enqueue_compensation_on_shard(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = check_routed_call(fcinfo, 5);
	text	   *flow = PG_GETARG_TEXT_PP(0);
	int64		id = PG_GETARG_INT64(1);
	char	   *handler = text_to_cstring(PG_GETARG_TEXT_PP(2));
	Oid			handler_owner = PG_GETARG_OID(3);
	Datum		payload = PG_GETARG_DATUM(4);
	text	   *dedup_key = PG_ARGISNULL(5) ? NULL : PG_GETARG_TEXT_PP(5);
	int32		max_attempts = PG_GETARG_INT32(6);
	TimestampTz run_at = PG_GETARG_TIMESTAMPTZ(7);
	int64		after = PG_GETARG_INT64(8);
	Oid			caller = PG_GETARG_OID(9);
	PaymentsShardContext previous;

	previous = payments_shard_enter(flow, "compensation flow");
	if (!PG_ARGISNULL(10))
		id = compensation_enqueue_dead_here(handler, handler_owner, payload,
											after, caller, tables_owner,
											text_to_cstring(PG_GETARG_TEXT_PP(10)),
											id, flow);
	else
		id = compensation_enqueue_here(compensation_resolve_handler(handler,
																	handler_owner),
									   payload, dedup_key, max_attempts, run_at,
									   after, caller, tables_owner, id, flow);
	payments_shard_leave(previous);
	PG_RETURN_INT64(id);
}

/*
 * A change of one item on this node (on the shard entered, if any); the
 * item's status for the changes that return one, NULL otherwise.
 */
static char *
change_here(CompensationChange change, int64 id, int64 token, text *error,
			Oid caller, Oid tables_owner)
{
	switch (change)
	{
		case COMPENSATION_RETRY:
			compensation_retry_here(id, caller, tables_owner);
			break;
		case COMPENSATION_CANCEL:
			compensation_cancel_here(id, caller, tables_owner);
			break;
		case COMPENSATION_COMPLETE:
			compensation_complete_here(id, token, caller, tables_owner);
			break;
		case COMPENSATION_FAIL:
			compensation_fail_here(id, token, error, caller, tables_owner);
			break;
		case COMPENSATION_CANCEL_PENDING:
		case COMPENSATION_ACCEPT:
			return compensation_settle_here(change, id, tables_owner);
	}
	return NULL;
}

/*
 * Change item id for caller (see CompensationChange), on the node of its
 * flow once the queue is distributed; returns what change_here returns.
 * A caller without rights on the item, or an id that does not exist, gets
 * the error it gets without Citus (see compensation_flow_of).
 */
char *
compensation_change(CompensationChange change, int64 id, int64 token,
					text *error, Oid caller, Oid tables_owner)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, INT8OID, INT8OID, TEXTOID, REGROLEOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	PaymentsShardContext previous;
	text	   *flow;
	char	   *status;
	Datum		result;
	bool		isnull;

	if (!payments_shards_distributed())
		return change_here(change, id, token, error, caller, tables_owner);
	flow = compensation_flow_of(id, caller,
								change == COMPENSATION_COMPLETE || change == COMPENSATION_FAIL,
								tables_owner);
	if (flow == NULL)
		return NULL;			/* the extension's change of an item now gone */
	if (payments_shard_local(flow))
	{
		previous = payments_shard_enter(flow, "compensation flow");
		status = change_here(change, id, token, error, caller, tables_owner);
		payments_shard_leave(previous);
		return status;
	}

	values[0] = CStringGetTextDatum(change_names[change]);
	values[1] = PointerGetDatum(flow);
	values[2] = Int64GetDatum(id);
	values[3] = Int64GetDatum(token);
	values[4] = PointerGetDatum(error);
	nulls[4] = error == NULL ? 'n' : ' ';
	values[5] = ObjectIdGetDatum(caller);
	result = call_on_shard("change_compensation_on_shard", 6, argtypes, values,
						   nulls, tables_owner, &isnull);
	return isnull ? NULL : TextDatumGetCString(result);
}

/*
 * payments.change_compensation_on_shard(change, flow, id, claim_token,
 * error, caller): see compensation_change.  Returns the status that
 * change_here returns, or NULL.
 */
Datum
payments_change_compensation_on_shard(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = check_routed_call(fcinfo, 4);
	char	   *name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	text	   *flow = PG_GETARG_TEXT_PP(1);
	int			change = -1;
	PaymentsShardContext previous;
	char	   *status;

	for (int i = 0; i < lengthof(change_names); i++)
		if (strcmp(name, change_names[i]) == 0)
			change = i;
	if (change < 0 || PG_ARGISNULL(5))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid change of a compensation: \"%s\"", name)));
	previous = payments_shard_enter(flow, "compensation flow");
	status = change_here((CompensationChange) change, PG_GETARG_INT64(2),
						 PG_GETARG_INT64(3),
						 PG_ARGISNULL(4) ? NULL : PG_GETARG_TEXT_PP(4),
						 PG_GETARG_OID(5), tables_owner);
	payments_shard_leave(previous);
	if (status == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(status));
}

/* What is left of a claim over the shards */
typedef struct ClaimState
{
	Tuplestorestate *result;
	const char *handler;
	int32		left;
	Datum		lease;
	int64		token;
	Oid			caller;
	Oid			tables_owner;
} ClaimState;

static void
put_claimed(HeapTuple tup, TupleDesc desc, void *arg)
{
	tuplestore_puttuple((Tuplestorestate *) arg, tup);
}

/* The claim on one shard: here if it is on this node, else on its node */
static void
claim_shard(text *probe, bool local, void *arg)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, INT4OID, INTERVALOID,
	INT8OID, REGROLEOID};
	ClaimState *c = (ClaimState *) arg;
	Datum		values[6];
	PaymentsSavedUser saved;
	bool		isnull;
	uint64		n;

	if (c->left <= 0)
		return;
	if (local)
	{
		PaymentsShardContext previous = payments_shard_enter(probe, "compensation flow");

		c->left -= compensation_claim_here(c->handler, c->left, c->lease,
										   c->token, c->caller, c->tables_owner,
										   put_claimed, c->result);
		payments_shard_leave(previous);
		return;
	}

	/* the rows come back as one jsonb value, which has to stay far below 1 GB */
	values[0] = PointerGetDatum(probe);
	values[1] = CStringGetTextDatum(c->handler);
	values[2] = Int32GetDatum(Min(c->left,
								  Max(1, CLAIM_ROUTED_MAX_BYTES / compensation_max_payload_size())));
	values[3] = c->lease;
	values[4] = Int64GetDatum(c->token);
	values[5] = ObjectIdGetDatum(c->caller);
	values[0] = call_on_shard("claim_compensations_on_shard", 6, argtypes, values,
							  NULL, c->tables_owner, &isnull);
	payments_begin_as_owner(c->tables_owner, true, &saved);
	SPI_connect();
	n = payments_execute_citus("SELECT r.* FROM pg_catalog.jsonb_populate_recordset("
							   " NULL::@extschema@.compensations, $1) r",
							   1, (Oid[]) {JSONBOID}, values, NULL, SPI_OK_SELECT);
	for (uint64 i = 0; i < n; i++)
		tuplestore_puttuple(c->result, SPI_tuptable->vals[i]);
	c->left -= (int32) n;
	SPI_finish();
	payments_end_as_owner(&saved);
}

/*
 * claim_compensations: up to max_items due items of the handler (its
 * name) for caller, into result, all with one new claim token; once the
 * queue is distributed, shard by shard until max_items are claimed.
 */
void
compensation_claim(Tuplestorestate *result, const char *handler,
				   int32 max_items, Datum lease, Oid caller, Oid tables_owner)
{
	ClaimState	c = {result, handler, max_items, lease,
	(int64) pg_prng_uint64(&pg_global_prng_state), caller, tables_owner};

	if (!payments_shards_distributed())
	{
		(void) compensation_claim_here(handler, max_items, lease, c.token,
									   caller, tables_owner, put_claimed, result);
		return;
	}
	/* from a shard chosen at random, so that no shard's backlog starves the others */
	payments_shard_foreach(claim_shard, &c, pg_prng_uint32(&pg_global_prng_state));
}

/* Append a claimed row to a JSON array being built */
static void
put_claimed_json(HeapTuple tup, TupleDesc desc, void *arg)
{
	StringInfo	buf = (StringInfo) arg;
	Datum		row = heap_copy_tuple_as_datum(tup, BlessTupleDesc(desc));

	appendStringInfoString(buf, buf->len > 1 ? "," : "");
	appendStringInfoString(buf, TextDatumGetCString(DirectFunctionCall1(row_to_json,
																		row)));
}

/*
 * payments.claim_compensations_on_shard(flow, handler, max_items, lease,
 * claim_token, caller): the claim on the flow's shard, as a jsonb array of
 * the rows claimed.
 */
Datum
payments_claim_compensations_on_shard(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = check_routed_call(fcinfo, 6);
	PaymentsShardContext previous;
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	previous = payments_shard_enter(PG_GETARG_TEXT_PP(0), "compensation flow");
	(void) compensation_claim_here(text_to_cstring(PG_GETARG_TEXT_PP(1)),
								   PG_GETARG_INT32(2), PG_GETARG_DATUM(3),
								   PG_GETARG_INT64(4), PG_GETARG_OID(5),
								   tables_owner, put_claimed_json, &buf);
	payments_shard_leave(previous);
	appendStringInfoChar(&buf, ']');
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
