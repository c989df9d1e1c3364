/*-------------------------------------------------------------------------
 *
 * key_lock.c
 *	  A transaction-level lock on a pair of strings: an idempotency key in
 *	  its scope, a callback event of its provider, an outbox key in its
 *	  topic.
 *
 * The lock is a heavyweight advisory lock tag whose fields are the
 * database, 64 bits of the SHA-256 of the two strings, and one of the lock
 * spaces of payments.h, which the SQL advisory lock functions never use.
 * It is held until the transaction ends and released by the lock manager
 * the moment the transaction aborts or its backend dies, so nothing is kept
 * in session state.  Two pairs sharing those bits only make one wait for
 * the other; a cryptographic hash keeps a caller from choosing a pair whose
 * lock is another role's, which it could then hold in an open transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "key_lock.h"
#include "fingerprint.h"

#include "lib/stringinfo.h"
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
	StringInfoData pair;
	uint32		alen32 = (uint32) alen;
	unsigned char digest[PAYMENTS_FINGERPRINT_LEN];
	uint32		hi;
	uint32		lo;

	/* a's length first, so that ("ab", "c") and ("a", "bc") differ */
	initStringInfo(&pair);
	appendBinaryStringInfo(&pair, (const char *) &alen32, sizeof(alen32));
	appendBinaryStringInfo(&pair, a, alen);
	appendBinaryStringInfo(&pair, b, blen);
	payments_sha256(pair.data, pair.len, digest);
	pfree(pair.data);
	memcpy(&hi, digest, sizeof(hi));
	memcpy(&lo, digest + sizeof(hi), sizeof(lo));
	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, hi, lo, space);

	if (LockAcquire(&tag, ExclusiveLock, false, true) != LOCKACQUIRE_NOT_AVAIL)
		return true;
	if (!wait)
		return false;
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
	return true;
}
