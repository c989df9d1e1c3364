/*-------------------------------------------------------------------------
 *
 * outbox_operator.c
 *	  What operators do with the outbox: grant and revoke the right to send
 *	  to a topic or relay it, give a dead message its attempts again, and
 *	  skip a message so that the later ones of its key go on.
 *
 * These functions are granted to payments_operator and check the caller's
 * membership again, so that a grant of EXECUTE to another role by mistake
 * gives it nothing.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "outbox.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/syscache.h"

PG_FUNCTION_INFO_V1(payments_outbox_grant);
PG_FUNCTION_INFO_V1(payments_outbox_revoke);
PG_FUNCTION_INFO_V1(payments_outbox_retry);
PG_FUNCTION_INFO_V1(payments_outbox_skip);

static SPIPlanPtr grant_plan;
static SPIPlanPtr revoke_plan;
static SPIPlanPtr retry_plan;
static SPIPlanPtr skip_plan;
static SPIPlanPtr status_plan;

static void
check_operator(const char *action)
{
	if (!payments_is_operator(GetUserId()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to %s", action),
				 errdetail("Only members of role \"%s\" may do this.",
						   PAYMENTS_OPERATOR_ROLE)));
}

/* The (topic, grantee, privilege) arguments of grant and revoke */
static void
grant_args(FunctionCallInfo fcinfo, Datum *values)
{
	text	   *privilege;
	char	   *p;

	values[0] = PointerGetDatum(payments_arg_text(fcinfo, 0, "topic",
												  OUTBOX_NAME_MAX_BYTES));
	payments_arg_not_null(fcinfo, 1, "grantee");
	values[1] = PG_GETARG_DATUM(1);
	privilege = payments_arg_text(fcinfo, 2, "privilege", 16);
	p = text_to_cstring(privilege);
	if (strcmp(p, "send") != 0 && strcmp(p, "relay") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unrecognized outbox privilege \"%s\"", p),
				 errhint("The privileges are \"send\" and \"relay\".")));
	values[2] = PointerGetDatum(privilege);
	if (!OidIsValid(DatumGetObjectId(values[1])) ||
		!SearchSysCacheExists1(AUTHOID, values[1]))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("role with OID %u does not exist",
						DatumGetObjectId(values[1]))));
}

/*
 * Run one of the statements below as the tables' owner, checking that SPI
 * answers expected; returns the number of rows it changed.
 */
static uint64
run_as_owner(FunctionCallInfo fcinfo, SPIPlanPtr *plan, const char *sql,
			 int nargs, const Oid *argtypes, Datum *values, int expected)
{
	PaymentsSavedUser saved;
	uint64		n;

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(plan, sql, nargs, argtypes);
	n = payments_execute(*plan, values, NULL, expected, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	return n;
}

/*
 * payments.outbox_grant(topic, grantee, privilege): members of grantee may
 * send to the topic ('send') or claim, acknowledge and fail its messages
 * ('relay').  Granting twice is a no-op.
 */
Datum
payments_outbox_grant(PG_FUNCTION_ARGS)
{
	Datum		values[4];

	check_operator("grant outbox privileges");
	grant_args(fcinfo, values);
	payments_check_not_in_recovery();
	values[3] = ObjectIdGetDatum(GetUserId());
	(void) run_as_owner(fcinfo, &grant_plan,
						"INSERT INTO @extschema@.outbox_grants"
						" (topic, grantee, privilege, granted_by)"
						" VALUES ($1, $2::regrole, $3, $4::regrole)"
						" ON CONFLICT DO NOTHING",
						4, (Oid[]) {TEXTOID, OIDOID, TEXTOID, OIDOID}, values,
						SPI_OK_INSERT);
	PG_RETURN_VOID();
}

/*
 * payments.outbox_revoke(topic, grantee, privilege): takes back a grant.
 * Revoking what was not granted is a no-op.  A relay's claims made before
 * stay valid until they are acknowledged, failed or lapse, but its acks
 * and nacks are refused from then on, as its claims are.
 */
Datum
payments_outbox_revoke(PG_FUNCTION_ARGS)
{
	Datum		values[3];

	check_operator("revoke outbox privileges");
	grant_args(fcinfo, values);
	payments_check_not_in_recovery();
	(void) run_as_owner(fcinfo, &revoke_plan,
						"DELETE FROM @extschema@.outbox_grants"
						" WHERE topic = $1 AND grantee = $2::regrole AND privilege = $3",
						3, (Oid[]) {TEXTOID, OIDOID, TEXTOID}, values,
						SPI_OK_DELETE);
	PG_RETURN_VOID();
}

/* A retry or skip changed nothing: the message is unknown or not in a state for it */
static void
report_state_conflict(FunctionCallInfo fcinfo, int64 id, bool retrying)
{
	PaymentsSavedUser saved;
	char	   *status;

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&status_plan,
					 "SELECT status FROM @extschema@.outbox WHERE id = $1",
					 1, (Oid[]) {INT8OID});
	payments_execute(status_plan, (Datum[]) {Int64GetDatum(id)}, NULL,
					 SPI_OK_SELECT, 0);
	status = payments_spi_first_text(1);
	SPI_finish();
	payments_end_as_owner(&saved);

	if (status == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_OUTBOX_MESSAGE_NOT_FOUND),
				 errmsg("outbox message %lld does not exist", (long long) id)));
	ereport(ERROR,
			(errcode(ERRCODE_PM_OUTBOX_STATE_CONFLICT),
			 retrying ?
			 errmsg("cannot retry outbox message %lld", (long long) id) :
			 errmsg("cannot skip outbox message %lld", (long long) id),
			 errdetail("Its status is \"%s\".", status),
			 retrying ?
			 errhint("Only a dead message can be retried.") :
			 errhint("Only a pending or dead message can be skipped; a message in flight is acknowledged or failed by its relay, or its lease runs out.")));
}

/*
 * payments.outbox_retry(id): a dead message gets its attempts again and is
 * due at once.
 */
Datum
payments_outbox_retry(PG_FUNCTION_ARGS)
{
	int64		id = outbox_arg_id(fcinfo);

	check_operator("retry outbox messages");
	payments_check_not_in_recovery();
	if (run_as_owner(fcinfo, &retry_plan,
					 "UPDATE @extschema@.outbox"
					 " SET status = 'pending', attempts = 0,"
					 "  next_attempt_at = pg_catalog.clock_timestamp()"
					 " WHERE id = $1 AND status = 'dead'",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(id)},
					 SPI_OK_UPDATE) == 0)
		report_state_conflict(fcinfo, id, true);
	PG_RETURN_VOID();
}

/*
 * payments.outbox_skip(id): a pending or dead message is settled without
 * being delivered, and the next message of its key can be claimed.
 */
Datum
payments_outbox_skip(PG_FUNCTION_ARGS)
{
	int64		id = outbox_arg_id(fcinfo);
	PaymentsSavedUser saved;
	uint64		n;

	check_operator("skip outbox messages");
	payments_check_not_in_recovery();
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid),
							true, &saved);
	SPI_connect();
	payments_prepare(&skip_plan,
					 "UPDATE @extschema@.outbox"
					 " SET status = 'skipped', settled_at = pg_catalog.clock_timestamp()"
					 " WHERE id = $1 AND status IN ('pending', 'dead')"
					 " RETURNING topic, key",
					 1, (Oid[]) {INT8OID});
	n = payments_execute(skip_plan, (Datum[]) {Int64GetDatum(id)}, NULL,
						 SPI_OK_UPDATE_RETURNING, 0);
	/*
	 * Also for a message behind the first: an ack of the first may be making
	 * this one ready right now, and must find the key's lock taken.
	 */
	if (n == 1)
		outbox_messages_settled(1);
	SPI_finish();
	payments_end_as_owner(&saved);
	if (n == 0)
		report_state_conflict(fcinfo, id, false);
	PG_RETURN_VOID();
}
