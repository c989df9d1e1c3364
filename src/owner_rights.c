/*-------------------------------------------------------------------------
 *
 * owner_rights.c
 *	  Acting with the rights of the extension's owner for part of a call.
 *
 * Why most of the extension's functions are not SECURITY DEFINER.  Their
 * rights checks are made for the caller's role: current_user at the call,
 * which inside another SECURITY DEFINER function is that function's owner.
 * A SECURITY DEFINER function cannot see who called it, and the session's
 * role (GetOuterUserId) would be wrong in the other direction: a superuser
 * calling a SECURITY DEFINER function of an unprivileged role would act as
 * the superuser.  So a function that checks its caller's rights (the
 * idempotency keys of a restricted scope, the compensation queue, a
 * reservation) is declared SECURITY INVOKER, checks them as the caller,
 * and takes the rights of its owner (the role that created the extension,
 * which owns its tables) only around its own statements, with search_path
 * pinned to pg_catalog, pg_temp: what SECURITY DEFINER SET search_path
 * would do for the whole call.
 *
 * There is a second reason, for the hot functions: a SECURITY DEFINER
 * function pays for its SET clause on every call (on the way out
 * PostgreSQL 15 scans every GUC), so a function whose usual path runs no
 * SQL takes these rights only where it does.  Functions that check nothing
 * about their caller beyond EXECUTE stay SECURITY DEFINER with a pinned
 * search_path in the install script.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "owner_rights.h"
#include "payments.h"

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_proc.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/syscache.h"

/*
 * The owner of function fn_oid: for the extension's functions, the role
 * that created the extension, which owns its tables.
 */
Oid
payments_function_owner(Oid fn_oid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn_oid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", fn_oid);
	owner = ((Form_pg_proc) GETSTRUCT(tup))->proowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Act as owner until payments_end_as_owner, and with pin_search_path also
 * with search_path set to pg_catalog, pg_temp.  Unlike
 * fmgr_security_definer this does not call a loaded module's fmgr_hook
 * (sepgsql's), which sees no change of user here.
 *
 * An error in between needs no cleanup: (sub)transaction abort restores
 * the user and unwinds the GUC nesting level, as it does for SECURITY
 * DEFINER functions.  So no C code may catch an error between the two
 * calls without a subtransaction of its own.
 */
#define PINNED_SEARCH_PATH	"pg_catalog, pg_temp"

void
payments_begin_as_owner(Oid owner, bool pin_search_path,
						PaymentsSavedUser *saved)
{
	GetUserIdAndSecContext(&saved->userid, &saved->sec_context);
	SetUserIdAndSecContext(owner, saved->sec_context | SECURITY_LOCAL_USERID_CHANGE);
	saved->guc_level = -1;

	/*
	 * Already pinned (the function's own SET clause, unless user code run
	 * since changed it): setting it again would cost a GUC level and a
	 * new search path for nothing.
	 */
	if (pin_search_path && namespace_search_path != NULL &&
		strcmp(namespace_search_path, PINNED_SEARCH_PATH) == 0)
		pin_search_path = false;
	if (pin_search_path)
	{
		saved->guc_level = NewGUCNestLevel();
		(void) set_config_option("search_path", PINNED_SEARCH_PATH,
								 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
								 true, 0, false);
	}
}

void
payments_end_as_owner(PaymentsSavedUser *saved)
{
	if (saved->guc_level >= 0)
		AtEOXact_GUC(true, saved->guc_level);
	SetUserIdAndSecContext(saved->userid, saved->sec_context);
}

/* Does role have the privileges of payments_operator (or a superuser's)? */
bool
payments_is_operator(Oid role)
{
	Oid			operator_role;

	if (superuser_arg(role))
		return true;
	operator_role = get_role_oid(PAYMENTS_OPERATOR_ROLE, true);
	return OidIsValid(operator_role) && has_privs_of_role(role, operator_role);
}
