/*-------------------------------------------------------------------------
 *
 * args.c
 *	  The checks every SQL-callable function makes before it acts.
 *
 * The functions are declared non-STRICT so that a NULL argument raises a
 * clear error instead of silently returning NULL: a caller that passes a
 * NULL key by mistake must not believe the request was deduplicated.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "args.h"

#include "access/xlog.h"
#include "datatype/timestamp.h"
#include "utils/builtins.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

/*
 * Refuse to write during recovery with a message that says why, rather than
 * letting the first INSERT fail with a generic read-only error.
 */
void
payments_check_not_in_recovery(void)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("recovery is in progress"),
				 errdetail("This function of extension \"payments\" writes to the database, which a server in recovery cannot do."),
				 errhint("Call it on the primary server.")));
}

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
 * Each field of a TTL or lease interval must be shorter than this many
 * years before the interval is added to a timestamp: no legitimate value
 * comes near it, and with it the sum cannot leave the timestamp range.
 */
#define INTERVAL_FIELD_MAX_YEARS	1000

static void
report_not_positive(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s must be positive", what)));
}

static void
report_too_long(const char *what, int64 max_usecs)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("%s is too long", what),
			 errdetail("The limit is %d days.",
					   (int) (max_usecs / USECS_PER_DAY))));
}

/*
 * A TTL or lease: an interval that, added to the current time, gives a time
 * after it and at most max_usecs after it.  Months and days are calendar
 * units (a month back from March 31 is February 28 or 29, a day may be 23
 * hours), so only the sum tells: '-2 months 61 days' is no TTL at all in
 * most months, whatever its 30-day approximation says.
 *
 * Returns the span measured now, as an interval of microseconds only.  The
 * caller adds it to the clock a moment later, and a calendar interval added
 * then could land elsewhere (across a month end or a DST change); a fixed
 * span cannot land in the past or past the limit.
 */
Datum
payments_arg_interval(FunctionCallInfo fcinfo, int argno, const char *what,
					  int64 max_usecs)
{
	Interval   *iv;
	Interval   *span;
	TimestampTz now;
	TimestampTz end;
	int64		usecs;

	payments_arg_not_null(fcinfo, argno, what);
	iv = PG_GETARG_INTERVAL_P(argno);

	if (iv->month > INTERVAL_FIELD_MAX_YEARS * MONTHS_PER_YEAR ||
		iv->month < -INTERVAL_FIELD_MAX_YEARS * MONTHS_PER_YEAR ||
		iv->day > INTERVAL_FIELD_MAX_YEARS * 366 ||
		iv->day < -INTERVAL_FIELD_MAX_YEARS * 366 ||
		iv->time > INTERVAL_FIELD_MAX_YEARS * 366 * USECS_PER_DAY ||
		iv->time < -INTERVAL_FIELD_MAX_YEARS * 366 * USECS_PER_DAY)
	{
		if (iv->month >= 0 && iv->day >= 0 && iv->time >= 0)
			report_too_long(what, max_usecs);
		if (iv->month <= 0 && iv->day <= 0 && iv->time <= 0)
			report_not_positive(what);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is out of range", what),
				 errdetail("Its months, days and time must each be shorter than %d years.",
						   INTERVAL_FIELD_MAX_YEARS)));
	}

	now = GetCurrentTimestamp();
	end = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
												  TimestampTzGetDatum(now),
												  IntervalPGetDatum(iv)));
	usecs = end - now;
	if (usecs <= 0)
		report_not_positive(what);
	if (usecs > max_usecs)
		report_too_long(what, max_usecs);

	span = (Interval *) palloc(sizeof(Interval));
	span->time = usecs;
	span->day = 0;
	span->month = 0;
	return IntervalPGetDatum(span);
}

/* Refuse v outside [min, max] with 22003; both integer widths use it. */
static void
check_range(const char *what, int64 v, int64 min, int64 max)
{
	if (v < min || v > max)
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be between %lld and %lld",
						what, (long long) min, (long long) max),
				 errdetail("The value given is %lld.", (long long) v)));
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

/* An amount of money as numeric: finite and not negative. */
Datum
payments_arg_amount(FunctionCallInfo fcinfo, int argno, const char *what)
{
	Numeric		n;

	payments_arg_not_null(fcinfo, argno, what);
	n = PG_GETARG_NUMERIC(argno);
	if (numeric_is_nan(n) || numeric_is_inf(n))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be a finite number", what)));
	if (DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(n),
										  NumericGetDatum(int64_to_numeric(0)))) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what)));
	return NumericGetDatum(n);
}
