/*-------------------------------------------------------------------------
 *
 * inbox.c
 *	  The consumer's side of at-least-once delivery: inbox_receive says,
 *	  in the consumer's transaction, whether a message id is new, so that
 *	  the consumer applies each message once however often it arrives.
 *
 * The id is recorded by the insert that answers the question, in the
 * caller's transaction: if that transaction rolls back, so does the
 * record, and the redelivery is new again.  Two deliveries of one id at
 * once meet on the primary key: the second waits for the first
 * transaction and answers false if it committed, true if it rolled back.
 * Ids are kept per receiving role, so a role can neither learn which
 * messages another role received nor make it drop one by receiving it
 * first.  The worker purges an id once its retain period is over
 * (retention.c); a redelivery after that is new again, so retain must
 * outlast the sender's retries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "outbox.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_inbox_receive);

#define INBOX_RETAIN_MAX_USECS	(INT64CONST(3660) * USECS_PER_DAY)

static SPIPlanPtr receive_plan;

/*
 * payments.inbox_receive(source, message_id, retain): true the first time
 * the caller's role receives message_id from source, false for a
 * redelivery.
 */
Datum
payments_inbox_receive(PG_FUNCTION_ARGS)
{
	static const Oid argtypes[] = {OIDOID, TEXTOID, TEXTOID, INTERVALOID};
	Datum		values[4];
	PaymentsSavedUser saved;
	uint64		n;

	values[0] = ObjectIdGetDatum(GetUserId());
	values[1] = PointerGetDatum(payments_arg_text(fcinfo, 0, "source",
												  OUTBOX_NAME_MAX_BYTES));
	values[2] = PointerGetDatum(payments_arg_text(fcinfo, 1, "message id",
												  OUTBOX_NAME_MAX_BYTES));
	values[3] = payments_arg_interval(fcinfo, 2, "retain", INBOX_RETAIN_MAX_USECS);
	payments_check_not_in_recovery();

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&receive_plan,
					 "INSERT INTO @extschema@.inbox (receiver, source, message_id, expires_at)"
					 " VALUES ($1::regrole, $2, $3, pg_catalog.clock_timestamp() + $4)"
					 " ON CONFLICT (receiver, source, message_id) DO NOTHING",
					 4, argtypes);
	n = payments_execute(receive_plan, values, NULL, SPI_OK_INSERT, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_BOOL(n == 1);
}
