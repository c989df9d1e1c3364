/*-------------------------------------------------------------------------
 *
 * compensation.h
 *	  Declarations shared by the compensation queue (compensation.c), its
 *	  rights checks (compensation_rights.c), the executors outside the
 *	  database (compensation_external.c) and the worker's side
 *	  (compensation_run.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_COMPENSATION_H
#define PAYMENTS_COMPENSATION_H

#include "fmgr.h"
#include "datatype/timestamp.h"
#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/tuplestore.h"

#include "owner_rights.h"

/* Limits of the SQL arguments */
#define COMPENSATION_MAX_ATTEMPTS_LIMIT	1000
#define COMPENSATION_MAX_ITEMS_LIMIT	100000

/* Error texts are stored and logged clipped to this many bytes */
#define COMPENSATION_ERROR_MAX_BYTES	8192


/* SQLSTATE recorded for an attempt whose claim ran out (see payments.h) */
#define COMPENSATION_LEASE_EXPIRED_SQLSTATE "PM304"

/*
 * The time of the next attempt after a failure: full jitter over an
 * exponential backoff, uniform in [0, min(max, base * 2^(attempts-1))]
 * milliseconds, where base and max name the statement's parameters holding
 * payments.backoff_base and payments.backoff_max and attempts is the row's
 * column.  The exponent is capped so that the power cannot overflow.
 */
#define PAYMENTS_BACKOFF_SQL(base, max) \
	"pg_catalog.clock_timestamp() + pg_catalog.random() * least(" max "::float8," \
	" " base "::float8 * pg_catalog.power(2::float8, least(attempts - 1, 60)))" \
	" * interval '1 millisecond'"

/* Whether the item alias stands for has a handler of external executors */
#define IS_EXTERNAL_SQL(alias) \
	"EXISTS (SELECT FROM @extschema@.external_handlers e WHERE e.handler = " alias ".handler)"

/* A call on one item, run on the node of its flow (compensation_citus.c) */
typedef enum CompensationChange
{
	COMPENSATION_RETRY,
	COMPENSATION_CANCEL,
	COMPENSATION_COMPLETE,
	COMPENSATION_FAIL,
	COMPENSATION_CANCEL_PENDING,	/* a met callback's query: if pending */
	COMPENSATION_ACCEPT			/* an accepted difference's heal: if dead */
} CompensationChange;

/* compensation.c */
extern void compensation_init(void);
extern void compensation_retry_settings(int *base_ms, int *max_ms,
										int *max_attempts);
extern int64 compensation_arg_id(FunctionCallInfo fcinfo);
extern Oid	compensation_arg_handler(FunctionCallInfo fcinfo, int argno);
extern char *compensation_item_state(int64 id, int64 *token, bool *external);
extern bool compensation_record_failure(int64 id, const char *error,
										const char *sqlstate, int64 token,
										bool external);
extern int	compensation_expire_leases(const char *handler, int max_items);
extern void compensation_check_payload(Datum payload);
extern int	compensation_max_payload_size(void);
extern int64 compensation_enqueue(Oid handler, Datum payload, text *dedup_key,
								  int32 max_attempts, TimestampTz run_at,
								  int64 after, Oid caller, Oid tables_owner);
extern int64 compensation_enqueue_here(Oid handler, Datum payload,
									   text *dedup_key, int32 max_attempts,
									   TimestampTz run_at, int64 after,
									   Oid caller, Oid tables_owner, int64 id,
									   text *flow);
extern int64 compensation_enqueue_dead_here(const char *handler,
											Oid handler_owner, Datum payload,
											int64 after, Oid caller,
											Oid tables_owner, const char *error,
											int64 id, text *flow);
extern int64 compensation_new_item(text *after_flow, text *dedup_key,
								   text **flow);
extern void compensation_release_next(Datum ids);
extern int	compensation_release_stranded(int max_items);
extern int64 compensation_enqueue_dead(const char *handler, Oid handler_owner,
									   Datum payload, int64 after, Oid caller,
									   Oid tables_owner, const char *error);
extern Datum compensation_ids_array(const int64 *ids, int n);
extern void compensation_retry_here(int64 id, Oid caller, Oid tables_owner);
extern void compensation_cancel_here(int64 id, Oid caller, Oid tables_owner);
extern char *compensation_settle_here(CompensationChange change, int64 id,
									  Oid tables_owner);

/* compensation_external.c */
extern void compensation_complete_here(int64 id, int64 token, Oid caller,
									   Oid tables_owner);
extern void compensation_fail_here(int64 id, int64 token, text *error,
								   Oid caller, Oid tables_owner);
extern int	compensation_claim_here(const char *handler, int32 max_items,
									Datum lease, int64 token, Oid caller,
									Oid tables_owner,
									void (*emit) (HeapTuple tup, TupleDesc desc,
												  void *arg),
									void *arg);


extern char *compensation_change(CompensationChange change, int64 id,
								 int64 token, text *error, Oid caller,
								 Oid tables_owner);
extern int64 compensation_route(int64 after, text *dedup_key, Oid caller,
								Oid tables_owner, text **flow);
extern int64 compensation_enqueue_routed(text *flow, int64 id, const char *handler,
										 Oid handler_owner, Datum payload,
										 text *dedup_key, int32 max_attempts,
										 TimestampTz run_at, int64 after,
										 Oid caller, Oid tables_owner,
										 const char *dead_error);
extern text *compensation_flow_of(int64 id, Oid caller, bool executor,
								  Oid tables_owner);
extern void compensation_claim(Tuplestorestate *result, const char *handler,
							   int32 max_items, Datum lease, Oid caller,
							   Oid tables_owner);

/* compensation_rights.c */
extern Oid	compensation_check_handler(Oid handler, Oid role);
extern char *compensation_handler_name(Oid handler);
extern Oid	compensation_resolve_handler(const char *name, Oid recorded_owner);
extern void compensation_check_item_rights(int64 id, Oid caller, bool executor);
extern void compensation_judge_item_rights(int64 id, Oid caller, bool executor,
										   bool found, Oid enqueued_by,
										   Oid claimed_by);
extern void compensation_begin_item_change(Oid caller, Oid tables_owner,
										   int64 id, bool executor,
										   PaymentsSavedUser *saved);
extern void compensation_end_item_change(PaymentsSavedUser *saved);

/* compensation_run.c */
extern void compensation_run_init(void);
extern bool compensation_handler_running;
extern int64 compensation_batch_token;
extern void compensation_worker_attach(void);

#endif							/* PAYMENTS_COMPENSATION_H */
