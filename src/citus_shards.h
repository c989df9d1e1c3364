/*-------------------------------------------------------------------------
 *
 * citus_shards.h
 *	  The key a call works on, in the layout payments.distribute() makes,
 *	  and the shards of it this node holds (citus_shards.c).
 *
 * A call that reads or writes a distributed table enters its key first;
 * the extension's relations and plans are then the shards of that key on
 * this node.  Without that layout entering a key does nothing.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_CITUS_SHARDS_H
#define PAYMENTS_CITUS_SHARDS_H

#include "extension_catalog.h"

/* What payments_shard_enter returns, for payments_shard_leave */
typedef int64 PaymentsShardContext;

/* payments_shard_key() when no key is entered: no 32-bit hash */
#define PAYMENTS_SHARD_NO_KEY PG_INT64_MIN

extern bool payments_shards_distributed(void);
extern void payments_citus_use_2pc(void);
extern PaymentsShardContext payments_shard_enter(text *key, const char *kind);
extern void payments_shard_leave(PaymentsShardContext previous);
extern PaymentsShardContext payments_shard_clear(void);
extern bool payments_shard_local(text *key);
extern int64 payments_shard_key(void);
extern bool payments_shard_enter_hash(int64 hash, PaymentsShardContext *previous);
extern void payments_shard_foreach(void (*fn) (text *probe, bool local, void *arg),
								   void *arg, uint32 start);
extern Oid	payments_shard_relation(PaymentsRelation which, const char *relname);
extern char *payments_shard_table_name(const char *relname, int len,
									   bool *citus);
extern int64 payments_shard_current(void);
extern int64 payments_shard_unique_id(int64 next);
extern int64 payments_shard_id_base(void);
extern Oid	payments_shard_logical_relid(Oid relid);

/* citus_delegation.c */
extern void payments_citus_delegation_init(void);
extern void payments_shard_foreach_local(void (*fn) (void *arg), void *arg);
extern int32 payments_shard_batches(int32 max_rows,
									int32 (*batch) (int32 max_rows, void *arg),
									void *arg);

#endif							/* PAYMENTS_CITUS_SHARDS_H */
