/*-------------------------------------------------------------------------
 *
 * callback.h
 *	  Provider callbacks: verified, recorded once per event, routed to a
 *	  guarded status column, and chased when they do not come.
 *
 * The files that share this header, one per responsibility:
 *
 *	  callback_keys.c		  providers and their owners, the keyring
 *	  callback_signature.c	  the schemes: parsing a request, checking a
 *							  signature with OpenSSL (callback_signature.h)
 *	  callback_verify.c		  verify_callback: a request against the keyring
 *	  callback_failures.c	  refused callbacks, counted in shared memory
 *	  callback_routes.c		  callback_route, and moving the routed row
 *	  callback_receive.c	  receive_callback, record_query_result
 *	  callback_expectations.c expect_callback, and the worker's chase and
 *							  purge
 *
 * Every SQL function but the worker's tasks (chase_callbacks,
 * purge_callbacks) acts for its caller (GetUserId()): the caller must
 * have the privileges of the provider's owner, the routed UPDATE and a
 * queued handler run with the caller's rights, and the extension's own
 * tables are read and written as their owner.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_CALLBACK_H
#define PAYMENTS_CALLBACK_H

#include "fmgr.h"
#include "datatype/timestamp.h"
#include "utils/jsonb.h"

/* Limits of the SQL arguments */
#define CALLBACK_PROVIDER_MAX_BYTES		63
#define CALLBACK_KEY_ID_MAX_BYTES		255
#define CALLBACK_EVENT_ID_MAX_BYTES		255
#define CALLBACK_PAYMENT_REF_MAX_BYTES	255
#define CALLBACK_EVENT_TYPE_MAX_BYTES	255
#define CALLBACK_SECRET_MAX_BYTES		16384


/* What the first delivery of an event did */
typedef enum CallbackOutcome
{
	CALLBACK_APPLIED,			/* the routed row moved */
	CALLBACK_STALE,				/* the row was there or past it already */
	CALLBACK_CONFLICT,			/* the move is impossible */
	CALLBACK_NEW				/* no route: the application applies it */
} CallbackOutcome;

extern const char *const callback_outcome_names[];

/* callback_keys.c */
extern const char *callback_arg_provider(FunctionCallInfo fcinfo, int argno);
extern Oid	callback_provider_owner(const char *provider, bool claim,
									Oid tables_owner);
extern bool callback_provider_visible(const char *provider, Oid tables_owner);

/* callback_verify.c */
extern void callback_verify_init(void);
extern char *callback_verify(const char *provider, Jsonb *headers,
							 const char *body, Size bodylen, TimestampTz at,
							 Oid tables_owner);
extern Size callback_body_length(Datum body);
extern void callback_check_body_size(Size len);

/* callback_failures.c */
extern void callback_failures_init(void);
extern void callback_count_failure(const char *provider);

/* callback_routes.c: a row of payments.callback_routes */
typedef struct CallbackRoute
{
	Oid			relid;
	char	   *key_col;
	char	   *state_col;
	char	   *to_state;
	char	   *on_conflict;	/* a handler's signature, or NULL */
	Oid			on_conflict_owner;
} CallbackRoute;

extern CallbackRoute *callback_route_find(const char *provider,
										  const char *event_type,
										  Oid tables_owner);
extern bool callback_route_settled(const CallbackRoute *route,
								   const char *provider,
								   const char *event_id,
								   const char *payment_ref,
								   const char *event_type);
extern CallbackOutcome callback_route_apply(const CallbackRoute *route,
											const char *provider,
											const char *event_id,
											const char *payment_ref,
											const char *event_type,
											Jsonb *payload,
											Oid tables_owner,
											int64 *compensation_id);

/* callback_receive.c */
extern void callback_receive_init(void);

/* callback_expectations.c */
extern void callback_expectations_init(void);
extern void callback_expectations_meet(const char *provider,
									   const char *payment_ref,
									   const char *event_id,
									   Oid tables_owner);

#endif							/* PAYMENTS_CALLBACK_H */
