/*-------------------------------------------------------------------------
 *
 * outbox_send.c
 *	  payments.outbox_send: a message of the outbox, written by the
 *	  caller's transaction.
 *
 * The send is on the business transaction's path, once per message, so
 * it reads and writes without SQL (see direct_write.c): the grant is read
 * from the primary key of outbox_grants, whether the key has an unsettled
 * message from outbox_key_idx, and the row is inserted with
 * ExecSimpleRelationInsert, as the caller (the tables grant it nothing; the
 * grant on the topic is what lets it send).  The table's constraints,
 * indexes and AFTER ROW triggers apply; a BEFORE ROW INSERT trigger, which
 * could skip the row or change its key, is refused.  It behaves as the
 * statement
 *
 *	 INSERT INTO outbox (...) SELECT ..., NOT EXISTS (an unsettled message
 *	 of the key) WHERE (the caller may send to the topic) RETURNING id
 *
 * run after the key's lock is taken, on a snapshot taken after it (see
 * outbox.c for why per-key order needs both).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "outbox.h"
#include "payments.h"
#include "args.h"
#include "compensation.h"
#include "direct_write.h"
#include "extension_catalog.h"
#include "key_lock.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/sequence.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_outbox_send);

static int	max_payload_size = 1024 * 1024;

/* The columns of payments.outbox, in order */
enum
{
	OUTBOX_ATT_ID = 1,
	OUTBOX_ATT_TOPIC,
	OUTBOX_ATT_KEY,
	OUTBOX_ATT_MESSAGE_ID,
	OUTBOX_ATT_PAYLOAD,
	OUTBOX_ATT_HEADERS,
	OUTBOX_ATT_STATUS,
	OUTBOX_ATT_ATTEMPTS,
	OUTBOX_ATT_MAX_ATTEMPTS,
	OUTBOX_ATT_NEXT_ATTEMPT_AT,
	OUTBOX_ATT_LEASE_EXPIRES_AT,
	OUTBOX_ATT_CLAIM_TOKEN,
	OUTBOX_ATT_CLAIMED_BY,
	OUTBOX_ATT_LAST_ERROR,
	OUTBOX_ATT_SENT_BY,
	OUTBOX_ATT_SENT_AT,
	OUTBOX_ATT_SETTLED_AT,
	OUTBOX_ATT_READY,
	OUTBOX_NATTS = OUTBOX_ATT_READY
};

static const char *const outbox_names[OUTBOX_NATTS] = {
	"id", "topic", "key", "message_id", "payload", "headers", "status",
	"attempts", "max_attempts", "next_attempt_at", "lease_expires_at",
	"claim_token", "claimed_by", "last_error", "sent_by", "sent_at",
	"settled_at", "ready"
};
static const Oid outbox_types[OUTBOX_NATTS] = {
	INT8OID, TEXTOID, TEXTOID, UUIDOID, JSONBOID, JSONBOID, TEXTOID,
	INT4OID, INT4OID, TIMESTAMPTZOID, TIMESTAMPTZOID,
	INT8OID, REGROLEOID, TEXTOID, REGROLEOID, TIMESTAMPTZOID,
	TIMESTAMPTZOID, BOOLOID
};

/* The columns of payments.outbox_grants a send reads, found by name */
enum
{
	GRANTS_TOPIC,
	GRANTS_PRIVILEGE,
	GRANTS_GRANTEE,
	GRANTS_NCOLUMNS
};
static const char *const grants_names[GRANTS_NCOLUMNS] = {"topic", "privilege", "grantee"};
static const Oid grants_types[GRANTS_NCOLUMNS] = {TEXTOID, TEXTOID, REGROLEOID};

/* outbox_key_idx is (topic, key, id) */
static const AttrNumber key_index_columns[2] = {OUTBOX_ATT_TOPIC, OUTBOX_ATT_KEY};

void
outbox_send_init(void)
{
	DefineCustomIntVariable("payments.outbox_max_payload_size",
							gettext_noop("The largest outbox message that can be sent."),
							gettext_noop("Measured in bytes of the payload and the headers as stored, before compression."),
							&max_payload_size,
							1024 * 1024,
							1,
							0x3fffffff, /* MaxAllocSize: no value is larger */
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}

/*
 * Whether the caller, itself or through a role it has the privileges of,
 * was granted privilege on the topic, read on snapshot.
 */
static bool
outbox_granted(const char *topic, const char *privilege, Oid caller,
			   Snapshot snapshot)
{
	Relation	rel;
	Relation	index;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tuple;
	AttrNumber	attnums[GRANTS_NCOLUMNS];
	bool		granted = false;

	if (superuser_arg(caller))
		return true;
	rel = table_open(payments_relation(PAYMENTS_REL_OUTBOX_GRANTS), AccessShareLock);
	index = index_open(payments_relation(PAYMENTS_REL_OUTBOX_GRANTS_PKEY), AccessShareLock);
	/* the primary key (topic, privilege, grantee), scanned by topic */
	payments_check_columns(rel, grants_names, grants_types, GRANTS_NCOLUMNS, attnums);
	payments_check_index_prefix(rel, index, attnums, 1, InvalidAttrNumber);

	ScanKeyInit(&skey, attnums[GRANTS_TOPIC], BTEqualStrategyNumber, F_TEXTEQ,
				CStringGetTextDatum(topic));
	scan = systable_beginscan_ordered(rel, index, snapshot, 1, &skey);
	while (!granted &&
		   HeapTupleIsValid(tuple = systable_getnext_ordered(scan, ForwardScanDirection)))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		grantee = heap_getattr(tuple, attnums[GRANTS_GRANTEE], desc, &isnull);
		Datum		granted_privilege = heap_getattr(tuple, attnums[GRANTS_PRIVILEGE],
													 desc, &isnull);

		granted = !isnull &&
			strcmp(TextDatumGetCString(granted_privilege), privilege) == 0 &&
			has_privs_of_role(caller, DatumGetObjectId(grantee));
	}
	systable_endscan_ordered(scan);
	index_close(index, AccessShareLock);
	table_close(rel, AccessShareLock);
	return granted;
}

/*
 * Whether the key has no unsettled message on snapshot: the index holds
 * the unsettled messages by (topic, key, id); the row says whether the
 * version the snapshot sees is still unsettled.
 */
static bool
key_is_free(Relation rel, text *topic, text *key, Snapshot snapshot)
{
	Relation	index = index_open(payments_relation(PAYMENTS_REL_OUTBOX_KEY_IDX),
								   AccessShareLock);
	ScanKeyData skey[2];
	IndexScanDesc scan;
	TupleTableSlot *slot;
	bool		free = true;

	payments_check_index_prefix(rel, index, key_index_columns, 2,
								OUTBOX_ATT_SETTLED_AT);

	ScanKeyInit(&skey[0], 1, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(topic));
	ScanKeyInit(&skey[1], 2, BTEqualStrategyNumber, F_TEXTEQ, PointerGetDatum(key));
	slot = table_slot_create(rel, NULL);
	scan = index_beginscan(rel, index, snapshot, 2, 0);
	index_rescan(scan, skey, 2, NULL, 0);
	while (free && index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		isnull;

		(void) slot_getattr(slot, OUTBOX_ATT_SETTLED_AT, &isnull);
		free = !isnull;
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	index_close(index, AccessShareLock);
	return free;
}

/*
 * payments.outbox_send(topic, key, payload, headers): the message, in the
 * caller's transaction.  Returns its id.
 */
Datum
payments_outbox_send(PG_FUNCTION_ARGS)
{
	char	   *topic_str = outbox_arg_topic(fcinfo);
	text	   *key = payments_arg_text(fcinfo, 1, "key", OUTBOX_NAME_MAX_BYTES);
	Oid			caller = GetUserId();
	TimestampTz now;
	Size		size;
	int			backoff_base;
	int			backoff_max;
	int			max_attempts;
	Relation	rel;
	Snapshot	snapshot;
	DirectWrite dw;
	TupleTableSlot *row;
	Datum	   *values;
	bool	   *nulls;
	int64		id;

	payments_arg_not_null(fcinfo, 2, "payload");
	size = toast_raw_datum_size(PG_GETARG_DATUM(2));
	if (!PG_ARGISNULL(3))
	{
		Jsonb	   *headers = PG_GETARG_JSONB_P(3);

		if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("outbox message headers must be a JSON object")));
		size += toast_raw_datum_size(PG_GETARG_DATUM(3));
	}
	if (size > (Size) max_payload_size)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("outbox message is too large"),
				 errdetail("Its payload and headers take %zu bytes; the limit, payments.outbox_max_payload_size, is %d bytes.",
						   size, max_payload_size),
				 errhint("Send a reference to data kept elsewhere.")));
	payments_check_not_in_recovery();
	compensation_retry_settings(&backoff_base, &backoff_max, &max_attempts);

	/*
	 * Before the id is drawn, and until the transaction ends: see the top of
	 * outbox.c.  A caller without the grant takes it only until its error.
	 */
	(void) payments_lock_key(topic_str, strlen(topic_str), VARDATA_ANY(key),
							 VARSIZE_ANY_EXHDR(key), PAYMENTS_LOCKSPACE_OUTBOX,
							 true);
	now = GetCurrentTimestamp();

	rel = table_open(payments_relation(PAYMENTS_REL_OUTBOX), RowExclusiveLock);
	payments_check_columns(rel, outbox_names, outbox_types, OUTBOX_NATTS, NULL);
	payments_direct_refuse_before_row(rel, false,
									  gettext_noop("A BEFORE ROW trigger could skip the message or change the key that orders it."));

	/*
	 * A snapshot taken after the key's lock, which sees this transaction's
	 * earlier sends; under REPEATABLE READ the transaction's own may be
	 * older than the lock, so the latest is asked instead.
	 */
	CommandCounterIncrement();
	snapshot = RegisterSnapshot(IsolationUsesXactSnapshot() ?
								GetLatestSnapshot() : GetTransactionSnapshot());
	PushActiveSnapshot(snapshot);

	if (!outbox_granted(topic_str, "send", caller, snapshot))
		outbox_report_not_granted(topic_str, "send");

	payments_direct_begin(&dw, rel, snapshot, CMD_INSERT, NULL, 0);
	row = payments_direct_slot(&dw);
	values = row->tts_values;
	nulls = row->tts_isnull;
	memset(nulls, true, sizeof(bool) * OUTBOX_NATTS);
#define SET(att, value) (values[(att) - 1] = (value), nulls[(att) - 1] = false)
	id = nextval_internal(payments_relation(PAYMENTS_REL_OUTBOX_ID_SEQ), false);
	SET(OUTBOX_ATT_ID, Int64GetDatum(id));
	SET(OUTBOX_ATT_TOPIC, CStringGetTextDatum(topic_str));
	SET(OUTBOX_ATT_KEY, PointerGetDatum(key));
	SET(OUTBOX_ATT_MESSAGE_ID, OidFunctionCall0(F_GEN_RANDOM_UUID));
	SET(OUTBOX_ATT_PAYLOAD, PG_GETARG_DATUM(2));
	if (!PG_ARGISNULL(3))
		SET(OUTBOX_ATT_HEADERS, PG_GETARG_DATUM(3));
	SET(OUTBOX_ATT_STATUS, CStringGetTextDatum("pending"));
	SET(OUTBOX_ATT_ATTEMPTS, Int32GetDatum(0));
	SET(OUTBOX_ATT_MAX_ATTEMPTS, Int32GetDatum(max_attempts));
	SET(OUTBOX_ATT_NEXT_ATTEMPT_AT, TimestampTzGetDatum(now));
	SET(OUTBOX_ATT_SENT_BY, ObjectIdGetDatum(caller));
	SET(OUTBOX_ATT_SENT_AT, TimestampTzGetDatum(now));
	SET(OUTBOX_ATT_READY,
		BoolGetDatum(key_is_free(rel, DatumGetTextPP(values[OUTBOX_ATT_TOPIC - 1]),
								 key, snapshot)));
#undef SET
	ExecStoreVirtualTuple(row);
	ExecSimpleRelationInsert(dw.rri, dw.estate, row);
	payments_direct_end(&dw);

	PopActiveSnapshot();
	UnregisterSnapshot(snapshot);
	table_close(rel, NoLock);

	outbox_notify_at_commit(topic_str, id);
	PG_RETURN_INT64(id);
}
