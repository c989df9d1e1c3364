/*-------------------------------------------------------------------------
 *
 * key_lock.h
 *	  A transaction-level lock on a pair of strings, in one of the
 *	  extension's lock spaces (payments.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_KEY_LOCK_H
#define PAYMENTS_KEY_LOCK_H

extern bool payments_lock_key(const char *a, Size alen, const char *b,
							  Size blen, uint16 space, bool wait);

#endif							/* PAYMENTS_KEY_LOCK_H */
