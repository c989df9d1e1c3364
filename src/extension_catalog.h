/*-------------------------------------------------------------------------
 *
 * extension_catalog.h
 *	  Where the extension's own objects are: its schema, as pg_extension
 *	  records it, and its relations, by OID.
 *
 * Nothing of the extension is ever found by name in a schema a database
 * owner may have created (DESIGN.md, security model).  Every component
 * asks here, and one cache with one invalidation callback keeps the
 * answers until the catalog changes.
 *
 *-------------------------------------------------------------------------
 */
#ifndef EXTENSION_CATALOG_H
#define EXTENSION_CATALOG_H

#include "utils/inval.h"
#include "utils/relcache.h"

/* The extension's relations that C code opens, locks or reads directly */
typedef enum PaymentsRelation
{
	PAYMENTS_REL_IDEMPOTENCY_KEYS,
	PAYMENTS_REL_IDEMPOTENCY_KEYS_PKEY,
	PAYMENTS_REL_IDEMPOTENCY_SCOPES,
	PAYMENTS_REL_STOCK_SLOTS,
	PAYMENTS_REL_RESERVATIONS,
	PAYMENTS_REL_RESERVATIONS_ID_SEQ,
	PAYMENTS_REL_STATE_MACHINE_DEFINITIONS,
	PAYMENTS_REL_STATE_HISTORY,
	PAYMENTS_REL_STATE_HISTORY_ID_SEQ,
	PAYMENTS_REL_TCC_FENCE,
	PAYMENTS_REL_TCC_FENCE_PKEY,
	PAYMENTS_REL_COMPENSATIONS_ID_SEQ,
	PAYMENTS_REL_OUTBOX,
	PAYMENTS_REL_OUTBOX_ID_SEQ,
	PAYMENTS_REL_OUTBOX_KEY_IDX,
	PAYMENTS_REL_OUTBOX_GRANTS,
	PAYMENTS_REL_OUTBOX_GRANTS_PKEY,
	PAYMENTS_NUM_RELATIONS
} PaymentsRelation;

/* Whether this database has the extension in the library's version */
typedef enum PaymentsInstallState
{
	PAYMENTS_NOT_INSTALLED,
	PAYMENTS_OTHER_VERSION,		/* installed, but not PAYMENTS_VERSION */
	PAYMENTS_INSTALLED
} PaymentsInstallState;

extern PaymentsInstallState payments_install_state(char **version);
extern void payments_report_other_version(int elevel, const char *version);

extern void payments_register_relcache_callback(RelcacheCallbackFunction fn,
											  Datum arg);
extern Oid	payments_schema_oid(void);
extern const char *payments_schema_quoted(void);
extern uint64 payments_schema_generation(void);
extern Oid	payments_relation(PaymentsRelation rel);
extern uint64 payments_relations_generation(void);

extern void payments_check_columns(Relation rel, const char *const *names,
								   const Oid *types, int natts,
								   AttrNumber *attnums);
extern void payments_check_key_index(Relation rel, Relation index,
									 const AttrNumber *attnums, int nkeys);
extern void payments_check_index_prefix(Relation rel, Relation index,
										const AttrNumber *attnums, int nkeys,
										AttrNumber null_attnum);

#endif							/* EXTENSION_CATALOG_H */
