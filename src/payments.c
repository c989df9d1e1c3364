/*-------------------------------------------------------------------------
 *
 * payments.c
 *	  Module entry point: GUCs and the helpers shared by every capability.
 *
 * Every SQL function of the extension works when the library is loaded on
 * demand; only the background worker needs shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "payments.h"

#include "access/xlog.h"
#include "fmgr.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

bool		payments_idempotency_wait = false;
int			payments_idempotency_lease = 60;

void
_PG_init(void)
{
	DefineCustomBoolVariable("payments.idempotency_wait",
							 gettext_noop("Waits for a key held by another open transaction instead of failing at once."),
							 gettext_noop("When off, a key in use by another transaction raises SQLSTATE PM002. "
										  "When on, the caller waits, honouring lock_timeout."),
							 &payments_idempotency_wait,
							 false,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("payments.idempotency_lease",
							gettext_noop("How long a started idempotency key stays reserved for its flow between transactions."),
							gettext_noop("Every checkpoint renews the lease; once it runs out the next caller with "
										 "the same key gets outcome \"recovering\"."),
							&payments_idempotency_lease,
							60,
							1,
							7 * 24 * 3600,
							PGC_USERSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("payments");
}

/*
 * Refuse to write during recovery with a message that says why, rather than
 * letting the first INSERT fail with a generic read-only error.
 */
void
payments_check_writable(const char *what)
{
	if (RecoveryInProgress())
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot %s during recovery", what),
				 errhint("Call this function on the primary server.")));
}
