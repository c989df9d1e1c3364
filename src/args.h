/*-------------------------------------------------------------------------
 *
 * args.h
 *	  The checks every SQL-callable function makes before it acts (args.c):
 *	  its arguments, raising the standard SQLSTATEs the README documents,
 *	  and, if it writes, that the server is not in recovery.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_ARGS_H
#define PAYMENTS_ARGS_H

#include "fmgr.h"

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

extern Datum payments_arg_amount(FunctionCallInfo fcinfo, int argno,
								 const char *what);

extern void payments_check_not_in_recovery(void);

#endif							/* PAYMENTS_ARGS_H */
