/*-------------------------------------------------------------------------
 *
 * key_lock.c
 *	  A transaction-level lock on a pair of strings: an idempotency key in
 *	  its scope, a callback event of its provider.
 *
 * The lock is a heavyweight advisory lock tag whose fields are the
 * database, a 64-bit hash of the two strings, and one of the lock spaces of
 * payments.h, which the SQL advisory lock functions never use.  It is held
 * until the transaction ends and released by the lock manager the moment
 * the transaction aborts or its backend dies, so nothing is kept in session
 * state.  Two pairs sharing a hash only make one wait for the other.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "key_lock.h"

#include "common/hashfn.h"
#include "miscadmin.h"
#include "storage/lock.h"

/*
 * Take the lock of (a, b) in lock space space.  If another transaction
 * holds it, wait for that transaction when wait is set (as any lock waiter,
 * so lock_timeout and deadlock detection apply), else return false at once
 * for the caller to refuse with its own error.
 */
bool
payments_lock_key(const char *a, Size alen, const char *b, Size blen,
				  uint16 space, bool wait)
{
	LOCKTAG		tag;
	uint64		h;

	h = hash_combine64(hash_bytes_extended((const unsigned char *) a, alen, 0),
					   hash_bytes_extended((const unsigned char *) b, blen, 0));
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) (h >> 32), (uint32) h, space);

	if (LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
		return true;
	if (!wait)
		return false;
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	return true;
}
