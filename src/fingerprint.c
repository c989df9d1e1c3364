/*-------------------------------------------------------------------------
 *
 * fingerprint.c
 *	  SHA-256 fingerprints (OpenSSL EVP) and constant-time comparison.
 *
 * A request is fingerprinted in its canonical jsonb text form: jsonb keeps
 * object keys sorted and de-duplicated and drops insignificant whitespace,
 * so two JSON documents that differ only in key order or layout produce the
 * same fingerprint.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fingerprint.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "utils/jsonb.h"

/*
 * The digest method, fetched once per backend: with OpenSSL 3 every use of
 * EVP_sha256() would otherwise look the algorithm up in the provider store
 * again.  It is never freed; it lives as long as the backend.
 */
static const EVP_MD *
sha256_md(void)
{
	static const EVP_MD *md = NULL;

	if (md == NULL)
	{
#if OPENSSL_VERSION_NUMBER >= 0x30000000L
		md = EVP_MD_fetch(NULL, "SHA256", NULL);
#else
		md = EVP_sha256();
#endif
		if (md == NULL)
			elog(ERROR, "could not load the SHA-256 digest from OpenSSL");
	}
	return md;
}

/*
 * One-shot digest: EVP_Digest allocates and frees its context internally,
 * and nothing between the two can ereport, so no handle can leak on error.
 */
void
payments_sha256(const void *data, size_t len,
				unsigned char out[PAYMENTS_FINGERPRINT_LEN])
{
	unsigned int outlen = 0;

	if (EVP_Digest(data, len, out, &outlen, sha256_md(), NULL) != 1 ||
		outlen != PAYMENTS_FINGERPRINT_LEN)
		elog(ERROR, "could not compute SHA-256 digest");
}

/*
 * Compare two digests in time that does not depend on where they differ, so
 * that response timing reveals nothing about a stored fingerprint.
 */
bool
payments_digest_equal(const unsigned char *a, const unsigned char *b,
					  size_t len)
{
	return CRYPTO_memcmp(a, b, len) == 0;
}

void
payments_jsonb_fingerprint(Datum jsonb,
						   unsigned char out[PAYMENTS_FINGERPRINT_LEN])
{
	Jsonb	   *jb = DatumGetJsonbP(jsonb);
	char	   *text;

	text = JsonbToCString(NULL, &jb->root, VARSIZE(jb));
	payments_sha256(text, strlen(text), out);
	pfree(text);
}
