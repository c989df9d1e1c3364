/*-------------------------------------------------------------------------
 *
 * outbox_notify.c
 *	  Waking the outbox's relays: a notification on the channel
 *	  payments_outbox, with a topic as payload, once messages of the topic
 *	  can be claimed.
 *
 * PostgreSQL lets one notifying transaction commit at a time (it holds a
 * lock from the notification queue's write to the end of its commit), so
 * senders that notified would wait for each other's commit flush.  A
 * sending commit therefore only records its ids for its database's worker
 * (worker_shmem.c); the worker then notifies each topic that has a
 * claimable message, once for every commit since it last did, in a
 * transaction of its own, and at most once every
 * payments.outbox_notify_interval.  Without a
 * worker (the library not preloaded, or payments.worker_enabled off) the
 * sending transaction notifies at its commit, as NOTIFY would.
 *
 * A notification is a hint: any role may LISTEN on the channel or NOTIFY
 * it, and one can arrive late (the worker is busy) or never (the worker
 * is down), so relays also claim at an interval of their own.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "outbox.h"
#include "payments.h"
#include "args.h"
#include "spi_util.h"
#include "worker.h"

#include "catalog/pg_type.h"
#include "commands/async.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_notify_outbox_relays);

static bool notify_relays = true;
int			outbox_notify_interval = 10;

static SPIPlanPtr claimable_topics_plan;

void
outbox_notify_init(void)
{
	DefineCustomBoolVariable("payments.outbox_notify",
							 gettext_noop("Whether relays listening on the channel payments_outbox are notified once a transaction that sent outbox messages commits."),
							 gettext_noop("The extension's worker notifies each topic once for many commits. "
										  "Without a worker, the sending transaction notifies when it commits, "
										  "and then cannot be prepared for two-phase commit."),
							 &notify_relays,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("payments.outbox_notify_interval",
							gettext_noop("The shortest time between two notifications of the outbox's relays by the worker."),
							gettext_noop("Commits that come sooner are notified together when it has passed, "
										 "so that relays under load claim many messages per wake-up."),
							&outbox_notify_interval,
							10,
							0,
							60000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/*
 * Message id of the topic was sent in the current transaction: have the
 * relays notified once it commits.
 */
void
outbox_notify_at_commit(const char *topic, int64 id)
{
	if (!notify_relays)
		return;
	if (payments_shared != NULL && payments_worker_enabled)
		payments_outbox_sent_at_commit(id);
	else
		Async_Notify(OUTBOX_CHANNEL, topic);
}

/*
 * payments.notify_outbox_relays(max_topics): a notification, sent when this
 * transaction commits, of up to max_topics topics that have a message a
 * claim would take now.  Run by the worker, only the topics of the
 * messages sent since its last run, read from the primary key from the
 * smallest of their ids, so that a pass costs what was sent since, and
 * topics nobody relays are not notified again and again; run by hand,
 * every such topic.  Returns how many.
 */
Datum
payments_notify_outbox_relays(PG_FUNCTION_ARGS)
{
	int32		max_topics = payments_arg_int_range(fcinfo, 0, "max_topics", 1, 1000000);
	uint64		from_id = 0;
	Datum		values[3];
	uint64		n;

	payments_check_not_in_recovery();
	if (IsBackgroundWorker && payments_shared != NULL)
	{
		from_id = payments_outbox_take_min_sent();
		if (from_id > (uint64) PG_INT64_MAX)
			PG_RETURN_INT32(0);
	}
	values[0] = Int32GetDatum(max_topics);
	values[1] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[2] = Int64GetDatum((int64) from_id);
	SPI_connect();
	payments_prepare(&claimable_topics_plan,
					 "SELECT DISTINCT o.topic FROM @extschema@.outbox o"
					 " WHERE o.id >= $3 AND o.ready AND o.settled_at IS NULL"
					 "  AND ((o.status = 'pending' AND o.next_attempt_at <= $2)"
					 "   OR (o.status = 'in_flight' AND o.lease_expires_at < $2))"
					 " LIMIT $1",
					 3, (Oid[]) {INT4OID, TIMESTAMPTZOID, INT8OID});
	n = payments_execute(claimable_topics_plan, values, NULL, SPI_OK_SELECT, 0);
	for (uint64 i = 0; i < n; i++)
	{
		bool		isnull;
		Datum		topic = SPI_getbinval(SPI_tuptable->vals[i],
										  SPI_tuptable->tupdesc, 1, &isnull);

		Async_Notify(OUTBOX_CHANNEL, TextDatumGetCString(topic));
	}
	SPI_finish();
	PG_RETURN_INT32((int32) n);
}
