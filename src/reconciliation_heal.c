/*-------------------------------------------------------------------------
 *
 * reconciliation_heal.c
 *	  Healing the differences a run found, each once, and accept_difference
 *	  for the ones a person decides to leave as they are.
 *
 * A difference is the same difference in every run that finds it again
 * when it has the same reconciliation, class and reference, and, for a
 * difference of one line rather than of a payment (each further charge of
 * a duplicate_external, a line without a reference), the same external
 * id: a payment charged three times has two charges to refund.  The first
 * run to find it with a policy for its class claims that key in
 * payments.reconciliation_heals and queues the policy's handler with the
 * difference as payload; every later run, a corrected statement of the
 * same period and a concurrent run (which the lock of reconciliation_lock
 * keeps out anyway) find the key taken and queue nothing.  The key lives
 * in a table only the extension writes: as a compensation's dedup key any
 * role able to call the handler could take it first.
 *
 * A waiting row of ours is not healed: its grace has not ended.  A heal is
 * queued as the role the reconciliation belongs to, whoever set the
 * policy or runs reconcile: every one of them has that role's privileges,
 * and a handler chosen by one never runs with another's rights.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "reconciliation.h"
#include "compensation.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

PG_FUNCTION_INFO_V1(payments_accept_difference);

/* How many differences are read at a time */
#define HEAL_BATCH	100

/* The classes of difference a policy may heal */
#define HEAL_CLASSES	6

static SPIPlanPtr claim_plan;
static SPIPlanPtr record_plan;
static SPIPlanPtr item_plan;
static SPIPlanPtr accept_plan;
static SPIPlanPtr decided_plan;
static SPIPlanPtr reaccept_plan;

/*
 * Queue the heal of each difference of run_id that has a policy and was
 * neither healed nor accepted before; returns how many were queued.  The
 * caller is connected to SPI and acts as tables_owner.
 */
int64
reconciliation_queue_heals(Reconciliation *r, Statement *s, int64 run_id,
						   Oid tables_owner)
{
	Datum		values[3];
	Portal		portal;
	int64		queued = 0;
	MemoryContext row_cxt;
	MemoryContext outer;
	const char *classes[HEAL_CLASSES];
	Oid			handlers[HEAL_CLASSES];
	int			nhandlers = 0;

	values[0] = Int64GetDatum(run_id);
	values[1] = CStringGetTextDatum(r->name);
	values[2] = CStringGetTextDatum(s->provider);
	payments_prepare(&claim_plan,
					 "INSERT INTO @extschema@.reconciliation_heals"
					 " (reconciliation_id, class, reference, external_id, item_id)"
					 " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
					 5, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID});
	payments_prepare(&record_plan,
					 "UPDATE @extschema@.reconciliation_heals SET compensation_id = $5"
					 " WHERE reconciliation_id = $1 AND class = $2 AND reference = $3"
					 "   AND external_id = $4",
					 5, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID});

	/* planned for this run: it may have ten differences or millions */
	portal = payments_cursor_open_once("SELECT i.reconciliation_id, i.class, i.heal_reference,"
									   "  i.heal_external_id, i.id, p.handler, p.handler_owner::oid,"
									   "  (pg_catalog.to_jsonb(i) - 'waiting' - 'waited'"
									   "   - 'heal_reference' - 'heal_external_id')"
									   "  || pg_catalog.jsonb_build_object('reconciliation', $2,"
									   "                                   'provider', $3)"
									   " FROM @extschema@.reconciliation_items i"
									   " JOIN @extschema@.reconciliation_policies p"
									   "   ON p.reconciliation_id = i.reconciliation_id"
									   "  AND p.class = i.class"
									   " WHERE i.run_id = $1 AND NOT i.waiting AND i.class <> 'matched'"
									   "   AND NOT EXISTS (SELECT FROM @extschema@.reconciliation_heals h"
									   "     WHERE h.reconciliation_id = i.reconciliation_id"
									   "       AND h.class = i.class AND h.reference = i.heal_reference"
									   "       AND h.external_id = i.heal_external_id)"
									   " ORDER BY i.id",
									   3, (Oid[]) {INT8OID, TEXTOID, TEXTOID}, values);

	/* what one difference allocates is freed before the next */
	row_cxt = AllocSetContextCreate(CurrentMemoryContext, "reconciliation heal",
									ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		SPITupleTable *batch;
		uint64		n;

		SPI_cursor_fetch(portal, true, HEAL_BATCH);
		n = SPI_processed;
		if (n == 0)
			break;
		batch = SPI_tuptable;
		for (uint64 i = 0; i < n; i++)
		{
			HeapTuple	tup = batch->vals[i];
			TupleDesc	desc = batch->tupdesc;
			Datum		key[5];
			Oid			handler = InvalidOid;
			char	   *class;
			bool		isnull;

			outer = MemoryContextSwitchTo(row_cxt);
			for (int k = 0; k < 5; k++)
				key[k] = SPI_getbinval(tup, desc, k + 1, &isnull);
			if (payments_execute(claim_plan, key, NULL, SPI_OK_INSERT, 0) == 1)
			{
				/* an SPI call leaves us in the SPI procedure's context */
				MemoryContextSwitchTo(row_cxt);
				/* each policy's handler is looked up once per run */
				class = TextDatumGetCString(key[1]);
				for (int h = 0; h < nhandlers; h++)
					if (strcmp(classes[h], class) == 0)
						handler = handlers[h];
				if (!OidIsValid(handler))
				{
					handler = compensation_resolve_handler(SPI_getvalue(tup, desc, 6),
														   DatumGetObjectId(SPI_getbinval(tup, desc, 7, &isnull)));
					Assert(nhandlers < HEAL_CLASSES);
					classes[nhandlers] = MemoryContextStrdup(outer, class);
					handlers[nhandlers++] = handler;
				}
				key[4] = Int64GetDatum(compensation_enqueue(handler,
															SPI_getbinval(tup, desc, 8, &isnull),
															NULL, 0,
															GetCurrentTransactionStartTimestamp(), 0,
															r->owner, tables_owner));
				payments_execute(record_plan, key, NULL, SPI_OK_UPDATE, 0);
				queued++;
			}
			/* else another item of this run had the same key */
			MemoryContextSwitchTo(outer);
			MemoryContextReset(row_cxt);
		}
		SPI_freetuptable(batch);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(row_cxt);
	return queued;
}

/*
 * payments.accept_difference(item_id, note): a person's decision that a
 * difference needs no heal.  It is refused while a heal is queued or
 * running and once one succeeded; after a heal that failed for good (dead,
 * which it cancels, so that no retry runs it) or was cancelled it is
 * recorded.  A second decision leaves the first.
 */
Datum
payments_accept_difference(PG_FUNCTION_ARGS)
{
	int64		item_id;
	text	   *note;
	Oid			caller = GetUserId();
	PaymentsSavedUser saved;
	Datum		values[7];
	HeapTuple	tup;
	TupleDesc	desc;
	Oid			owner = InvalidOid;
	bool		found;
	char	   *class;
	bool		isnull;

	item_id = payments_arg_int64_range(fcinfo, 0, "item_id", 1, PG_INT64_MAX);
	note = payments_arg_text(fcinfo, 1, "note", RECONCILIATION_NOTE_MAX_BYTES);
	payments_check_not_in_recovery();
	reconciliation_refuse_in_run();

	payments_begin_as_owner(payments_function_owner(fcinfo->flinfo->fn_oid), true, &saved);
	SPI_connect();
	values[0] = Int64GetDatum(item_id);
	payments_prepare(&item_plan,
					 "SELECT i.reconciliation_id, i.class, i.heal_reference,"
					 "  i.heal_external_id, d.name, d.owner::oid"
					 " FROM @extschema@.reconciliation_items i"
					 " JOIN @extschema@.reconciliations d ON d.id = i.reconciliation_id"
					 " WHERE i.id = $1",
					 1, (Oid[]) {INT8OID});
	/* A role that is no operator gets the same error for an unknown id. */
	found = payments_execute(item_plan, values, NULL, SPI_OK_SELECT, 0) == 1;
	if (!found && payments_is_operator(caller))
		ereport(ERROR,
				(errcode(ERRCODE_PM_RECONCILIATION_ITEM_NOT_FOUND),
				 errmsg("reconciliation item %lld does not exist", (long long) item_id)));
	if (found)
	{
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		owner = DatumGetObjectId(SPI_getbinval(tup, desc, 6, &isnull));
	}
	if (!found || !has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for reconciliation item %lld",
						(long long) item_id),
				 errdetail("The reconciliation is defined by a role whose privileges role \"%s\" does not have.",
						   GetUserNameFromId(caller, false))));
	class = SPI_getvalue(tup, desc, 2);
	if (strcmp(class, "matched") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("reconciliation item %lld is not a difference", (long long) item_id),
				 errdetail("Its line and our row matched.")));
	for (int k = 0; k < 4; k++)
		values[k] = SPI_getbinval(tup, desc, k + 1, &isnull);
	values[4] = Int64GetDatum(item_id);
	values[5] = ObjectIdGetDatum(caller);
	values[6] = PointerGetDatum(note);

	payments_prepare(&accept_plan,
					 "INSERT INTO @extschema@.reconciliation_heals"
					 " (reconciliation_id, class, reference, external_id, item_id,"
					 "  accepted_by, accepted_at, note)"
					 " VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.regrole, pg_catalog.now(), $7)"
					 " ON CONFLICT DO NOTHING",
					 7, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID, OIDOID, TEXTOID});
	if (payments_execute(accept_plan, values, NULL, SPI_OK_INSERT, 0) == 0)
	{
		char	   *status;

		Datum		heal;

		/*
		 * The heal row, then its compensation, each locked: a retry of
		 * the compensation waits for this decision and then finds it
		 * cancelled, so a difference is never both accepted and healed.
		 */
		payments_prepare(&decided_plan,
						 "SELECT h.accepted_at IS NOT NULL, h.compensation_id"
						 " FROM @extschema@.reconciliation_heals h"
						 " WHERE h.reconciliation_id = $1 AND h.class = $2 AND h.reference = $3"
						 "   AND h.external_id = $4"
						 " FOR UPDATE",
						 4, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID});
		if (payments_execute(decided_plan, values, NULL, SPI_OK_SELECT, 0) != 1)
			elog(ERROR, "the heal of reconciliation item %lld disappeared", (long long) item_id);
		tup = SPI_tuptable->vals[0];
		desc = SPI_tuptable->tupdesc;
		heal = SPI_getbinval(tup, desc, 2, &isnull);
		status = NULL;
		if (!isnull)
		{
			status = compensation_change(COMPENSATION_ACCEPT, DatumGetInt64(heal),
										 0, NULL, InvalidOid, payments_function_owner(fcinfo->flinfo->fn_oid));
		}
		if (DatumGetBool(SPI_getbinval(tup, desc, 1, &isnull)))
		{
			/* accepted before: the first decision stands */
		}
		else if (status != NULL &&
				 (strcmp(status, "pending") == 0 || strcmp(status, "running") == 0))
			ereport(ERROR,
					(errcode(ERRCODE_PM_DIFFERENCE_HEALED),
					 errmsg("the difference of reconciliation item %lld is being healed",
							(long long) item_id),
					 errhint("Cancel its compensation first if it must not run.")));
		else if (status != NULL && strcmp(status, "succeeded") == 0)
			ereport(ERROR,
					(errcode(ERRCODE_PM_DIFFERENCE_HEALED),
					 errmsg("the difference of reconciliation item %lld has been healed",
							(long long) item_id)));
		else
		{
			payments_prepare(&reaccept_plan,
							 "UPDATE @extschema@.reconciliation_heals"
							 " SET accepted_by = $6::pg_catalog.regrole,"
							 "  accepted_at = pg_catalog.now(), note = $7"
							 " WHERE reconciliation_id = $1 AND class = $2 AND reference = $3"
							 "   AND external_id = $4",
							 7, (Oid[]) {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID, OIDOID, TEXTOID});
			payments_execute(reaccept_plan, values, NULL, SPI_OK_UPDATE, 0);
		}
	}
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_VOID();
}
