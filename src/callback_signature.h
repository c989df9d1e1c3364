/*-------------------------------------------------------------------------
 *
 * callback_signature.h
 *	  Signatures of payment providers' callbacks: schemes, key checks,
 *	  request parsing and verification (callback_signature.c).
 *
 * A request is parsed once (callback_request_parse), which checks its
 * headers and timestamp and builds the exact bytes the provider signed;
 * then each candidate key is tried with callback_request_verify, which
 * answers true or false and never raises an error for a mismatch.
 *
 * Schemes, as stored in payments.callback_keys.scheme:
 *
 * stripe			  Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...];
 *					  HMAC-SHA256 of "<t>.<body>", keyed with the secret's
 *					  bytes (whsec_ prefix included, as Stripe does).  Every
 *					  v1 is tried; v0 and other entries are ignored.
 * standard-webhooks  webhook-id, webhook-timestamp, webhook-signature (each
 *					  falling back to svix-id, svix-timestamp,
 *					  svix-signature); space-separated "v1,<base64>" entries,
 *					  other versions ignored; HMAC-SHA256 of
 *					  "<id>.<timestamp>.<body>" keyed with the base64 after the
 *					  secret's whsec_ prefix, decoded.
 * hmac-sha256[:<Header>]
 *					  one header (X-Signature unless named) carrying hex or
 *					  base64, optionally prefixed "sha256=", of HMAC-SHA256 of
 *					  the body keyed with the secret's bytes; no timestamp.
 * wechatpay-v3		  Wechatpay-Timestamp, Wechatpay-Nonce,
 *					  Wechatpay-Signature (base64), Wechatpay-Serial (the
 *					  key_id); RSA-SHA256 (PKCS#1 v1.5) of
 *					  "<timestamp>\n<nonce>\n<body>\n".  A
 *					  Wechatpay-Signature-Type header, if present, must be
 *					  WECHATPAY2-SHA256-RSA2048.
 * alipay-rsa2		  the notification's form parameters, URL-decoded, as a
 *					  jsonb object of strings; RSA-SHA256 (PKCS#1 v1.5) of
 *					  every parameter except sign and sign_type, sorted by name
 *					  in byte order and joined "k=v&k=v", values as given and
 *					  parameters with empty values included (Alipay's
 *					  verification of notifications does the same); the
 *					  signature is the base64 of parameter sign; sign_type, if
 *					  present, must be RSA2.
 *
 * Header names are matched case-insensitively, form parameter names
 * exactly.  Header values are taken with surrounding spaces and tabs
 * removed.  Base64 is the standard alphabet, with or without padding.
 * RSA keys are PEM text: "PUBLIC KEY", "RSA PUBLIC KEY" or an X.509
 * "CERTIFICATE" whose key is used as it is (its validity dates and issuer
 * are not checked: the key's validity window in payments.callback_keys
 * decides).
 *
 * Errors: a missing or malformed header or parameter is PM404, a signed
 * timestamp outside the window PM403 (payments.h); no message ever shows
 * a signature or a secret.
 *
 *-------------------------------------------------------------------------
 */
#ifndef PAYMENTS_CALLBACK_SIGNATURE_H
#define PAYMENTS_CALLBACK_SIGNATURE_H

#include "utils/jsonb.h"
#include "utils/timestamp.h"

typedef enum CallbackScheme
{
	CALLBACK_SCHEME_STRIPE,
	CALLBACK_SCHEME_STANDARD_WEBHOOKS,
	CALLBACK_SCHEME_HMAC_SHA256,
	CALLBACK_SCHEME_WECHATPAY_V3,
	CALLBACK_SCHEME_ALIPAY_RSA2
} CallbackScheme;

/*
 * A scheme as stored in payments.callback_keys.scheme.  "hmac-sha256" reads
 * header X-Signature; "hmac-sha256:<Header-Name>" reads the named header (an
 * HTTP token of 1 to 64 bytes).  Anything else is an error (22023).
 * *header (header may be NULL) gets the header name, palloc'd, for
 * hmac-sha256 and NULL for the other schemes.
 */
extern CallbackScheme callback_scheme_parse(const char *scheme, char **header);

/*
 * Checks a secret before it is stored, raising 22023 if it is unfit.  The
 * errors hide the statement and its context, which carry the secret, and
 * never quote it.  HMAC schemes need a key of at least 16 bytes; RSA
 * schemes a PEM RSA public key of at least 2048 bits.
 */
extern void callback_secret_check(CallbackScheme scheme, const char *secret,
								  Size len);

/* A parsed request, palloc'd in CurrentMemoryContext. */
typedef struct CallbackRequest CallbackRequest;

/*
 * Parses a request once, before any key is tried.  header: from
 * callback_scheme_parse (NULL means X-Signature for hmac-sha256, and is
 * ignored by the other schemes).  headers: a jsonb object of header names
 * and string values, or for alipay-rsa2 the form parameters (body is then
 * unused and may be NULL).  For hmac-sha256 the request points into body,
 * which must outlive it.  Timestamped schemes must be signed no more than
 * tolerance_s seconds before `at` and no more than future_tolerance_s
 * after it.  *key_id (key_id may be NULL) gets Wechatpay-Serial for
 * wechatpay-v3, NULL for the others.
 */
extern CallbackRequest *callback_request_parse(CallbackScheme scheme,
											   const char *header,
											   Jsonb *headers,
											   const char *body, Size bodylen,
											   TimestampTz at,
											   int tolerance_s,
											   int future_tolerance_s,
											   char **key_id);

/*
 * Whether the request verifies under one key's secret, as stored (the text
 * given to callback_key_add).  False for a mismatch and for a secret that
 * does not fit the scheme; an error only if OpenSSL itself fails.
 */
extern bool callback_request_verify(CallbackRequest *req, const char *secret,
									Size len);

#endif							/* PAYMENTS_CALLBACK_SIGNATURE_H */
