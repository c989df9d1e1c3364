/*-------------------------------------------------------------------------
 *
 * payments.h
 *	  What every component of the payments extension shares: the error code
 *	  catalogue, the operator role and the lock spaces.
 *
 * The SQLSTATEs in class PM are part of the extension's API: applications
 * switch on them, so a code, once released, never changes meaning.  The
 * README's error table lists the same codes; keep the two in step.
 *
 * Each component has a header of its own (args.h, spi_util.h,
 * direct_write.h, owner_rights.h, extension_catalog.h, ...); a file
 * includes those it uses.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_H
#define PAYMENTS_H

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

/* Callbacks (PM4xx) */
#define ERRCODE_PM_CALLBACK_SIGNATURE_MISMATCH	MAKE_SQLSTATE('P','M','4','0','1')
#define ERRCODE_PM_CALLBACK_NO_VALID_KEY		MAKE_SQLSTATE('P','M','4','0','2')
#define ERRCODE_PM_CALLBACK_TIMESTAMP_OUTSIDE	MAKE_SQLSTATE('P','M','4','0','3')
#define ERRCODE_PM_CALLBACK_HEADER_INVALID		MAKE_SQLSTATE('P','M','4','0','4')
#define ERRCODE_PM_CALLBACK_NOT_FOUND			MAKE_SQLSTATE('P','M','4','0','5')
#define ERRCODE_PM_CALLBACK_EVENT_MISMATCH		MAKE_SQLSTATE('P','M','4','0','6')
#define ERRCODE_PM_CALLBACK_TARGET_NOT_FOUND	MAKE_SQLSTATE('P','M','4','0','7')
#define ERRCODE_PM_CALLBACK_OUT_OF_ORDER		MAKE_SQLSTATE('P','M','4','0','8')
#define ERRCODE_PM_CALLBACK_IN_PROGRESS		MAKE_SQLSTATE('P','M','4','0','9')

/* Reconciliation (PM5xx) */
#define ERRCODE_PM_RECONCILIATION_NOT_FOUND	MAKE_SQLSTATE('P','M','5','0','1')
#define ERRCODE_PM_STATEMENT_NOT_FOUND			MAKE_SQLSTATE('P','M','5','0','2')
#define ERRCODE_PM_STATEMENT_CLOSED			MAKE_SQLSTATE('P','M','5','0','3')
#define ERRCODE_PM_STATEMENT_OPEN				MAKE_SQLSTATE('P','M','5','0','4')
#define ERRCODE_PM_STATEMENT_HEADER_MISMATCH	MAKE_SQLSTATE('P','M','5','0','5')
#define ERRCODE_PM_STATEMENT_LINE_OUTSIDE		MAKE_SQLSTATE('P','M','5','0','6')
#define ERRCODE_PM_RECONCILIATION_RUNNING		MAKE_SQLSTATE('P','M','5','0','7')
#define ERRCODE_PM_RECONCILIATION_ITEM_NOT_FOUND MAKE_SQLSTATE('P','M','5','0','8')
#define ERRCODE_PM_DIFFERENCE_HEALED			MAKE_SQLSTATE('P','M','5','0','9')

/* TCC fence (PM6xx) */
#define ERRCODE_PM_TCC_NOT_TRIED				MAKE_SQLSTATE('P','M','6','0','1')
#define ERRCODE_PM_TCC_CANCELLED				MAKE_SQLSTATE('P','M','6','0','2')
#define ERRCODE_PM_TCC_CONFIRMED				MAKE_SQLSTATE('P','M','6','0','3')

/* Sagas (PM6xx, after the TCC fence's) */
#define ERRCODE_PM_SAGA_NOT_FOUND				MAKE_SQLSTATE('P','M','6','0','4')
#define ERRCODE_PM_SAGA_COMPLETED				MAKE_SQLSTATE('P','M','6','0','5')
#define ERRCODE_PM_SAGA_ABORTED					MAKE_SQLSTATE('P','M','6','0','6')
#define ERRCODE_PM_SAGA_STEP_CONFLICT			MAKE_SQLSTATE('P','M','6','0','7')

/* Outbox (PM8xx) */
#define ERRCODE_PM_OUTBOX_MESSAGE_NOT_FOUND	MAKE_SQLSTATE('P','M','8','0','1')
#define ERRCODE_PM_OUTBOX_CLAIM_CONFLICT		MAKE_SQLSTATE('P','M','8','0','2')
#define ERRCODE_PM_OUTBOX_STATE_CONFLICT		MAKE_SQLSTATE('P','M','8','0','3')

/* Fault drills */
#define ERRCODE_PM_FAULT_INJECTED				MAKE_SQLSTATE('P','M','7','0','1')

/*
 * The role whose members steer every role's compensations and read every
 * provider's callbacks (src/sql/90_privileges.sql creates it).
 */
#define PAYMENTS_OPERATOR_ROLE	"payments_operator"

/*
 * Lock spaces.  The extension takes heavyweight locks with advisory lock
 * tags whose fourth field is one of these values; the SQL-level advisory
 * lock functions only use 1 and 2, so these never collide with an
 * application's own advisory locks.  They show in pg_locks as
 * locktype "advisory" with objsubid set to the value below.
 */
#define PAYMENTS_LOCKSPACE_IDEMPOTENCY	0x504D	/* 'P' 'M' */
#define PAYMENTS_LOCKSPACE_CALLBACK		0x504E
#define PAYMENTS_LOCKSPACE_RECONCILIATION	0x504F
#define PAYMENTS_LOCKSPACE_OUTBOX		0x5050

/* Ascending order of int64 values, for qsort and bsearch */
static inline int
payments_int64_cmp(const void *a, const void *b)
{
	int64		x = *(const int64 *) a;
	int64		y = *(const int64 *) b;

	return (x > y) - (x < y);
}

#endif							/* PAYMENTS_H */
