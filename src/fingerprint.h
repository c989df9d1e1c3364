/*-------------------------------------------------------------------------
 *
 * fingerprint.h
 *	  SHA-256 digests of requests, compared in constant time
 *	  (fingerprint.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_FINGERPRINT_H
#define PAYMENTS_FINGERPRINT_H

#define PAYMENTS_FINGERPRINT_LEN 32		/* SHA-256 */

extern void payments_sha256(const void *data, size_t len,
							unsigned char out[PAYMENTS_FINGERPRINT_LEN]);
extern bool payments_digest_equal(const unsigned char *a,
								  const unsigned char *b, size_t len);
extern void payments_jsonb_fingerprint(Datum jsonb,
									   unsigned char out[PAYMENTS_FINGERPRINT_LEN]);

#endif							/* PAYMENTS_FINGERPRINT_H */
