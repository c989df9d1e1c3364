/*-------------------------------------------------------------------------
 *
 * callback_failures.c
 *	  Callbacks refused by verification, counted per database and provider
 *	  in shared memory.
 *
 * A refused callback raises an error, which rolls back whatever a table
 * would have recorded, so the count lives in shared memory: a fixed table
 * of counters that a backend finds under a shared lock and increments
 * atomically.  It exists only when the library is preloaded, starts at
 * zero with the server, and counts at most CALLBACK_FAILURE_SLOTS providers
 * across all databases (a provider beyond that is not counted).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback.h"
#include "owner_rights.h"

#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(payments_callback_signature_failures);

#define CALLBACK_FAILURE_SLOTS	512

typedef struct FailureSlot
{
	Oid			dboid;			/* InvalidOid: free */
	char		provider[CALLBACK_PROVIDER_MAX_BYTES + 1];
	pg_atomic_uint64 count;
} FailureSlot;

typedef struct FailureTable
{
	LWLock	   *lock;			/* taken exclusively only to fill a slot */
	FailureSlot slots[CALLBACK_FAILURE_SLOTS];
} FailureTable;

static FailureTable *failures = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void
failures_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(sizeof(FailureTable));
	RequestNamedLWLockTranche("payments callback failures", 1);
}

static void
failures_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	failures = ShmemInitStruct("payments callback failures",
							   sizeof(FailureTable), &found);
	if (!found)
	{
		memset(failures, 0, sizeof(FailureTable));
		failures->lock = &(GetNamedLWLockTranche("payments callback failures"))->lock;
		for (int i = 0; i < CALLBACK_FAILURE_SLOTS; i++)
			pg_atomic_init_u64(&failures->slots[i].count, 0);
	}
	LWLockRelease(AddinShmemInitLock);
}

/* Called from _PG_init; does nothing unless the library is being preloaded. */
void
callback_failures_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		return;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = failures_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = failures_shmem_startup;
}

/* The slot of provider in this database, or NULL; caller holds the lock. */
static FailureSlot *
find_slot(const char *provider, bool create)
{
	FailureSlot *free_slot = NULL;

	for (int i = 0; i < CALLBACK_FAILURE_SLOTS; i++)
	{
		FailureSlot *slot = &failures->slots[i];

		if (slot->dboid == MyDatabaseId && strcmp(slot->provider, provider) == 0)
			return slot;
		if (slot->dboid == InvalidOid && free_slot == NULL)
			free_slot = slot;
	}
	if (create && free_slot != NULL)
	{
		strlcpy(free_slot->provider, provider, sizeof(free_slot->provider));
		free_slot->dboid = MyDatabaseId;
	}
	return create ? free_slot : NULL;
}

void
callback_count_failure(const char *provider)
{
	FailureSlot *slot;

	if (failures == NULL)
		return;
	LWLockAcquire(failures->lock, LW_SHARED);
	slot = find_slot(provider, false);
	LWLockRelease(failures->lock);
	if (slot == NULL)
	{
		LWLockAcquire(failures->lock, LW_EXCLUSIVE);
		slot = find_slot(provider, true);
		LWLockRelease(failures->lock);
	}
	if (slot != NULL)
		pg_atomic_fetch_add_u64(&slot->count, 1);
}

/*
 * payments.callback_signature_failures(provider): NULL when not preloaded,
 * or when the calling role does not own the provider.
 */
Datum
payments_callback_signature_failures(PG_FUNCTION_ARGS)
{
	const char *provider;
	FailureSlot *slot;
	uint64		count = 0;

	if (PG_ARGISNULL(0) || failures == NULL)
		PG_RETURN_NULL();
	provider = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (strlen(provider) > CALLBACK_PROVIDER_MAX_BYTES)
		PG_RETURN_NULL();
	if (!callback_provider_visible(provider,
								   payments_function_owner(fcinfo->flinfo->fn_oid)))
		PG_RETURN_NULL();

	LWLockAcquire(failures->lock, LW_SHARED);
	slot = find_slot(provider, false);
	if (slot != NULL)
		count = pg_atomic_read_u64(&slot->count);
	LWLockRelease(failures->lock);
	PG_RETURN_INT64((int64) count);
}
