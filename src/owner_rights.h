/*-------------------------------------------------------------------------
 *
 * owner_rights.h
 *	  Acting with the rights of the extension's owner for part of a call
 *	  (owner_rights.c; its header says why the extension's functions do
 *	  this instead of being SECURITY DEFINER).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_OWNER_RIGHTS_H
#define PAYMENTS_OWNER_RIGHTS_H

/* The caller's role and settings, saved while acting as the owner */
typedef struct PaymentsSavedUser
{
	Oid			userid;
	int			sec_context;
	int			guc_level;		/* -1 if search_path was not pinned */
} PaymentsSavedUser;

extern Oid	payments_function_owner(Oid fn_oid);
extern void payments_begin_as_owner(Oid owner, bool pin_search_path,
									PaymentsSavedUser *saved);
extern void payments_end_as_owner(PaymentsSavedUser *saved);
extern bool payments_is_operator(Oid role);

#endif							/* PAYMENTS_OWNER_RIGHTS_H */
