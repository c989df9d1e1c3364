/*-------------------------------------------------------------------------
 *
 * check.h
 *	  User checks: define_check and drop_check (check_define.c), their runs
 *	  by the worker and what the runs record (check_run.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_CHECK_H
#define PAYMENTS_CHECK_H

/* The longest check name, in bytes */
#define CHECK_NAME_MAX_BYTES	255

extern void check_init(void);
extern char *check_wrapped_query(const char *query, const char *tail);
extern void check_begin_read_only(void);

#endif							/* PAYMENTS_CHECK_H */
