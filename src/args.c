/*-------------------------------------------------------------------------
 *
 * args.c
 *	  Argument checks shared by the SQL-callable functions.
 *
 * The functions are declared non-STRICT so that a NULL argument raises a
 * clear error instead of silently returning NULL: a caller that passes a
 * NULL key by mistake must not believe the request was deduplicated.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"

#include "datatype/timestamp.h"
#include "fmgr.h"
#include "utils/timestamp.h"

void
payments_arg_not_null(FunctionCallInfo fcinfo, int argno, const char *what)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be null", what)));
}

/*
 * A text argument of 1 to maxlen bytes.  Lengths are in bytes, not
 * characters, because they bound what the tables store.
 */
text *
payments_arg_text(FunctionCallInfo fcinfo, int argno, const char *what,
				  int maxlen)
{
	text	   *t;
	int			len;

	payments_arg_not_null(fcinfo, argno, what);
	t = PG_GETARG_TEXT_PP(argno);
	len = VARSIZE_ANY_EXHDR(t);
	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", what)));
	if (len > maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("The value is %d bytes long; the limit is %d bytes.",
						   len, maxlen)));
	return t;
}

/*
 * A positive interval no longer than max_usecs.  Months count as 30 days,
 * as in interval comparison.  The sum is taken in double precision so that
 * an absurd interval cannot overflow on its way to being refused.
 */
Datum
payments_arg_interval(FunctionCallInfo fcinfo, int argno, const char *what,
					  int64 max_usecs)
{
	Interval   *iv;
	double		usecs;

	payments_arg_not_null(fcinfo, argno, what);
	iv = PG_GETARG_INTERVAL_P(argno);
	usecs = (double) iv->time +
		(double) iv->day * USECS_PER_DAY +
		(double) iv->month * DAYS_PER_MONTH * USECS_PER_DAY;
	if (usecs <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be positive", what)));
	if (usecs > (double) max_usecs)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is too long", what),
				 errdetail("The limit is %d days.",
						   (int) (max_usecs / USECS_PER_DAY))));
	return PG_GETARG_DATUM(argno);
}

/* Refuse v outside [min, max] with 22003; both integer widths use it. */
static void
check_range(const char *what, int64 v, int64 min, int64 max)
{
	if (v < min || v > max)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be between " INT64_FORMAT " and " INT64_FORMAT,
						what, min, max),
				 errdetail("The value given is " INT64_FORMAT ".", v)));
}

int32
payments_arg_int_range(FunctionCallInfo fcinfo, int argno, const char *what,
					   int32 min, int32 max)
{
	payments_arg_not_null(fcinfo, argno, what);
	check_range(what, PG_GETARG_INT32(argno), min, max);
	return PG_GETARG_INT32(argno);
}

int64
payments_arg_int64_range(FunctionCallInfo fcinfo, int argno, const char *what,
						 int64 min, int64 max)
{
	payments_arg_not_null(fcinfo, argno, what);
	check_range(what, PG_GETARG_INT64(argno), min, max);
	return PG_GETARG_INT64(argno);
}
