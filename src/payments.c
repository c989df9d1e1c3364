/*-------------------------------------------------------------------------
 *
 * payments.c
 *	  Module entry point: each component defines its settings, and the
 *	  worker registers itself when the library is preloaded.
 *
 * Every SQL function of the extension works when the library is loaded on
 * demand; only the background worker needs shared_preload_libraries.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback.h"
#include "citus_shards.h"
#include "check.h"
#include "compensation.h"
#include "fault.h"
#include "idempotency.h"
#include "reconciliation.h"
#include "outbox.h"
#include "retention.h"
#include "tcc.h"
#include "worker.h"

#include "fmgr.h"
#include "utils/guc.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

void
_PG_init(void)
{
	idempotency_init();
	compensation_init();
	compensation_run_init();
	callback_verify_init();
	callback_receive_init();
	callback_expectations_init();
	callback_failures_init();
	statement_init();
	tcc_init();
	outbox_send_init();
	outbox_notify_init();
	fault_init();
	check_init();
	retention_init();
	worker_init();
	payments_citus_delegation_init();

	MarkGUCPrefixReserved("payments");
}
