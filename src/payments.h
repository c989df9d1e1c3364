/*-------------------------------------------------------------------------
 *
 * payments.h
 *	  Shared declarations of the payments extension: the error code
 *	  catalogue, the GUC variables and the helpers every capability uses.
 *
 * The SQLSTATEs in class PM are part of the extension's API: applications
 * switch on them, so a code, once released, never changes meaning.  The
 * README's error table lists the same codes; keep the two in step.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_H
#define PAYMENTS_H

#include "postgres.h"

#include "executor/executor.h"
#include "executor/spi.h"
#include "fmgr.h"

#include "extension_catalog.h"

/* Idempotency keys (PM0xx) */
#define ERRCODE_PM_IDEMPOTENCY_KEY_REUSED		MAKE_SQLSTATE('P','M','0','0','1')
#define ERRCODE_PM_IDEMPOTENCY_IN_PROGRESS		MAKE_SQLSTATE('P','M','0','0','2')
#define ERRCODE_PM_IDEMPOTENCY_KEY_NOT_FOUND	MAKE_SQLSTATE('P','M','0','0','3')
#define ERRCODE_PM_IDEMPOTENCY_KEY_COMPLETED	MAKE_SQLSTATE('P','M','0','0','4')

/* Inventory reservations (PM1xx) */
#define ERRCODE_PM_INSUFFICIENT_STOCK			MAKE_SQLSTATE('P','M','1','0','1')
#define ERRCODE_PM_RESERVATION_EXPIRED			MAKE_SQLSTATE('P','M','1','0','2')
#define ERRCODE_PM_STOCK_BELOW_HELD				MAKE_SQLSTATE('P','M','1','0','3')
#define ERRCODE_PM_RESERVATION_STATE_CONFLICT	MAKE_SQLSTATE('P','M','1','0','4')
#define ERRCODE_PM_RESERVATION_NOT_FOUND		MAKE_SQLSTATE('P','M','1','0','5')

/* State guard (PM2xx) */
#define ERRCODE_PM_INVALID_TRANSITION			MAKE_SQLSTATE('P','M','2','0','1')
#define ERRCODE_PM_UNKNOWN_STATE				MAKE_SQLSTATE('P','M','2','0','2')

/* Compensations (PM3xx); PM304 is only recorded in compensation_attempts */
#define ERRCODE_PM_COMPENSATION_NOT_FOUND		MAKE_SQLSTATE('P','M','3','0','1')
#define ERRCODE_PM_COMPENSATION_STATE_CONFLICT	MAKE_SQLSTATE('P','M','3','0','2')
#define ERRCODE_PM_COMPENSATION_NOT_EXTERNAL	MAKE_SQLSTATE('P','M','3','0','3')
#define ERRCODE_PM_COMPENSATION_LEASE_EXPIRED	MAKE_SQLSTATE('P','M','3','0','4')

/*
 * Lock spaces.  The extension takes heavyweight locks with advisory lock
 * tags whose fourth field is one of these values; the SQL-level advisory
 * lock functions only use 1 and 2, so these never collide with an
 * application's own advisory locks.  They show in pg_locks as
 * locktype "advisory" with objsubid set to the value below.
 */
#define PAYMENTS_LOCKSPACE_IDEMPOTENCY	0x504D	/* 'P' 'M' */

/* GUC variables, defined in payments.c */
extern bool payments_idempotency_wait;
extern int	payments_idempotency_lease;
extern int	payments_backoff_base;
extern int	payments_backoff_max;
extern int	payments_max_attempts;
extern int	payments_handler_timeout;
extern int	payments_max_payload_size;

/* payments.c */
extern void payments_check_writable(const char *what);

/* The caller's role and settings, saved while acting as the owner */
typedef struct PaymentsSavedUser
{
	Oid			userid;
	int			sec_context;
	int			guc_level;		/* -1 if search_path was not pinned */
} PaymentsSavedUser;

extern Oid	payments_function_owner(Oid fn_oid);
extern void payments_begin_as_owner(Oid owner, bool pin_search_path,
									PaymentsSavedUser *saved);
extern void payments_end_as_owner(PaymentsSavedUser *saved);

/* args.c: argument checks that raise the documented standard SQLSTATEs */
extern text *payments_arg_text(FunctionCallInfo fcinfo, int argno,
							   const char *what, int maxlen);
extern void payments_arg_not_null(FunctionCallInfo fcinfo, int argno,
								  const char *what);
extern Datum payments_arg_interval(FunctionCallInfo fcinfo, int argno,
								   const char *what, int64 max_usecs);
extern int32 payments_arg_int_range(FunctionCallInfo fcinfo, int argno,
									const char *what, int32 min, int32 max);
extern int64 payments_arg_int64_range(FunctionCallInfo fcinfo, int argno,
									  const char *what, int64 min, int64 max);

/* spi_util.c: plans prepared once per backend */
extern SPIPlanPtr payments_prepare(SPIPlanPtr *cache, const char *sql,
										  int nargs, const Oid *argtypes);
extern uint64 payments_execute(SPIPlanPtr plan, Datum *values,
							   const char *nulls, int expected, long tcount);

/* direct_write.c: one row written without SQL; see the file header */
typedef struct DirectWrite
{
	EState	   *estate;
	ResultRelInfo *rri;
	EPQState	epqstate;
	const AttrNumber *cols;		/* the columns an UPDATE sets */
	int			ncols;
} DirectWrite;

extern void payments_direct_begin(DirectWrite *dw, Relation rel,
								  Snapshot snapshot, CmdType cmd,
								  const AttrNumber *cols, int ncols);
extern void payments_direct_update(DirectWrite *dw, TupleTableSlot *row,
								   const Datum *values, const bool *nulls);
extern void payments_direct_check_columns(Relation rel,
										  const char *const *names,
										  const Oid *types, int natts);
extern TupleTableSlot *payments_direct_slot(DirectWrite *dw);
extern TupleTableSlot *payments_direct_table_slot(DirectWrite *dw);
extern void payments_direct_end(DirectWrite *dw);

/* fingerprint.c */
#define PAYMENTS_FINGERPRINT_LEN 32		/* SHA-256 */
extern void payments_sha256(const void *data, size_t len,
							unsigned char out[PAYMENTS_FINGERPRINT_LEN]);
extern bool payments_digest_equal(const unsigned char *a,
								  const unsigned char *b, size_t len);
extern void payments_jsonb_fingerprint(Datum jsonb,
									   unsigned char out[PAYMENTS_FINGERPRINT_LEN]);

#endif							/* PAYMENTS_H */
