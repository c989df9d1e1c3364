/*-------------------------------------------------------------------------
 *
 * tcc_fence.c
 *	  The TCC fence: tcc_try, tcc_confirm and tcc_cancel, called first in
 *	  the local transaction of each phase of a Try-Confirm-Cancel branch,
 *	  and the worker's purge of finished branches.
 *
 * A branch is one row of payments.tcc_fence, written in the caller's
 * transaction, so the fence's answer commits or rolls back with the
 * business work it guards.  The rules:
 *
 *	  Try:     no row: insert it "tried", proceed.  Tried or confirmed: the
 *			   Try committed before, duplicate.  Cancelled or suspended: the
 *			   Cancel came first, suspended (the caller answers failure).
 *	  Confirm: tried: confirmed, proceed.  Confirmed: duplicate.  No row,
 *			   cancelled or suspended: PM601 or PM602.
 *	  Cancel:  tried: cancelled, proceed.  No row: insert it "suspended",
 *			   empty (nothing to undo; the marker refuses a late Try).
 *			   Cancelled or suspended: duplicate.  Confirmed: PM603.
 *
 * Every decision is taken on the branch's row, inserted with ON CONFLICT
 * or updated on the condition of its state, so concurrent calls wait for
 * each other's row and never for a gap: PostgreSQL takes no gap locks, and
 * a conflicting insert waits for the inserting transaction, then sees its
 * row or, if it rolled back, inserts its own.  So exactly one of
 * confirmed, cancelled and suspended wins, each phase proceeds at most
 * once, and no interleaving deadlocks (each call touches one row).  A Try
 * whose transaction rolls back leaves no row, and its Cancel is empty,
 * which is right only because its business work rolled back with it: the
 * fence is sound when the Try's effects are in the same transaction.
 *
 * A branch belongs to the role that wrote it: the role is part of the key,
 * so no other role can see, steer or block it.  The functions act as the
 * caller and take the extension owner's rights only around their own
 * statement (owner_rights.c).  Every name those statements use is
 * qualified, so the caller's search_path cannot change what they mean, and
 * it is left as it is: pinning it would cost a setting per call on the
 * participant's hot path.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "tcc.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/guc.h"

PG_FUNCTION_INFO_V1(payments_tcc_try);
PG_FUNCTION_INFO_V1(payments_tcc_confirm);
PG_FUNCTION_INFO_V1(payments_tcc_cancel);
PG_FUNCTION_INFO_V1(payments_purge_tcc_fence);

/* The longest global transaction, branch or action id, in bytes */
#define TCC_ID_MAX_BYTES	255

/* How often a row that changes under a call is looked at again */
#define TCC_MAX_TRIES		3

static int	tcc_fence_retention = 7 * 24 * 3600;
static int	tcc_stuck_after = 600;

static SPIPlanPtr try_plan;
static SPIPlanPtr state_plan;
static SPIPlanPtr confirm_plan;
static SPIPlanPtr cancel_plan;
static SPIPlanPtr suspend_plan;
static SPIPlanPtr purge_plan;

void
tcc_init(void)
{
	DefineCustomIntVariable("payments.tcc_fence_retention",
							gettext_noop("How long finished TCC branches are kept."),
							gettext_noop("Longer than the coordinator retries a branch, so that a late Try still meets its Cancel's marker."),
							&tcc_fence_retention,
							7 * 24 * 3600,
							60,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("payments.tcc_stuck_after",
							gettext_noop("How long a TCC branch may stay tried before payments.tcc_branches calls it stuck."),
							NULL,
							&tcc_stuck_after,
							600,
							1,
							INT_MAX,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

/* The key of the branch of a call: the caller, gid and branch_id. */
static void
branch_key(FunctionCallInfo fcinfo, Datum *key)
{
	key[0] = ObjectIdGetDatum(GetUserId());
	key[1] = PointerGetDatum(payments_arg_text(fcinfo, 0, "gid", TCC_ID_MAX_BYTES));
	key[2] = PointerGetDatum(payments_arg_text(fcinfo, 1, "branch_id", TCC_ID_MAX_BYTES));
	payments_check_not_in_recovery();
}

/* The state of a branch, by its key */
static const char branch_state_sql[] =
"SELECT state FROM @extschema@.tcc_fence"
" WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
" AND gid OPERATOR(pg_catalog.=) $2 AND branch_id OPERATOR(pg_catalog.=) $3";

/*
 * The state of the branch, or NULL, as the statement's snapshot shows it
 * or, with latest, as it is now.  The caller is connected to SPI.
 */
static char *
branch_state(Datum *key, bool latest)
{
	static const Oid types[] = {OIDOID, TEXTOID, TEXTOID};
	uint64		n;

	if (latest)
		n = payments_execute_latest(branch_state_sql, 3, types, key, NULL,
									SPI_OK_SELECT);
	else
	{
		payments_prepare(&state_plan, branch_state_sql, 3, types);
		n = payments_execute(state_plan, key, NULL, SPI_OK_SELECT, 0);
	}
	if (n == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * Under REPEATABLE READ or SERIALIZABLE, the state the transaction's
 * snapshot shows may be older than the branch: a Try or a Cancel that
 * committed since.  Deciding on it would tell a coordinator "never tried"
 * for a branch that was, so a state that differs from the latest one is a
 * serialization failure, as for the calls that write.
 */
static void
check_state_current(Datum *key, const char *state)
{
	char	   *latest;

	if (!IsolationUsesXactSnapshot())
		return;
	latest = branch_state(key, true);
	if ((latest == NULL) != (state == NULL) ||
		(latest != NULL && strcmp(latest, state) != 0))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("could not serialize access due to a concurrent change of TCC branch \"%s\" of transaction \"%s\"",
						TextDatumGetCString(key[2]), TextDatumGetCString(key[1])),
				 errhint("Retry the transaction.")));
}

/* Whether the branch's row did what plan asks of it. */
static bool
branch_changed(SPIPlanPtr plan, Datum *key, const char *nulls, int expected)
{
	return payments_execute(plan, key, nulls, expected, 0) == 1;
}

static void
report_gone(Datum *key)
{
	ereport(ERROR,
			(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
			 errmsg("TCC branch \"%s\" of transaction \"%s\" keeps changing",
					TextDatumGetCString(key[2]), TextDatumGetCString(key[1])),
			 errhint("Retry the call.")));
}

/*
 * payments.tcc_try(gid, branch_id, action): proceed, duplicate or
 * suspended.
 */
Datum
payments_tcc_try(PG_FUNCTION_ARGS)
{
	Datum		key[4];
	char		nulls[4] = {' ', ' ', ' ', ' '};
	PaymentsSavedUser saved;
	const char *answer = NULL;

	branch_key(fcinfo, key);
	if (PG_ARGISNULL(2))
		nulls[3] = 'n';
	else
		key[3] = PointerGetDatum(payments_arg_text(fcinfo, 2, "action", TCC_ID_MAX_BYTES));

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid), false, &saved);
	SPI_connect();
	payments_prepare(&try_plan,
					 "INSERT INTO @extschema@.tcc_fence (owner, gid, branch_id, action, state)"
					 " VALUES ($1::pg_catalog.regrole, $2, $3, $4, 'tried')"
					 " ON CONFLICT DO NOTHING",
					 4, (Oid[]) {OIDOID, TEXTOID, TEXTOID, TEXTOID});
	for (int tries = 0; answer == NULL; tries++)
	{
		char	   *state;

		if (tries == TCC_MAX_TRIES)
			report_gone(key);
		if (branch_changed(try_plan, key, nulls, SPI_OK_INSERT))
			answer = "proceed";
		else if ((state = branch_state(key, false)) == NULL)
			continue;			/* purged meanwhile: try again */
		else if (strcmp(state, "tried") == 0 || strcmp(state, "confirmed") == 0)
			answer = "duplicate";
		else
			answer = "suspended";
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/* payments.tcc_confirm(gid, branch_id): proceed or duplicate. */
Datum
payments_tcc_confirm(PG_FUNCTION_ARGS)
{
	Datum		key[3];
	PaymentsSavedUser saved;
	const char *answer = "proceed";
	char	   *state;

	branch_key(fcinfo, key);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid), false, &saved);
	SPI_connect();
	payments_prepare(&confirm_plan,
					 "UPDATE @extschema@.tcc_fence SET state = 'confirmed',"
					 " updated_at = pg_catalog.now()"
					 " WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
					 " AND gid OPERATOR(pg_catalog.=) $2 AND branch_id OPERATOR(pg_catalog.=) $3"
					 " AND state OPERATOR(pg_catalog.=) 'tried'",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTOID});
	if (!branch_changed(confirm_plan, key, NULL, SPI_OK_UPDATE))
	{
		state = branch_state(key, false);
		check_state_current(key, state);
		if (state == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PM_TCC_NOT_TRIED),
					 errmsg("TCC branch \"%s\" of transaction \"%s\" was never tried",
							TextDatumGetCString(key[2]), TextDatumGetCString(key[1])),
					 errdetail("A Confirm comes after a committed Try of its branch."),
					 errhint("The coordinator should not confirm a branch whose Try failed.")));
		if (strcmp(state, "confirmed") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_PM_TCC_CANCELLED),
					 errmsg("TCC branch \"%s\" of transaction \"%s\" was cancelled",
							TextDatumGetCString(key[2]), TextDatumGetCString(key[1])),
					 errdetail("A cancelled branch is never confirmed.")));
		answer = "duplicate";
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/* payments.tcc_cancel(gid, branch_id): proceed, empty or duplicate. */
Datum
payments_tcc_cancel(PG_FUNCTION_ARGS)
{
	Datum		key[3];
	PaymentsSavedUser saved;
	const char *answer = NULL;

	branch_key(fcinfo, key);
	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid), false, &saved);
	SPI_connect();
	payments_prepare(&cancel_plan,
					 "UPDATE @extschema@.tcc_fence SET state = 'cancelled',"
					 " updated_at = pg_catalog.now()"
					 " WHERE owner OPERATOR(pg_catalog.=) $1::pg_catalog.regrole"
					 " AND gid OPERATOR(pg_catalog.=) $2 AND branch_id OPERATOR(pg_catalog.=) $3"
					 " AND state OPERATOR(pg_catalog.=) 'tried'",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTOID});
	payments_prepare(&suspend_plan,
					 "INSERT INTO @extschema@.tcc_fence (owner, gid, branch_id, state)"
					 " VALUES ($1::pg_catalog.regrole, $2, $3, 'suspended')"
					 " ON CONFLICT DO NOTHING",
					 3, (Oid[]) {OIDOID, TEXTOID, TEXTOID});

	/*
	 * The update first (the usual case, a Try to undo), then the marker;
	 * a Try that commits in between makes both miss, and the loop looks
	 * again.
	 */
	for (int tries = 0; answer == NULL; tries++)
	{
		char	   *state;

		if (tries == TCC_MAX_TRIES)
			report_gone(key);
		if (branch_changed(cancel_plan, key, NULL, SPI_OK_UPDATE))
			answer = "proceed";
		else if (branch_changed(suspend_plan, key, NULL, SPI_OK_INSERT))
			answer = "empty";
		else if ((state = branch_state(key, false)) == NULL || strcmp(state, "tried") == 0)
			continue;
		else if (strcmp(state, "confirmed") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_PM_TCC_CONFIRMED),
					 errmsg("TCC branch \"%s\" of transaction \"%s\" was confirmed",
							TextDatumGetCString(key[2]), TextDatumGetCString(key[1])),
					 errdetail("A confirmed branch is never cancelled.")));
		else
			answer = "duplicate";
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_TEXT_P(cstring_to_text(answer));
}

/*
 * payments.purge_tcc_fence(max_rows): the worker's task.  Branches that
 * finished longer than payments.tcc_fence_retention ago go, a batch at a
 * time (the BRIN index on created_at, never later than updated_at, finds
 * the candidates); rows that a call holds are skipped, never waited for,
 * and a branch still tried stays (payments.tcc_branches shows it stuck).
 */
Datum
payments_purge_tcc_fence(PG_FUNCTION_ARGS)
{
	int32		max_rows = payments_arg_int_range(fcinfo, 0, "max_rows", 1, 1000000);
	Datum		values[2];
	uint64		n;

	payments_check_not_in_recovery();
	values[0] = Int32GetDatum(max_rows);
	values[1] = Int32GetDatum(tcc_fence_retention);
	SPI_connect();
	payments_prepare(&purge_plan,
					 "DELETE FROM @extschema@.tcc_fence WHERE ctid = ANY (ARRAY("
					 " SELECT ctid FROM @extschema@.tcc_fence"
					 " WHERE created_at < now() - $2 * interval '1 second'"
					 "   AND updated_at < now() - $2 * interval '1 second' AND state <> 'tried'"
					 " LIMIT $1 FOR UPDATE SKIP LOCKED))",
					 2, (Oid[]) {INT4OID, INT4OID});
	n = payments_execute(purge_plan, values, NULL, SPI_OK_DELETE, 0);
	SPI_finish();
	PG_RETURN_INT32((int32) n);
}
