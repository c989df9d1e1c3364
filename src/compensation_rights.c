/*-------------------------------------------------------------------------
 *
 * compensation_rights.c
 *	  Who may queue, claim and steer which compensations.
 *
 * A handler runs as the role that queued it, so enqueueing requires what
 * calling it directly would: USAGE on its schema and EXECUTE on it,
 * checked for the caller's role (compensation_check_handler, which the
 * worker calls again before every run).  So none of the queue's functions
 * is SECURITY DEFINER (owner_rights.c says why); they take their owner's
 * rights themselves, only around their own statements (their SET clause
 * pins search_path).
 *
 * Who may do what:
 *	- enqueue: USAGE + EXECUTE on the handler.  A dedup key belongs to its
 *	  handler; a key already used by a role whose privileges the caller does
 *	  not have is refused without its item's id (a role must neither squat
 *	  another's key silently nor learn its items).
 *	- register / unregister an external handler: the function's owner or a
 *	  member of the owning role, with USAGE + EXECUTE.
 *	- claim: USAGE + EXECUTE on the handler (claims hand out payloads).
 *	- cancel / retry: the role that queued the item or its members, and
 *	  members of payments_operator.
 *	- complete / fail: the same roles or members of the role that claimed
 *	  it, and only with the token of the claim that holds it (PM302 else).
 * A refused caller gets 42501 whether or not the id exists, unless it is an
 * operator (or superuser), who may see every item: ids are not secrets, but
 * the queue should not tell one role what another has queued.  Rights are
 * checked on an unlocked read, before any row is locked, so that a role
 * with no rights on an item cannot make anyone wait for it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "compensation.h"
#include "payments.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"

static SPIPlanPtr rights_plan;

/*
 * Check that a function can be a compensation handler and that role could
 * call it directly: USAGE on its schema (a function's OID passed as a
 * regprocedure bypasses the name lookup that would check it) and EXECUTE
 * on it.  Returns the function's owner.  A handler is a plain function
 * (payload jsonb) RETURNS void.
 */
Oid
compensation_check_handler(Oid handler, Oid role)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	bool		valid;
	Oid			owner;
	Oid			nsp;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(handler));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function with OID %u does not exist", handler)));
	proc = (Form_pg_proc) GETSTRUCT(tup);
	valid = proc->prokind == PROKIND_FUNCTION && !proc->proretset &&
		proc->pronargs == 1 && proc->proargtypes.values[0] == JSONBOID &&
		proc->prorettype == VOIDOID;
	owner = proc->proowner;
	nsp = proc->pronamespace;
	ReleaseSysCache(tup);

	if (!valid)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("function %s cannot be a compensation handler",
						format_procedure(handler)),
				 errdetail("A compensation handler is a function that takes one argument of type jsonb and returns void.")));

	if (pg_namespace_aclcheck(nsp, role, ACL_USAGE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for schema %s", get_namespace_name(nsp)),
				 errdetail("A compensation handler runs as the role that queued it; role \"%s\" has no USAGE privilege on the schema of function %s.",
						   GetUserNameFromId(role, false),
						   format_procedure_qualified(handler))));

	if (pg_proc_aclcheck(handler, role, ACL_EXECUTE) != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for function %s", format_procedure(handler)),
				 errdetail("A compensation handler runs as the role that queued it; role \"%s\" may not execute this function.",
						   GetUserNameFromId(role, false))));
	return owner;
}

/*
 * A handler stored by name (its schema-qualified signature) for a later
 * queue, found again: the function must still exist (42883) and still
 * belong to the role that owned it when it was recorded, so that a
 * function another role created under the name since is not taken for it.
 */
Oid
compensation_resolve_handler(const char *name, Oid recorded_owner)
{
	Oid			fn = DatumGetObjectId(DirectFunctionCall1(regprocedurein,
														  CStringGetDatum(name)));

	if (payments_function_owner(fn) != recorded_owner)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("handler %s has changed owner", name),
				 errdetail("It is not owned by the role that owned it when it was recorded."),
				 errhint("Record the handler again if the new function is the right one.")));
	return fn;
}

/* How a handler is stored: its schema-qualified signature. */
char *
compensation_handler_name(Oid handler)
{
	return format_procedure_qualified(handler);
}

/*
 * Check that caller may change item id (or queue an item after it): it has the privileges of the role
 * that queued it or of payments_operator, or, for a completion or failure
 * report (executor), of the role that claimed it last; the claim token is
 * checked by the change itself.  The row is read without a lock, so that a
 * caller with no rights on an item can never make anyone wait for it;
 * enqueued_by never changes, and claimed_by only changes with the claim
 * token that the change must match.  A caller who is not an operator gets
 * the same error for an id that does not exist.  The caller is connected to
 * SPI and acts as the owner.
 */
void
compensation_check_item_rights(int64 id, Oid caller, bool executor)
{
	Datum		values[1];
	bool		isnull;
	Oid			enqueued_by = InvalidOid;
	Oid			claimed_by = InvalidOid;
	bool		found;

	payments_prepare(&rights_plan,
					 "SELECT enqueued_by::oid, claimed_by::oid"
					 " FROM @extschema@.compensations WHERE id = $1",
					 1, (Oid[]) {INT8OID});
	values[0] = Int64GetDatum(id);
	found = payments_execute(rights_plan, values, NULL, SPI_OK_SELECT, 0) == 1;
	if (found)
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		enqueued_by = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		claimed_by = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		if (isnull)
			claimed_by = InvalidOid;
	}
	compensation_judge_item_rights(id, caller, executor, found, enqueued_by,
								   claimed_by);
}

/*
 * The judgement of compensation_check_item_rights on what was read about
 * item id: whether it exists, the role that queued it and the role that
 * claimed it last (InvalidOid if none, or unknown here).
 */
void
compensation_judge_item_rights(int64 id, Oid caller, bool executor, bool found,
							   Oid enqueued_by, Oid claimed_by)
{
	if (found)
	{
		if ((OidIsValid(enqueued_by) && has_privs_of_role(caller, enqueued_by)) ||
			(executor && OidIsValid(claimed_by) && has_privs_of_role(caller, claimed_by)) ||
			payments_is_operator(caller))
			return;
	}
	else if (payments_is_operator(caller))
		ereport(ERROR,
				(errcode(ERRCODE_PM_COMPENSATION_NOT_FOUND),
				 errmsg("compensation %lld does not exist", (long long) id)));

	if (executor)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for compensation %lld", (long long) id),
				 errdetail("Only the role that queued a compensation, the role that claimed it, members of either and members of %s may complete or fail it.",
						   PAYMENTS_OPERATOR_ROLE)));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for compensation %lld", (long long) id),
			 errdetail("Only the role that queued a compensation, its members and members of %s may cancel it, retry it or queue another compensation after it.",
					   PAYMENTS_OPERATOR_ROLE)));
}

/*
 * Start a change of item id by caller: act as the tables' owner, connect
 * to SPI and check the caller's rights on the item (check_item_rights;
 * executor for a completion or failure report).
 * compensation_end_item_change undoes the first two.
 */
void
compensation_begin_item_change(Oid caller, Oid tables_owner, int64 id,
							   bool executor, PaymentsSavedUser *saved)
{
	payments_begin_as_owner(tables_owner, false, saved);
	SPI_connect();
	compensation_check_item_rights(id, caller, executor);
}

void
compensation_end_item_change(PaymentsSavedUser *saved)
{
	SPI_finish();
	payments_end_as_owner(saved);
}
