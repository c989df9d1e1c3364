/*-------------------------------------------------------------------------
 *
 * callback_receive.c
 *	  receive_callback and record_query_result: an event recorded once per
 *	  provider and event id, and applied once.
 *
 * A delivery first takes the event's lock, so a second delivery of the
 * same event waits for the first delivery's transaction (or is refused,
 * PM409), then counts as a duplicate if that committed, as the first if it
 * rolled back.  The event's row in payments.callbacks is inserted before
 * the routed row is read or moved (its primary key is the last word, under
 * REPEATABLE READ too), so a redelivery answers "duplicate" whatever
 * became of the routed row since, and an event is applied at most once
 * whatever the number and order of deliveries.  The row is inserted with
 * the outcome most events have (applied, or new without a route) and
 * corrected in the other cases; a stale event is told by a plain read of
 * the routed row where that suffices (callback_route_settled), without
 * locking or writing it.
 *
 * Everything happens in the caller's transaction: a rollback takes the
 * event back with the caller's own work, and the provider's next delivery
 * is a first one again.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback.h"
#include "payments.h"
#include "args.h"
#include "fault.h"
#include "key_lock.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

PG_FUNCTION_INFO_V1(payments_receive_callback);
PG_FUNCTION_INFO_V1(payments_record_query_result);

const char *const callback_outcome_names[] = {
	[CALLBACK_APPLIED] = "applied",
	[CALLBACK_STALE] = "stale",
	[CALLBACK_CONFLICT] = "conflict",
	[CALLBACK_NEW] = "new",
};

/*
 * The event ids of query results: the prefix, then the length of the event
 * type, so that no two (event type, payment) pairs share one.
 */
#define QUERY_EVENT_PREFIX	"query:"

static bool callback_wait = true;

static SPIPlanPtr insert_plan;
static SPIPlanPtr outcome_plan;

void
callback_receive_init(void)
{
	DefineCustomBoolVariable("payments.callback_wait",
							 gettext_noop("Wait for another transaction that is receiving the same callback event."),
							 gettext_noop("When off, a delivery of an event that another transaction is receiving is refused at once with PM409."),
							 &callback_wait,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
}

/*
 * Take the event's lock for the rest of the transaction, before its row is
 * inserted.  Every delivery takes it, so a second delivery of an event
 * that another transaction is receiving waits for that transaction (as the
 * primary key would make it), or, without payments.callback_wait, is
 * refused at once (PM409) so that the provider sends it again later.
 */
static void
lock_event(const char *provider, const char *event_id)
{
	if (!payments_lock_key(provider, strlen(provider), event_id, strlen(event_id),
						   PAYMENTS_LOCKSPACE_CALLBACK, callback_wait))
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_IN_PROGRESS),
				 errmsg("event \"%s\" of callback provider \"%s\" is being received by another transaction",
						event_id, provider),
				 errhint("Answer the provider with an error so that it sends the event again, or set payments.callback_wait to wait for the other transaction.")));
}

/* One event, as receive_callback and record_query_result are given it */
typedef struct CallbackEvent
{
	const char *provider;
	const char *event_id;
	const char *payment_ref;
	const char *event_type;
	Jsonb	   *payload;		/* may be NULL */
	const char *key_id;			/* the key that verified it, or NULL */
} CallbackEvent;

/*
 * The answer to a redelivery of ev, whose row SPI_tuptable holds (payment
 * and event type in columns 2 and 3).  Finishes SPI.
 */
static const char *
redelivery(const CallbackEvent *ev)
{
	char	   *payment_ref = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
	char	   *event_type = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);

	/*
	 * A provider's retry carries the same event; the same id with other
	 * contents is a bug or an attack, and must not pass for a retry.
	 */
	if (strcmp(payment_ref, ev->payment_ref) != 0 ||
		strcmp(event_type, ev->event_type) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_EVENT_MISMATCH),
				 errmsg("event \"%s\" of callback provider \"%s\" was received before with other contents",
						ev->event_id, ev->provider),
				 errdetail("It was received for payment \"%s\" as type \"%s\"; this delivery says payment \"%s\", type \"%s\".",
						   payment_ref, event_type, ev->payment_ref, ev->event_type)));
	SPI_finish();
	return "duplicate";
}

/*
 * Record ev and apply it if it is its first delivery.  Returns the outcome
 * as receive_callback does.
 */
static const char *
record_event(const CallbackEvent *ev, Oid tables_owner)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID, JSONBOID,
	TEXTOID, TEXTOID, OIDOID};
	CallbackRoute *route;
	CallbackOutcome outcome;
	int64		compensation_id = 0;
	Datum		values[8];
	char		nulls[8] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	PaymentsSavedUser saved;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		first;

	payments_check_not_in_recovery();
	lock_event(ev->provider, ev->event_id);
	SPI_connect();

	values[0] = CStringGetTextDatum(ev->provider);
	values[1] = CStringGetTextDatum(ev->event_id);

	route = callback_route_find(ev->provider, ev->event_type, tables_owner);
	outcome = route ? CALLBACK_APPLIED : CALLBACK_NEW;

	values[2] = CStringGetTextDatum(ev->payment_ref);
	values[3] = CStringGetTextDatum(ev->event_type);
	if (ev->payload != NULL)
		values[4] = JsonbPGetDatum(ev->payload);
	else
		nulls[4] = 'n';
	values[5] = CStringGetTextDatum(callback_outcome_names[outcome]);
	if (ev->key_id != NULL)
		values[6] = CStringGetTextDatum(ev->key_id);
	else
		nulls[6] = 'n';
	values[7] = ObjectIdGetDatum(GetUserId());

	payments_begin_as_owner(tables_owner, false, &saved);
	payments_prepare(&insert_plan,
					 "INSERT INTO @extschema@.callbacks AS c"
					 " (provider, event_id, payment_ref, event_type, payload, outcome,"
					 "  key_id, received_by)"
					 " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::regrole)"
					 " ON CONFLICT (provider, event_id) DO UPDATE SET"
					 "  deliveries = c.deliveries + 1, last_delivered_at = now()"
					 " RETURNING c.xmax OPERATOR(pg_catalog.=) '0'::pg_catalog.xid,"
					 "  c.payment_ref, c.event_type",
					 8, argtypes);
	payments_execute(insert_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0);
	payments_end_as_owner(&saved);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	first = DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull));

	if (!first)
		return redelivery(ev);

	/*
	 * A drill delivers the event again between its record and its route:
	 * the second delivery must be told it is a duplicate.
	 */
	if (PAYMENTS_FAULT(FAULT_CALLBACK_AFTER_DEDUPE))
		(void) record_event(ev, tables_owner);

	if (route != NULL)
	{
		if (callback_route_settled(route, ev->provider, ev->event_id,
								   ev->payment_ref, ev->event_type))
			outcome = CALLBACK_STALE;
		else
			outcome = callback_route_apply(route, ev->provider, ev->event_id,
										   ev->payment_ref, ev->event_type,
										   ev->payload, tables_owner,
										   &compensation_id);
		if (outcome != CALLBACK_APPLIED)
		{
			Datum		fix[4];
			char		fixnulls[4] = {' ', ' ', ' ', ' '};

			fix[0] = values[0];
			fix[1] = values[1];
			fix[2] = CStringGetTextDatum(callback_outcome_names[outcome]);
			fix[3] = Int64GetDatum(compensation_id);
			if (compensation_id == 0)
				fixnulls[3] = 'n';
			payments_begin_as_owner(tables_owner, true, &saved);
			payments_prepare(&outcome_plan,
							 "UPDATE @extschema@.callbacks"
							 " SET outcome = $3, compensation_id = $4"
							 " WHERE provider = $1 AND event_id = $2",
							 4, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, INT8OID});
			payments_execute(outcome_plan, fix, fixnulls, SPI_OK_UPDATE, 0);
			payments_end_as_owner(&saved);
		}
		callback_expectations_meet(ev->provider, ev->payment_ref, ev->event_id,
								   tables_owner);
	}
	SPI_finish();
	return callback_outcome_names[outcome];
}

static void
event_args(FunctionCallInfo fcinfo, CallbackEvent *ev, int payment_ref_arg,
		   int event_type_arg, int payload_arg)
{
	ev->provider = callback_arg_provider(fcinfo, 0);
	ev->payment_ref = text_to_cstring(payments_arg_text(fcinfo, payment_ref_arg, "payment_ref",
														CALLBACK_PAYMENT_REF_MAX_BYTES));
	ev->event_type = text_to_cstring(payments_arg_text(fcinfo, event_type_arg, "event_type",
													   CALLBACK_EVENT_TYPE_MAX_BYTES));
	ev->payload = PG_ARGISNULL(payload_arg) ? NULL : PG_GETARG_JSONB_P(payload_arg);
	ev->key_id = NULL;
}

/*
 * payments.receive_callback(provider, event_id, payment_ref, event_type,
 * payload, headers, body)
 */
Datum
payments_receive_callback(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	CallbackEvent ev;
	bytea	   *body = NULL;

	event_args(fcinfo, &ev, 2, 3, 4);
	ev.event_id = text_to_cstring(payments_arg_text(fcinfo, 1, "event_id",
													CALLBACK_EVENT_ID_MAX_BYTES));
	if (strncmp(ev.event_id, QUERY_EVENT_PREFIX, strlen(QUERY_EVENT_PREFIX)) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("event_id must not start with \"%s\"", QUERY_EVENT_PREFIX),
				 errdetail("Event ids starting with \"%s\" are those of record_query_result.",
						   QUERY_EVENT_PREFIX)));
	if (PG_ARGISNULL(5) && !PG_ARGISNULL(6))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("headers must not be null when a body is given"),
				 errdetail("A body is verified against the signature its headers carry."),
				 errhint("Pass the request's headers, or no body if your application verified the callback itself.")));
	if (!PG_ARGISNULL(6))
	{
		/* Measured before it is detoasted: a body may be up to 1 GB. */
		callback_check_body_size(callback_body_length(PG_GETARG_DATUM(6)));
		body = PG_GETARG_BYTEA_PP(6);
	}

	(void) callback_provider_owner(ev.provider, false, tables_owner);
	if (!PG_ARGISNULL(5))
		ev.key_id = callback_verify(ev.provider, PG_GETARG_JSONB_P(5),
									body ? VARDATA_ANY(body) : NULL,
									body ? VARSIZE_ANY_EXHDR(body) : 0,
									GetCurrentTransactionStartTimestamp(),
									tables_owner);
	PG_RETURN_TEXT_P(cstring_to_text(record_event(&ev, tables_owner)));
}

/*
 * payments.record_query_result(provider, payment_ref, event_type, payload):
 * what the provider's query API answered, recorded as an event of its own,
 * one per payment and event type.
 */
Datum
payments_record_query_result(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	CallbackEvent ev;

	event_args(fcinfo, &ev, 1, 2, 3);
	ev.event_id = psprintf("%s%zu:%s:%s", QUERY_EVENT_PREFIX,
						   strlen(ev.event_type), ev.event_type, ev.payment_ref);
	(void) callback_provider_owner(ev.provider, false, tables_owner);
	PG_RETURN_TEXT_P(cstring_to_text(record_event(&ev, tables_owner)));
}
