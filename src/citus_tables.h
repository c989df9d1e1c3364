/*-------------------------------------------------------------------------
 *
 * citus_tables.h
 *	  Whether Citus manages a table the extension reads or writes
 *	  (citus_tables.c).
 *
 * The extension opens its tables by OID and writes their heap directly or
 * plans SQL that Citus cannot distribute.  On a table Citus manages, the
 * local relation is an empty shell and the rows are in shards: every entry
 * point asks here first and refuses with a clear error rather than read or
 * write the shell (DESIGN.md, scale-out).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_CITUS_TABLES_H
#define PAYMENTS_CITUS_TABLES_H

#include "utils/relcache.h"

/* How Citus manages the extension's tables */
typedef enum PaymentsCitusLayout
{
	PAYMENTS_CITUS_NONE,		/* not at all: every table is local */
	PAYMENTS_CITUS_DISTRIBUTED, /* as payments.distribute() lays them out */
	PAYMENTS_CITUS_UNSUPPORTED	/* any other way: every call is refused */
} PaymentsCitusLayout;

extern PaymentsCitusLayout payments_citus_layout(int32 *colocation);
extern uint64 payments_citus_generation(void);
extern bool payments_citus_manages_extension(char **tables);
extern void payments_refuse_citus_extension(void);
extern void payments_refuse_citus_guarded(Relation rel);
extern void payments_citus_before_drop(void);

#endif							/* PAYMENTS_CITUS_TABLES_H */
