/*-------------------------------------------------------------------------
 *
 * compensation.h
 *	  Declarations shared by the compensation queue's SQL API
 *	  (compensation.c) and the worker-side execution (compensation_run.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_COMPENSATION_H
#define PAYMENTS_COMPENSATION_H

/* Limits of the SQL arguments */
#define COMPENSATION_MAX_ATTEMPTS_LIMIT	1000
#define COMPENSATION_MAX_ITEMS_LIMIT	100000

/* Error texts are stored and logged clipped to this many bytes */
#define COMPENSATION_ERROR_MAX_BYTES	8192

/*
 * The role whose members may cancel, retry, complete and fail any role's
 * compensations (src/sql/90_privileges.sql creates it)
 */
#define COMPENSATION_OPERATOR_ROLE "payments_operator"

/* SQLSTATE recorded for an attempt whose claim ran out (see payments.h) */
#define COMPENSATION_LEASE_EXPIRED_SQLSTATE "PM304"

/* compensation.c */
extern void compensation_init(void);
extern Oid	compensation_check_handler(Oid handler, Oid role);
extern char *compensation_handler_name(Oid handler);

extern bool compensation_record_failure(int64 id, const char *error,
										const char *sqlstate, int64 worker_token);
extern int	compensation_expire_leases(const char *handler, int max_items);

/* compensation_run.c */
extern void compensation_run_init(void);
extern bool compensation_handler_running;
extern void compensation_worker_attach(void);

#endif							/* PAYMENTS_COMPENSATION_H */
