/*-------------------------------------------------------------------------
 *
 * outbox.c
 *	  The transactional outbox: a message sent in the business transaction
 *	  exists exactly when it commits; relays claim the messages of a topic
 *	  in send order, deliver them, and acknowledge or fail each one with the
 *	  token of their claim.
 *
 * Per-key order rests on two rules.  outbox_send holds a transaction-level
 * lock on (topic, key) from before it draws the message's id until its
 * transaction ends, so the ids of one key are drawn in commit order, and a
 * snapshot that sees a message sees every earlier message of its key.  And
 * a claim takes only messages marked ready, which a message is when every
 * earlier message of its key is settled (acknowledged or skipped): at most
 * one message of a key is in flight, and the messages of a key are
 * acknowledged in the order they were sent, however many relays claim at
 * once.
 *
 * A message is marked ready when it is sent if no earlier message of its
 * key is unsettled, and otherwise when the one before it is settled.  Both
 * happen while holding the key's lock, so that no send of the key is in
 * progress: a settle that cannot take the lock at once (a transaction is
 * sending to the key) records the key in outbox_unready_keys instead, and
 * the next claim of the topic marks the key's next message ready once it
 * can take the lock.  A claim therefore reads only the first unsettled
 * message of each key, however long a key's backlog.  See doc/outbox.md.
 *
 * Who may send and who may relay is granted per topic (outbox_operator.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "outbox.h"
#include "payments.h"
#include "args.h"
#include "compensation.h"
#include "key_lock.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

PG_FUNCTION_INFO_V1(payments_outbox_claim);
PG_FUNCTION_INFO_V1(payments_outbox_ack);
PG_FUNCTION_INFO_V1(payments_outbox_ack_batch);
PG_FUNCTION_INFO_V1(payments_outbox_nack);

#define OUTBOX_LEASE_MAX_USECS		(INT64CONST(7) * USECS_PER_DAY)
#define OUTBOX_MAX_MESSAGES_LIMIT	100000
#define OUTBOX_ERROR_MAX_BYTES		8192
#define UNREADY_KEYS_PER_CLAIM		100

static SPIPlanPtr claim_plan;
static SPIPlanPtr may_relay_plan;
static SPIPlanPtr ack_plan;
static SPIPlanPtr nack_plan;
static SPIPlanPtr state_plan;
static SPIPlanPtr make_ready_plan;
static SPIPlanPtr unready_plan;
static SPIPlanPtr unready_keys_plan;
static SPIPlanPtr ready_key_plan;

static void make_keys_ready(Datum topic, const char *topic_str);

/* The id argument of ack, nack, retry and skip */
int64
outbox_arg_id(FunctionCallInfo fcinfo)
{
	payments_arg_not_null(fcinfo, 0, "message id");
	return PG_GETARG_INT64(0);
}

/* The topic argument of send and claim, as a C string */
char *
outbox_arg_topic(FunctionCallInfo fcinfo)
{
	return text_to_cstring(payments_arg_text(fcinfo, 0, "topic",
											 OUTBOX_NAME_MAX_BYTES));
}

void
outbox_report_not_granted(const char *topic, const char *privilege)
{
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 strcmp(privilege, "send") == 0 ?
			 errmsg("permission denied to send to outbox topic \"%s\"", topic) :
			 errmsg("permission denied to relay outbox topic \"%s\"", topic),
			 errhint("An operator grants it with payments.outbox_grant(topic, role, '%s').",
					 privilege)));
}

/*
 * Mark the first unsettled message of each key ready, if it is not: the
 * keys as two text arrays (topics, keys) of the same length.  The caller
 * holds each key's lock, so that no send of the key is in progress; the
 * statement runs on a snapshot taken now, which under REPEATABLE READ the
 * transaction's may not be, so that it sees every message of each key.
 */
static void
make_keys_ready_now(Datum topics, Datum keys)
{
	Datum		values[2] = {topics, keys};

	payments_prepare(&make_ready_plan,
					 "UPDATE @extschema@.outbox o SET ready = true"
					 " FROM (SELECT (SELECT min(e.id) FROM @extschema@.outbox e"
					 "   WHERE e.topic = k.topic AND e.key = k.key AND e.settled_at IS NULL) AS id"
					 "  FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS k(topic, key)) f"
					 " WHERE o.id = f.id AND NOT o.ready AND o.settled_at IS NULL",
					 2, (Oid[]) {TEXTARRAYOID, TEXTARRAYOID});
	payments_execute_plan_latest(make_ready_plan, values, NULL, SPI_OK_UPDATE);
}

/*
 * The rows of the last statement's result name messages just settled, by
 * their topic and key in columns topic_col and topic_col + 1: make each
 * key's first unsettled message ready, now if no other transaction holds
 * the key's lock (a send, or another settle of the key), else by the next
 * claim (the key goes to outbox_unready_keys).  Recording the key writes
 * its row even if it is there already, so that a claim repairing the key
 * meanwhile, on a snapshot that cannot see this settle, either skips the
 * locked row or is waited for and the row written again after its delete:
 * the key is never forgotten while this settle is uncommitted.  Waits for
 * nothing else.  The caller is connected to SPI as the tables' owner.
 */
void
outbox_messages_settled(int topic_col)
{
	SPITupleTable *settled = SPI_tuptable;
	uint64		n = SPI_processed;
	ArrayBuildState *ready_topics = NULL;
	ArrayBuildState *ready_keys = NULL;
	ArrayBuildState *later_topics = NULL;
	ArrayBuildState *later_keys = NULL;

	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		topic = SPI_getbinval(settled->vals[i], settled->tupdesc, topic_col, &isnull);
		Datum		key = SPI_getbinval(settled->vals[i], settled->tupdesc, topic_col + 1, &isnull);
		text	   *t = DatumGetTextPP(topic);
		text	   *k = DatumGetTextPP(key);

		if (payments_lock_key(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t),
							  VARDATA_ANY(k), VARSIZE_ANY_EXHDR(k),
							  PAYMENTS_LOCKSPACE_OUTBOX, false))
		{
			ready_topics = accumArrayResult(ready_topics, topic, false, TEXTOID, CurrentMemoryContext);
			ready_keys = accumArrayResult(ready_keys, key, false, TEXTOID, CurrentMemoryContext);
		}
		else
		{
			later_topics = accumArrayResult(later_topics, topic, false, TEXTOID, CurrentMemoryContext);
			later_keys = accumArrayResult(later_keys, key, false, TEXTOID, CurrentMemoryContext);
		}
	}
	if (ready_topics != NULL)
		make_keys_ready_now(makeArrayResult(ready_topics, CurrentMemoryContext),
							makeArrayResult(ready_keys, CurrentMemoryContext));
	if (later_topics != NULL)
	{
		payments_prepare(&unready_plan,
						 "INSERT INTO @extschema@.outbox_unready_keys (topic, key)"
						 " SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2))"
						 " ON CONFLICT (topic, key) DO UPDATE SET key = excluded.key",
						 2, (Oid[]) {TEXTARRAYOID, TEXTARRAYOID});
		payments_execute(unready_plan,
						 (Datum[]) {makeArrayResult(later_topics, CurrentMemoryContext),
						 makeArrayResult(later_keys, CurrentMemoryContext)},
						 NULL, SPI_OK_INSERT, 0);
	}
}

/*
 * Before a claim of the topic: the keys whose next message a settle could
 * not mark ready, each now if no transaction is sending to it any more.
 * At most UNREADY_KEYS_PER_CLAIM keys per claim; a key whose lock is taken
 * waits for a later claim.
 */
static void
make_keys_ready(Datum topic, const char *topic_str)
{
	uint64		n;
	SPITupleTable *keys;
	ArrayBuildState *topics = NULL;
	ArrayBuildState *free_keys = NULL;
	Datum		values[2];

	payments_prepare(&unready_keys_plan,
					 "SELECT key FROM @extschema@.outbox_unready_keys"
					 " WHERE topic = $1 LIMIT " CppAsString2(UNREADY_KEYS_PER_CLAIM)
					 " FOR UPDATE SKIP LOCKED",
					 1, (Oid[]) {TEXTOID});
	n = payments_execute(unready_keys_plan, &topic, NULL, SPI_OK_SELECT, 0);
	keys = SPI_tuptable;
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		key = SPI_getbinval(keys->vals[i], keys->tupdesc, 1, &isnull);
		text	   *k = DatumGetTextPP(key);

		if (!payments_lock_key(topic_str, strlen(topic_str), VARDATA_ANY(k),
							   VARSIZE_ANY_EXHDR(k), PAYMENTS_LOCKSPACE_OUTBOX,
							   false))
			continue;
		topics = accumArrayResult(topics, topic, false, TEXTOID, CurrentMemoryContext);
		free_keys = accumArrayResult(free_keys, key, false, TEXTOID, CurrentMemoryContext);
	}
	if (topics == NULL)
		return;
	values[0] = makeArrayResult(topics, CurrentMemoryContext);
	values[1] = makeArrayResult(free_keys, CurrentMemoryContext);
	make_keys_ready_now(values[0], values[1]);
	payments_prepare(&ready_key_plan,
					 "DELETE FROM @extschema@.outbox_unready_keys u"
					 " USING ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2)) AS k(topic, key)"
					 " WHERE u.topic = k.topic AND u.key = k.key",
					 2, (Oid[]) {TEXTARRAYOID, TEXTARRAYOID});
	payments_execute(ready_key_plan, values, NULL, SPI_OK_DELETE, 0);
}

/*
 * payments.outbox_claim(topic, max_messages, lease)
 *
 * Up to max_messages messages of the topic, in send order, each the first
 * unsettled message of its key (ready): pending and due, or in flight under
 * a claim whose lease has run out.  Each is counted as an attempt and held for the
 * lease, with one new claim token for all.  A lapsed claim at its last
 * attempt makes its message dead instead.  FOR UPDATE SKIP LOCKED lets
 * concurrent claims take disjoint messages without waiting for each other;
 * neither can take a later message of a key the other takes, since that
 * one is not ready.
 */
Datum
payments_outbox_claim(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {TEXTOID, INT4OID, INTERVALOID, INT8OID,
	OIDOID, BOOLOID, TIMESTAMPTZOID};
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	char	   *topic = outbox_arg_topic(fcinfo);
	Oid			caller = GetUserId();
	Datum		values[7];
	PaymentsSavedUser saved;
	uint64		n;

	values[1] = Int32GetDatum(payments_arg_int_range(fcinfo, 1, "max_messages", 1,
													 OUTBOX_MAX_MESSAGES_LIMIT));
	values[2] = payments_arg_interval(fcinfo, 2, "lease", OUTBOX_LEASE_MAX_USECS);
	payments_check_not_in_recovery();
	values[0] = CStringGetTextDatum(topic);
	values[3] = Int64GetDatum((int64) pg_prng_uint64(&pg_global_prng_state));
	values[4] = ObjectIdGetDatum(caller);
	values[5] = BoolGetDatum(superuser_arg(caller));
	values[6] = TimestampTzGetDatum(GetCurrentTimestamp());

	InitMaterializedSRF(fcinfo, 0);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&may_relay_plan,
					 "SELECT WHERE " OUTBOX_GRANTED_SQL("$1", "relay", "$2", "$3"),
					 3, (Oid[]) {TEXTOID, OIDOID, BOOLOID});
	if (payments_execute(may_relay_plan, (Datum[]) {values[0], values[4], values[5]},
						 NULL, SPI_OK_SELECT, 0) == 0)
		outbox_report_not_granted(topic, "relay");
	make_keys_ready(values[0], topic);

#define LAPSED "(o.status = 'in_flight' AND o.attempts >= o.max_attempts)"
	payments_prepare(&claim_plan,
					 "WITH claimed AS ("
					 " UPDATE @extschema@.outbox o"
					 " SET status = CASE WHEN " LAPSED " THEN 'dead' ELSE 'in_flight' END,"
					 "  attempts = CASE WHEN " LAPSED " THEN o.attempts ELSE o.attempts + 1 END,"
					 "  last_error = CASE WHEN o.status = 'in_flight'"
					 "   THEN 'The lease of its claim ran out.' ELSE o.last_error END,"
					 "  lease_expires_at = CASE WHEN " LAPSED " THEN NULL"
					 "   ELSE pg_catalog.clock_timestamp() + $3 END,"
					 "  claim_token = CASE WHEN " LAPSED " THEN NULL ELSE $4 END,"
					 "  claimed_by = CASE WHEN " LAPSED " THEN o.claimed_by"
					 "   ELSE $5::regrole END"
					 " WHERE o.id = ANY (ARRAY("
					 "  SELECT m.id FROM @extschema@.outbox m"
					 "  WHERE m.topic = $1 AND m.ready AND m.settled_at IS NULL"
					 "   AND ((m.status = 'pending' AND m.next_attempt_at <= $7)"
					 "    OR (m.status = 'in_flight' AND m.lease_expires_at < $7))"
					 "  ORDER BY m.id LIMIT $2"
					 "  FOR UPDATE SKIP LOCKED))"
					 "  AND o.ready AND o.settled_at IS NULL"
					 "  AND (o.status = 'pending'"
					 "   OR (o.status = 'in_flight' AND o.lease_expires_at < $7))"
					 " RETURNING o.*)"
					 " SELECT * FROM claimed WHERE status = 'in_flight' ORDER BY id",
					 7, argtypes);
#undef LAPSED
	n = payments_execute(claim_plan, values, NULL, SPI_OK_SELECT, 0);
	for (uint64 i = 0; i < n; i++)
		tuplestore_puttuple(rsinfo->setResult, SPI_tuptable->vals[i]);
	SPI_finish();
	payments_end_as_owner(&saved);
	return (Datum) 0;
}

/*
 * An ack or nack that changed nothing: say why.  The message does not
 * exist (PM801, for operators; 42501 for others, as for a message of a
 * topic they may not relay, so that ids tell them nothing), the caller may
 * not relay its topic (42501), or the token
 * is not the claim that holds it (PM802): it was acknowledged, failed or
 * skipped, or its lease ran out and another claim took it.  An ack of a
 * message this claim has acknowledged already is no error.
 */
static void
check_claim_conflict(int64 id, int64 token, Oid caller, bool acking)
{
	Datum		values[4] = {Int64GetDatum(id), ObjectIdGetDatum(caller),
	BoolGetDatum(superuser_arg(caller)), Int64GetDatum(token)};
	char	   *status;
	bool		isnull;
	uint64		n;

	payments_prepare(&state_plan,
					 "SELECT o.status, o.topic, "
					 OUTBOX_GRANTED_SQL("o.topic", "relay", "$2", "$3") ","
					 " o.status = 'acked' AND o.claim_token = $4"
					 " FROM @extschema@.outbox o WHERE o.id = $1",
					 4, (Oid[]) {INT8OID, OIDOID, BOOLOID, INT8OID});
	n = payments_execute(state_plan, values, NULL, SPI_OK_SELECT, 0);
	if (n == 0 && payments_is_operator(caller))
		ereport(ERROR,
				(errcode(ERRCODE_PM_OUTBOX_MESSAGE_NOT_FOUND),
				 errmsg("outbox message %lld does not exist", (long long) id)));
	/* to others, an unknown id looks like a message of a topic they may not relay */
	if (n == 0 || !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 3, &isnull)))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for outbox message %lld", (long long) id),
				 errdetail("Only a role granted the relay privilege on the message's topic may acknowledge or fail it.")));
	/* an ack sent again, whose answer the relay did not get */
	if (acking && DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 4, &isnull)))
		return;
	status = payments_spi_first_text(1);
	ereport(ERROR,
			(errcode(ERRCODE_PM_OUTBOX_CLAIM_CONFLICT),
			 acking ?
			 errmsg("cannot acknowledge outbox message %lld", (long long) id) :
			 errmsg("cannot fail outbox message %lld", (long long) id),
			 strcmp(status, "in_flight") == 0 ?
			 errdetail("It is held by another claim.") :
			 errdetail("Its status is \"%s\"; only a claimed message can be acknowledged or failed.",
					   status),
			 strcmp(status, "in_flight") == 0 || strcmp(status, "pending") == 0 ?
			 errhint("A claim whose lease ran out can be taken by another relay; choose a lease longer than a delivery.") : 0));
}

/*
 * Acknowledge the messages ids (nids int8 Datums) held by the claim token,
 * in one statement, for the caller of the SQL function in fcinfo.  An id
 * that this claim acknowledged already is no error; any other id the claim
 * does not hold raises the error check_claim_conflict gives it, so that
 * nothing is acknowledged.
 */
static void
ack_messages(FunctionCallInfo fcinfo, Datum *ids, int nids, Datum token)
{
	Oid			caller = GetUserId();
	Datum		values[4];
	PaymentsSavedUser saved;
	int64	   *acked;
	uint64		n;

	payments_check_not_in_recovery();
	values[0] = PointerGetDatum(construct_array(ids, nids, INT8OID, sizeof(int64),
												FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = token;
	values[2] = ObjectIdGetDatum(caller);
	values[3] = BoolGetDatum(superuser_arg(caller));

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&ack_plan,
					 "UPDATE @extschema@.outbox o"
					 " SET status = 'acked', settled_at = pg_catalog.clock_timestamp(),"
					 "  lease_expires_at = NULL"
					 " WHERE o.id = ANY ($1) AND o.claim_token = $2 AND o.status = 'in_flight'"
					 "  AND " OUTBOX_GRANTED_SQL("o.topic", "relay", "$3", "$4")
					 " RETURNING o.id, o.topic, o.key",
					 4, (Oid[]) {INT8ARRAYOID, INT8OID, OIDOID, BOOLOID});
	n = payments_execute(ack_plan, values, NULL, SPI_OK_UPDATE_RETURNING, 0);

	acked = palloc(sizeof(int64) * (n + 1));
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;

		acked[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											   SPI_tuptable->tupdesc, 1, &isnull));
	}
	qsort(acked, n, sizeof(int64), payments_int64_cmp);
	outbox_messages_settled(2);
	for (int i = 0; i < nids; i++)
	{
		int64		id = DatumGetInt64(ids[i]);

		if (bsearch(&id, acked, n, sizeof(int64), payments_int64_cmp) == NULL)
			check_claim_conflict(id, DatumGetInt64(token), caller, true);
	}
	SPI_finish();
	payments_end_as_owner(&saved);
}

/*
 * payments.outbox_ack(id, claim_token): the relay delivered the message.
 * Accepted while its claim holds it, even if the lease has just run out
 * but no other claim has taken it yet, and again once it has (a relay that
 * lost the answer sends its ack again).
 */
Datum
payments_outbox_ack(PG_FUNCTION_ARGS)
{
	Datum		id = Int64GetDatum(outbox_arg_id(fcinfo));

	payments_arg_not_null(fcinfo, 1, "claim token");
	ack_messages(fcinfo, &id, 1, PG_GETARG_DATUM(1));
	PG_RETURN_VOID();
}

/*
 * payments.outbox_ack_batch(ids, claim_token): outbox_ack of every message
 * of ids, in one statement: the acknowledgement of a relay's batch.  If
 * any id gets an error, nothing is acknowledged.
 */
Datum
payments_outbox_ack_batch(PG_FUNCTION_ARGS)
{
	ArrayType  *ids;
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nids;

	payments_arg_not_null(fcinfo, 0, "message ids");
	payments_arg_not_null(fcinfo, 1, "claim token");
	ids = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(ids) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_ARRAY_SUBSCRIPT_ERROR),
				 errmsg("message ids must be a one-dimensional array")));
	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &elem_nulls, &nids);
	if (nids > OUTBOX_MAX_MESSAGES_LIMIT)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("cannot acknowledge more than %d outbox messages at once",
						OUTBOX_MAX_MESSAGES_LIMIT)));
	for (int i = 0; i < nids; i++)
		if (elem_nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("message ids must not contain NULL")));
	ack_messages(fcinfo, elems, nids, PG_GETARG_DATUM(1));
	PG_RETURN_VOID();
}

/*
 * payments.outbox_nack(id, claim_token, error): the relay could not deliver
 * the message.  It is due again after the compensation queue's backoff
 * (payments.backoff_base, payments.backoff_max), or dead if that was its
 * last attempt; either way the later messages of its key wait for it.
 */
Datum
payments_outbox_nack(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {INT8OID, INT8OID, INT4OID, INT4OID, TEXTOID,
	OIDOID, BOOLOID};
	int64		id = outbox_arg_id(fcinfo);
	Oid			caller = GetUserId();
	Datum		values[7];
	int			backoff_base;
	int			backoff_max;
	int			max_attempts;
	PaymentsSavedUser saved;

	payments_arg_not_null(fcinfo, 1, "claim token");
	values[4] = PointerGetDatum(payments_arg_text(fcinfo, 2, "error",
												  OUTBOX_ERROR_MAX_BYTES));
	payments_check_not_in_recovery();
	compensation_retry_settings(&backoff_base, &backoff_max, &max_attempts);
	values[0] = Int64GetDatum(id);
	values[1] = PG_GETARG_DATUM(1);
	values[2] = Int32GetDatum(backoff_base);
	values[3] = Int32GetDatum(backoff_max);
	values[5] = ObjectIdGetDatum(caller);
	values[6] = BoolGetDatum(superuser_arg(caller));

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&nack_plan,
					 "UPDATE @extschema@.outbox o"
					 " SET status = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'pending' END,"
					 "  next_attempt_at = CASE WHEN attempts >= max_attempts THEN next_attempt_at"
					 "   ELSE " PAYMENTS_BACKOFF_SQL("$3", "$4") " END,"
					 "  last_error = $5, lease_expires_at = NULL, claim_token = NULL"
					 " WHERE o.id = $1 AND o.claim_token = $2 AND o.status = 'in_flight'"
					 "  AND " OUTBOX_GRANTED_SQL("o.topic", "relay", "$6", "$7"),
					 7, argtypes);
	if (payments_execute(nack_plan, values, NULL, SPI_OK_UPDATE, 0) == 0)
		check_claim_conflict(id, DatumGetInt64(values[1]), caller, false);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}
