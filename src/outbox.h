/*-------------------------------------------------------------------------
 *
 * outbox.h
 *	  The transactional outbox (outbox_send.c, outbox.c, outbox_operator.c,
 *	  outbox_notify.c) and the inbox (inbox.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_OUTBOX_H
#define PAYMENTS_OUTBOX_H

#include "fmgr.h"

/* The longest topic, key, inbox source and inbox message id, in bytes */
#define OUTBOX_NAME_MAX_BYTES	255

/* The channel a relay LISTENs on; each notification's payload is a topic */
#define OUTBOX_CHANNEL			"payments_outbox"

/*
 * Whether the role in parameter caller (an oid) holds privilege ('send' or
 * 'relay') on the topic in parameter topic, itself or through a role it
 * has the privileges of; superuser is the parameter that says the caller
 * is one.
 */
#define OUTBOX_GRANTED_SQL(topic, privilege, caller, superuser) \
	"(" superuser " OR EXISTS (SELECT FROM @extschema@.outbox_grants g" \
	" WHERE g.topic = " topic " AND g.privilege = '" privilege "'" \
	" AND pg_catalog.pg_has_role(" caller ", g.grantee, 'USAGE')))"

extern int64 outbox_arg_id(FunctionCallInfo fcinfo);
extern char *outbox_arg_topic(FunctionCallInfo fcinfo);
extern void outbox_report_not_granted(const char *topic, const char *privilege);
extern void outbox_messages_settled(int topic_col);

/* outbox_send.c */
extern void outbox_send_init(void);

/* outbox_notify.c */
extern int	outbox_notify_interval;
extern void outbox_notify_init(void);
extern void outbox_notify_at_commit(const char *topic, int64 id);

#endif							/* PAYMENTS_OUTBOX_H */
