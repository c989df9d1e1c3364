/*-------------------------------------------------------------------------
 *
 * reconciliation.h
 *	  Declarations shared by the reconciliation's definitions
 *	  (reconciliation_define.c), statements (provider_statement.c), runs
 *	  (reconciliation_run.c) and heals (reconciliation_heal.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_RECONCILIATION_H
#define PAYMENTS_RECONCILIATION_H

#include "fmgr.h"
#include "datatype/timestamp.h"

/* Limits of the SQL arguments */
#define RECONCILIATION_NAME_MAX_BYTES	200
#define STATEMENT_PROVIDER_MAX_BYTES	200
#define STATEMENT_SOURCE_MAX_BYTES		1000
#define RECONCILIATION_NOTE_MAX_BYTES	2000

/* The longest reference a line (statement_lines' CHECK) or a row may have */
#define RECONCILIATION_REF_MAX_BYTES	200

/* A reconciliation as defined (reconciliation_lookup) */
typedef struct Reconciliation
{
	int64		id;
	char	   *name;
	Oid			source;
	char	   *ref_col;
	char	   *amount_col;
	char	   *status_col;
	char	   *at_col;
	char	   *currency_col;	/* NULL: no currency on our side */
	Datum		status_map;		/* jsonb, or 0 */
	Datum		grace;			/* interval */
	Datum		tolerance;		/* numeric */
	Oid			owner;			/* the role it belongs to */
} Reconciliation;

/* A statement (statement_lookup) */
typedef struct Statement
{
	int64		id;
	char	   *provider;
	TimestampTz lower;
	TimestampTz upper;
	bool		lower_inc;
	bool		upper_inc;
	bool		closed;
	Oid			opened_by;
} Statement;

/* reconciliation_define.c */
extern const char *reconciliation_arg_name(FunctionCallInfo fcinfo, int argno);
extern void reconciliation_lock(const char *name, bool wait);
extern Reconciliation *reconciliation_lookup(const char *name, Oid caller,
											 Oid tables_owner);
extern void reconciliation_check_source(Oid relid, const char *const *cols,
										Oid role, char **relname,
										bool *ref_unique, bool *direct);

/* provider_statement.c */
extern void statement_init(void);
extern Statement *statement_lookup(int64 id, Oid caller, Oid tables_owner,
								   bool for_update);

/* reconciliation_run.c */
extern void reconciliation_refuse_in_run(void);

/* reconciliation_heal.c */
extern int64 reconciliation_queue_heals(Reconciliation *r, Statement *s,
										int64 run_id, Oid tables_owner);

#endif							/* PAYMENTS_RECONCILIATION_H */
