/*-------------------------------------------------------------------------
 *
 * callback_signature.c
 *	  Signatures of payment providers' callbacks (HMAC-SHA256 and
 *	  RSA-SHA256 through OpenSSL).
 *
 * callback_request_parse does everything that does not depend on a key:
 * it finds the headers, refuses malformed ones and stale timestamps, decodes
 * every signature the request carries and builds the signed bytes.  Trying
 * a key is then one HMAC (compared in constant time with each signature) or
 * one RSA verification, so rotation with several keys costs little more
 * than one.
 *
 * No OpenSSL object outlives the function that makes it, except the decoded
 * RSA keys of a small per-backend cache, and nothing between an object's
 * allocation and its release can raise an error: each function frees what
 * it made, clears OpenSSL's error queue (which the backend's own TLS code
 * reads) and only then reports a problem.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback_signature.h"
#include "payments.h"

#include <limits.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common/base64.h"
#include "datatype/timestamp.h"
#include "lib/stringinfo.h"
#include "utils/memutils.h"

#define HMAC_SHA256_LEN			32
#define MIN_HMAC_KEY_LEN		16
#define MIN_RSA_BITS			2048
#define MAX_HEADER_NAME_LEN		64
#define DEFAULT_HMAC_HEADER		"X-Signature"
#define WHSEC_PREFIX			"whsec_"
#define WECHATPAY_SIGNATURE_TYPE "WECHATPAY2-SHA256-RSA2048"

/* Seconds from the Unix epoch to PostgreSQL's. */
#define UNIX_TO_POSTGRES_SECS \
	((int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) * SECS_PER_DAY)

/* Indexed by CallbackScheme. */
static const char *const scheme_names[] = {
	"stripe",
	"standard-webhooks",
	"hmac-sha256",
	"wechatpay-v3",
	"alipay-rsa2"
};

typedef struct CallbackSignature
{
	unsigned char *data;
	int			len;
} CallbackSignature;

struct CallbackRequest
{
	CallbackScheme scheme;
	const char *message;		/* the bytes the provider signed */
	Size		messagelen;
	int			nsigs;
	CallbackSignature *sigs;
};

/*
 * One member of the headers (or parameters) object.  The strings point into
 * the jsonb and are not terminated; value is NULL when the member is not a
 * JSON string.
 */
typedef struct RequestField
{
	const char *name;
	int			namelen;
	const char *value;
	int			valuelen;
} RequestField;

typedef struct RequestFields
{
	RequestField *fields;
	int			nfields;
} RequestFields;

/* Why a PEM text is not an acceptable RSA public key. */
typedef enum PemProblem
{
	PEM_OK,
	PEM_NO_BLOCK,
	PEM_WRONG_LABEL,
	PEM_PRIVATE_KEY,
	PEM_UNDECODABLE,
	PEM_TRAILING_TEXT,
	PEM_NOT_RSA
} PemProblem;

#define SCHEME_HINT \
	errhint("The schemes are stripe, standard-webhooks, hmac-sha256, " \
			"hmac-sha256:<header name>, wechatpay-v3 and alipay-rsa2.")


/* ---------------------------------------------------------------------
 * Encodings
 * ---------------------------------------------------------------------
 */

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Decodes hex of either case; false if src is not an even number of digits. */
static bool
decode_hex(const char *src, int len, CallbackSignature *out)
{
	int			i;

	if (len == 0 || len % 2 != 0)
		return false;
	out->data = palloc(len / 2);
	out->len = len / 2;
	for (i = 0; i < len; i += 2)
	{
		int			hi = hex_digit(src[i]);
		int			lo = hex_digit(src[i + 1]);

		if (hi < 0 || lo < 0)
		{
			pfree(out->data);
			return false;
		}
		out->data[i / 2] = (unsigned char) (hi << 4 | lo);
	}
	return true;
}

static bool
is_base64_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		(c >= '0' && c <= '9') || c == '+' || c == '/';
}

/*
 * Decodes standard base64, with or without its padding (Standard Webhooks'
 * signatures are padded, but some senders strip it).  pg_b64_decode wants
 * padded input and tolerates characters after the padding, so the shape is
 * checked here and the padding restored before it runs.
 */
static bool
decode_base64(const char *src, int len, CallbackSignature *out)
{
	int			npad = 0;
	int			padded;
	char	   *buf;
	int			i;
	int			declen;

	while (npad < 2 && len > 0 && src[len - 1] == '=')
	{
		len--;
		npad++;
	}
	if (len == 0 || len > MaxAllocSize / 2 ||
		(npad > 0 ? (len + npad) % 4 != 0 : len % 4 == 1))
		return false;
	for (i = 0; i < len; i++)
		if (!is_base64_char(src[i]))
			return false;

	padded = (len + 3) / 4 * 4;
	buf = palloc(padded);
	memcpy(buf, src, len);
	memset(buf + len, '=', padded - len);
	out->data = palloc(pg_b64_dec_len(padded));
	declen = pg_b64_decode(buf, padded, (char *) out->data,
						   pg_b64_dec_len(padded));
	pfree(buf);
	if (declen <= 0)
	{
		pfree(out->data);
		return false;
	}
	out->len = declen;
	return true;
}


/* ---------------------------------------------------------------------
 * Schemes and secrets
 * ---------------------------------------------------------------------
 */

/* RFC 9110's token characters, which a header name is made of. */
static bool
is_token_char(char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		(c >= '0' && c <= '9') || strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

CallbackScheme
callback_scheme_parse(const char *scheme, char **header)
{
	const char *hmac_prefix = "hmac-sha256:";
	int			i;

	if (header)
		*header = NULL;

	for (i = 0; i < lengthof(scheme_names); i++)
	{
		if (strcmp(scheme, scheme_names[i]) == 0)
		{
			if (i == CALLBACK_SCHEME_HMAC_SHA256 && header)
				*header = pstrdup(DEFAULT_HMAC_HEADER);
			return (CallbackScheme) i;
		}
	}

	if (strncmp(scheme, hmac_prefix, strlen(hmac_prefix)) == 0)
	{
		const char *name = scheme + strlen(hmac_prefix);
		size_t		namelen = strlen(name);
		size_t		j;

		if (namelen == 0 || namelen > MAX_HEADER_NAME_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid header name in callback scheme hmac-sha256"),
					 errdetail("A header name must have 1 to %d bytes.",
							   MAX_HEADER_NAME_LEN)));
		for (j = 0; j < namelen; j++)
			if (!is_token_char(name[j]))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid header name in callback scheme hmac-sha256"),
						 errdetail("A header name is made of letters, digits and !#$%%&'*+-.^_`|~ only.")));
		if (header)
			*header = pstrdup(name);
		return CALLBACK_SCHEME_HMAC_SHA256;
	}

	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unrecognized callback scheme"),
			 errdetail("The value given is not repeated here, in case it is a secret passed in its place."),
			 SCHEME_HINT));
	pg_unreachable();
}

/*
 * The RSA public key in a PEM text: one block, labelled PUBLIC KEY
 * (SubjectPublicKeyInfo), RSA PUBLIC KEY (PKCS#1) or CERTIFICATE, followed
 * by nothing but white space.  Returns NULL and the reason if there is none;
 * the caller frees the key with EVP_PKEY_free.
 */
static EVP_PKEY *
pem_rsa_public_key(const char *pem, Size len, PemProblem *problem)
{
	BIO		   *bio;
	char	   *name = NULL;
	char	   *pemheader = NULL;
	unsigned char *der = NULL;
	long		derlen = 0;
	EVP_PKEY   *pkey = NULL;

	*problem = PEM_NO_BLOCK;
	if (len > INT_MAX)
		return NULL;
	bio = BIO_new_mem_buf(pem, (int) len);
	if (bio == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory"),
				 errhidestmt(true)));

	if (PEM_read_bio(bio, &name, &pemheader, &der, &derlen) == 1)
	{
		const unsigned char *p = der;
		char	   *rest;
		long		restlen;

		*problem = PEM_UNDECODABLE;
		if (strcmp(name, "PUBLIC KEY") == 0)
			pkey = d2i_PUBKEY(NULL, &p, derlen);
		else if (strcmp(name, "RSA PUBLIC KEY") == 0)
			pkey = d2i_PublicKey(EVP_PKEY_RSA, NULL, &p, derlen);
		else if (strcmp(name, "CERTIFICATE") == 0)
		{
			X509	   *cert = d2i_X509(NULL, &p, derlen);

			if (cert != NULL)
			{
				pkey = X509_get_pubkey(cert);
				X509_free(cert);
			}
		}
		else if (strstr(name, "PRIVATE KEY") != NULL)
			*problem = PEM_PRIVATE_KEY;
		else
			*problem = PEM_WRONG_LABEL;

		if (pkey != NULL)
		{
			restlen = BIO_get_mem_data(bio, &rest);
			while (restlen > 0 && strchr(" \t\r\n", rest[restlen - 1]) != NULL)
				restlen--;
			if (p != der + derlen)
				*problem = PEM_UNDECODABLE;
			else if (restlen > 0)
				*problem = PEM_TRAILING_TEXT;
			else if (!EVP_PKEY_is_a(pkey, "RSA"))
				*problem = PEM_NOT_RSA;
			else
				*problem = PEM_OK;
			if (*problem != PEM_OK)
			{
				EVP_PKEY_free(pkey);
				pkey = NULL;
			}
		}
	}

	OPENSSL_free(name);
	OPENSSL_free(pemheader);
	OPENSSL_free(der);
	BIO_free(bio);
	ERR_clear_error();
	return pkey;
}

/* The HMAC key of a standard-webhooks secret: whsec_ followed by base64. */
static bool
whsec_key(const char *secret, Size len, CallbackSignature *key)
{
	Size		prefixlen = strlen(WHSEC_PREFIX);

	return len > prefixlen && len - prefixlen <= INT_MAX &&
		memcmp(secret, WHSEC_PREFIX, prefixlen) == 0 &&
		decode_base64(secret + prefixlen, (int) (len - prefixlen), key);
}

void
callback_secret_check(CallbackScheme scheme, const char *secret, Size len)
{
	switch (scheme)
	{
		case CALLBACK_SCHEME_STRIPE:
		case CALLBACK_SCHEME_HMAC_SHA256:
			if (len < MIN_HMAC_KEY_LEN)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("secret is too short"),
						 errdetail("A secret of scheme %s must have at least %d bytes.",
								   scheme_names[scheme], MIN_HMAC_KEY_LEN),
						 errhidestmt(true), errhidecontext(true)));
			break;

		case CALLBACK_SCHEME_STANDARD_WEBHOOKS:
			{
				CallbackSignature key;
				int			keylen;

				if (!whsec_key(secret, len, &key))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("secret of scheme standard-webhooks is not whsec_ followed by base64"),
							 errhidestmt(true), errhidecontext(true)));
				keylen = key.len;
				explicit_bzero(key.data, key.len);
				pfree(key.data);
				if (keylen < MIN_HMAC_KEY_LEN)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("secret is too short"),
							 errdetail("The base64 after whsec_ must decode to at least %d bytes.",
									   MIN_HMAC_KEY_LEN),
							 errhidestmt(true), errhidecontext(true)));
				break;
			}

		case CALLBACK_SCHEME_WECHATPAY_V3:
		case CALLBACK_SCHEME_ALIPAY_RSA2:
			{
				PemProblem	problem;
				EVP_PKEY   *pkey = pem_rsa_public_key(secret, len, &problem);
				int			bits;

				if (pkey == NULL)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("public key is not a PEM RSA key"),
							 problem == PEM_NO_BLOCK ?
							 errdetail("No PEM block was found.") :
							 problem == PEM_PRIVATE_KEY ?
							 errdetail("The PEM block is a private key; the provider's public key belongs here.") :
							 problem == PEM_WRONG_LABEL ?
							 errdetail("The PEM block is not a PUBLIC KEY, an RSA PUBLIC KEY or a CERTIFICATE.") :
							 problem == PEM_TRAILING_TEXT ?
							 errdetail("Text follows the first PEM block.") :
							 problem == PEM_NOT_RSA ?
							 errdetail("The key is not an RSA key.") :
							 errdetail("The PEM block does not decode."),
							 errhidestmt(true), errhidecontext(true)));
				bits = EVP_PKEY_get_bits(pkey);
				EVP_PKEY_free(pkey);
				if (bits < MIN_RSA_BITS)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("public key is too short"),
							 errdetail("An RSA key must have at least %d bits; this one has %d.",
									   MIN_RSA_BITS, bits),
							 errhidestmt(true), errhidecontext(true)));
				break;
			}
	}
}


/* ---------------------------------------------------------------------
 * Requests
 * ---------------------------------------------------------------------
 */

/* The members of a jsonb object, in jsonb's order. */
static RequestFields
collect_fields(Jsonb *jb, bool parameters)
{
	RequestFields result = {NULL, 0};
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken r;

	if (jb == NULL)
		return result;
	if (!JB_ROOT_IS_OBJECT(jb))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 parameters ?
				 errmsg("callback parameters must be a JSON object") :
				 errmsg("callback headers must be a JSON object")));

	result.fields = palloc0(Max(JB_ROOT_COUNT(jb), 1) * sizeof(RequestField));
	it = JsonbIteratorInit(&jb->root);
	while ((r = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		RequestField *f = &result.fields[result.nfields];

		if (r == WJB_KEY)
		{
			f->name = v.val.string.val;
			f->namelen = v.val.string.len;
		}
		else if (r == WJB_VALUE)
		{
			if (v.type == jbvString)
			{
				f->value = v.val.string.val;
				f->valuelen = v.val.string.len;
			}
			result.nfields++;
		}
	}
	return result;
}

/* A header by name, regardless of case; PM404 if it is given twice. */
static const RequestField *
find_header(const RequestFields *headers, const char *name)
{
	size_t		namelen = strlen(name);
	const RequestField *found = NULL;
	int			i;

	for (i = 0; i < headers->nfields; i++)
	{
		const RequestField *f = &headers->fields[i];

		if (f->namelen == namelen &&
			pg_strncasecmp(f->name, name, namelen) == 0)
		{
			if (found != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
						 errmsg("header \"%s\" is given more than once", name),
						 errdetail("Header names are matched regardless of case.")));
			found = f;
		}
	}
	return found;
}

/*
 * The value of a header, trimmed of surrounding spaces and tabs; PM404 if it
 * is missing (unless !required: then NULL), not a string or empty.  The
 * result is palloc'd and terminated; *len gets its length.
 */
static char *
header_value(const RequestFields *headers, const char *name, bool required,
			 int *len)
{
	const RequestField *found = find_header(headers, name);
	const char *v;
	int			vlen;

	if (found == NULL)
	{
		if (!required)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" is missing", name)));
	}
	if (found->value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" is not a string", name)));

	v = found->value;
	vlen = found->valuelen;
	while (vlen > 0 && (v[0] == ' ' || v[0] == '\t'))
		v++, vlen--;
	while (vlen > 0 && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t'))
		vlen--;
	if (vlen == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" is empty", name)));

	*len = vlen;
	return pnstrdup(v, vlen);
}

/* Like header_value, with a second name to look for if the first is absent. */
static char *
header_value_alt(const RequestFields *headers, const char *name,
				 const char *alt, const char **found_name, int *len)
{
	if (find_header(headers, name) == NULL &&
		find_header(headers, alt) != NULL)
		name = alt;
	*found_name = name;
	return header_value(headers, name, true, len);
}

/*
 * A signed timestamp: decimal seconds since the Unix epoch, checked against
 * the window around `at`.  PM404 if it is not a number, PM403 if it is
 * outside the window.
 */
static void
check_timestamp(const char *header, const char *value, int len,
				TimestampTz at, int tolerance_s, int future_tolerance_s)
{
	int64		secs = 0;
	int64		at_secs;
	int64		diff;
	int			i;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" has an empty timestamp", header)));
	for (i = 0; i < len; i++)
	{
		if (value[i] < '0' || value[i] > '9')
			ereport(ERROR,
					(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
					 errmsg("header \"%s\" has an invalid timestamp", header),
					 errdetail("A signed timestamp is the number of seconds since 1970-01-01 00:00:00 UTC in decimal digits.")));
		/* Past about 9e15 seconds it is in the future anyway; stop there. */
		if (secs < PG_INT64_MAX / 1000)
			secs = secs * 10 + (value[i] - '0');
	}

	/* callback_verify refuses an infinite time of the check. */
	Assert(!TIMESTAMP_NOT_FINITE(at));

	/*
	 * Whole seconds, the time of the check rounded down, as Svix's libraries
	 * compare: a request signed exactly tolerance_s seconds ago passes.
	 */
	at_secs = at / USECS_PER_SEC - (at % USECS_PER_SEC < 0 ? 1 : 0) +
		UNIX_TO_POSTGRES_SECS;
	diff = at_secs - secs;
	if (diff > tolerance_s)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_TIMESTAMP_OUTSIDE),
				 errmsg("signed timestamp in header \"%s\" is too old", header),
				 errdetail("It is %lld seconds before the time of the check; at most %d are accepted.",
						   (long long) diff, tolerance_s),
				 errhint("A replayed request carries an old timestamp. The window is set by payments.callback_tolerance.")));
	if (-diff > future_tolerance_s)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_TIMESTAMP_OUTSIDE),
				 errmsg("signed timestamp in header \"%s\" is in the future",
						header),
				 errdetail("It is %lld seconds after the time of the check; at most %d are accepted.",
						   (long long) -diff, future_tolerance_s),
				 errhint("Check the clocks of the database server and of the provider. The window is set by payments.callback_future_tolerance.")));
}

static void
check_hmac_length(const char *header, const CallbackSignature *sig)
{
	if (sig->len != HMAC_SHA256_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" has a signature of the wrong length",
						header),
				 errdetail("An HMAC-SHA256 signature has %d bytes, this one %d.",
						   HMAC_SHA256_LEN, sig->len)));
}

/* Appends an HMAC signature, found in header hname, to the request. */
static void
add_hmac_signature(CallbackRequest *req, int *allocated, const char *hname,
				   CallbackSignature sig)
{
	check_hmac_length(hname, &sig);
	if (req->nsigs == *allocated)
	{
		*allocated *= 2;
		req->sigs = repalloc(req->sigs, *allocated * sizeof(CallbackSignature));
	}
	req->sigs[req->nsigs++] = sig;
}

/*
 * The last checks of the timestamped HMAC schemes: a v1 signature was found
 * (in header signame), and the timestamp (of header tsname) is in the window.
 */
static void
check_v1_and_timestamp(const CallbackRequest *req, const char *signame,
					   const char *tsname, const char *ts, int tslen,
					   TimestampTz at, int tolerance_s, int future_tolerance_s)
{
	if (req->nsigs == 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" has no v1 signature", signame)));
	check_timestamp(tsname, ts, tslen, at, tolerance_s, future_tolerance_s);
}

/*
 * The signed bytes of the timestamped schemes: "<a><sep><b><sep><body><suffix>",
 * or "<a><sep><body><suffix>" when b is NULL.
 */
static void
set_message(CallbackRequest *req, char sep, const char *a, int alen,
			const char *b, int blen, const char *body, Size bodylen,
			const char *suffix)
{
	Size		suffixlen = strlen(suffix);
	Size		headlen = alen + 1 + (b ? blen + 1 : 0);
	char	   *message;
	char	   *p;

	if (bodylen > MaxAllocSize - headlen - suffixlen)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("callback body is too large")));
	p = message = palloc(headlen + bodylen + suffixlen);
	memcpy(p, a, alen);
	p += alen;
	*p++ = sep;
	if (b)
	{
		memcpy(p, b, blen);
		p += blen;
		*p++ = sep;
	}
	if (bodylen > 0)
		memcpy(p, body, bodylen);
	memcpy(p + bodylen, suffix, suffixlen);
	req->message = message;
	req->messagelen = headlen + bodylen + suffixlen;
}

/* Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...], other entries ignored */
static void
parse_stripe(CallbackRequest *req, const RequestFields *headers,
			 const char *body, Size bodylen, TimestampTz at,
			 int tolerance_s, int future_tolerance_s)
{
	const char *hname = "Stripe-Signature";
	int			len;
	char	   *value = header_value(headers, hname, true, &len);
	char	   *t = NULL;
	int			tlen = 0;
	int			allocated = 2;
	char	   *item = value;

	req->sigs = palloc(allocated * sizeof(CallbackSignature));
	while (item != NULL)
	{
		char	   *next = strchr(item, ',');
		char	   *end = next ? next : item + strlen(item);
		char	   *eq;

		while (item < end && (*item == ' ' || *item == '\t'))
			item++;
		while (end > item && (end[-1] == ' ' || end[-1] == '\t'))
			end--;
		*end = '\0';
		eq = strchr(item, '=');
		if (eq != NULL)
		{
			*eq = '\0';
			if (strcmp(item, "t") == 0)
			{
				if (t != NULL)
					ereport(ERROR,
							(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
							 errmsg("header \"%s\" has more than one timestamp",
									hname)));
				t = eq + 1;
				tlen = end - t;
			}
			else if (strcmp(item, "v1") == 0)
			{
				CallbackSignature sig;

				if (!decode_hex(eq + 1, end - (eq + 1), &sig))
					ereport(ERROR,
							(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
							 errmsg("header \"%s\" has a v1 signature that is not hex",
									hname)));
				add_hmac_signature(req, &allocated, hname, sig);
			}
		}
		item = next ? next + 1 : NULL;
	}

	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" has no timestamp", hname),
				 errdetail("The header must have a t= entry.")));
	check_v1_and_timestamp(req, hname, hname, t, tlen, at, tolerance_s,
						   future_tolerance_s);
	set_message(req, '.', t, tlen, NULL, 0, body, bodylen, "");
}

/* webhook-id, webhook-timestamp, webhook-signature: "v1,<b64> v1,<b64>" */
static void
parse_standard_webhooks(CallbackRequest *req, const RequestFields *headers,
						const char *body, Size bodylen, TimestampTz at,
						int tolerance_s, int future_tolerance_s)
{
	const char *idname;
	const char *tsname;
	const char *signame;
	int			idlen;
	int			tslen;
	int			siglen;
	char	   *id = header_value_alt(headers, "webhook-id", "svix-id",
									  &idname, &idlen);
	char	   *ts = header_value_alt(headers, "webhook-timestamp",
									  "svix-timestamp", &tsname, &tslen);
	char	   *sigs = header_value_alt(headers, "webhook-signature",
										"svix-signature", &signame, &siglen);
	int			allocated = 2;
	char	   *entry;
	char	   *saveptr = NULL;

	req->sigs = palloc(allocated * sizeof(CallbackSignature));
	for (entry = strtok_r(sigs, " ", &saveptr); entry != NULL;
		 entry = strtok_r(NULL, " ", &saveptr))
	{
		char	   *comma = strchr(entry, ',');
		CallbackSignature sig;

		if (comma == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
					 errmsg("header \"%s\" has an entry without a version",
							signame),
					 errdetail("Each space-separated entry must be a version, a comma and a signature.")));
		*comma = '\0';
		if (strcmp(entry, "v1") != 0)
			continue;
		if (!decode_base64(comma + 1, strlen(comma + 1), &sig))
			ereport(ERROR,
					(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
					 errmsg("header \"%s\" has a v1 signature that is not base64",
							signame)));
		add_hmac_signature(req, &allocated, signame, sig);
	}
	check_v1_and_timestamp(req, signame, tsname, ts, tslen, at, tolerance_s,
						   future_tolerance_s);
	set_message(req, '.', id, idlen, ts, tslen, body, bodylen, "");
}

/* One header of hex or base64, optionally "sha256=" prefixed, over the body */
static void
parse_hmac_sha256(CallbackRequest *req, const char *hname,
				  const RequestFields *headers, const char *body,
				  Size bodylen)
{
	int			len;
	char	   *value = header_value(headers, hname, true, &len);
	CallbackSignature sig;

	if (len > 7 && pg_strncasecmp(value, "sha256=", 7) == 0)
	{
		value += 7;
		len -= 7;
	}
	/* 64 hex digits are also base64 (of 48 bytes): hex comes first. */
	if (!decode_hex(value, len, &sig) && !decode_base64(value, len, &sig))
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" is neither hex nor base64", hname)));
	check_hmac_length(hname, &sig);

	req->sigs = palloc(sizeof(CallbackSignature));
	req->sigs[0] = sig;
	req->nsigs = 1;
	req->message = body ? body : "";
	req->messagelen = bodylen;
}

/* Wechatpay-Timestamp, -Nonce, -Signature, -Serial */
static void
parse_wechatpay(CallbackRequest *req, const RequestFields *headers,
				const char *body, Size bodylen, TimestampTz at,
				int tolerance_s, int future_tolerance_s, char **key_id)
{
	int			tslen;
	int			noncelen;
	int			siglen;
	int			seriallen;
	int			typelen;
	char	   *ts = header_value(headers, "Wechatpay-Timestamp", true, &tslen);
	char	   *nonce = header_value(headers, "Wechatpay-Nonce", true, &noncelen);
	char	   *sigtext = header_value(headers, "Wechatpay-Signature", true,
									   &siglen);
	char	   *serial = header_value(headers, "Wechatpay-Serial", true,
									  &seriallen);
	char	   *type = header_value(headers, "Wechatpay-Signature-Type", false,
									&typelen);

	if (type != NULL && strcmp(type, WECHATPAY_SIGNATURE_TYPE) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" names an unsupported signature type",
						"Wechatpay-Signature-Type"),
				 errdetail("Only %s is supported.", WECHATPAY_SIGNATURE_TYPE)));

	req->sigs = palloc(sizeof(CallbackSignature));
	if (!decode_base64(sigtext, siglen, &req->sigs[0]))
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("header \"%s\" is not base64", "Wechatpay-Signature")));
	req->nsigs = 1;
	check_timestamp("Wechatpay-Timestamp", ts, tslen, at, tolerance_s,
					future_tolerance_s);
	set_message(req, '\n', ts, tslen, nonce, noncelen, body, bodylen, "\n");

	if (key_id)
		*key_id = serial;
}

static int
field_name_cmp(const void *a, const void *b)
{
	const RequestField *fa = *(const RequestField *const *) a;
	const RequestField *fb = *(const RequestField *const *) b;
	int			r = memcmp(fa->name, fb->name, Min(fa->namelen, fb->namelen));

	if (r != 0)
		return r;
	return (fa->namelen > fb->namelen) - (fa->namelen < fb->namelen);
}

static bool
field_is(const RequestField *f, const char *name)
{
	return f->namelen == strlen(name) && memcmp(f->name, name, f->namelen) == 0;
}

/* Alipay's form parameters: "k=v&k=v" sorted, without sign and sign_type */
static void
parse_alipay(CallbackRequest *req, const RequestFields *params)
{
	const RequestField *sign = NULL;
	const RequestField **signed_fields;
	int			nsigned = 0;
	int			i;
	StringInfoData msg;

	signed_fields = palloc(Max(params->nfields, 1) * sizeof(RequestField *));
	for (i = 0; i < params->nfields; i++)
	{
		const RequestField *f = &params->fields[i];

		if (f->value == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
					 errmsg("parameter \"%s\" is not a string",
							pnstrdup(f->name, f->namelen))));
		if (field_is(f, "sign"))
			sign = f;
		else if (field_is(f, "sign_type"))
		{
			if (!(f->valuelen == 4 && memcmp(f->value, "RSA2", 4) == 0))
				ereport(ERROR,
						(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
						 errmsg("parameter \"sign_type\" is not RSA2"),
						 errdetail("Only RSA2 (RSA-SHA256) signatures are accepted.")));
		}
		else
			signed_fields[nsigned++] = f;
	}

	if (sign == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("parameter \"sign\" is missing")));
	req->sigs = palloc(sizeof(CallbackSignature));
	if (!decode_base64(sign->value, sign->valuelen, &req->sigs[0]))
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_HEADER_INVALID),
				 errmsg("parameter \"sign\" is not base64")));
	req->nsigs = 1;

	/* jsonb orders keys by length first; Alipay sorts by bytes. */
	qsort(signed_fields, nsigned, sizeof(RequestField *), field_name_cmp);
	initStringInfo(&msg);
	for (i = 0; i < nsigned; i++)
	{
		if (i > 0)
			appendStringInfoChar(&msg, '&');
		appendBinaryStringInfo(&msg, signed_fields[i]->name,
							   signed_fields[i]->namelen);
		appendStringInfoChar(&msg, '=');
		appendBinaryStringInfo(&msg, signed_fields[i]->value,
							   signed_fields[i]->valuelen);
	}
	pfree(signed_fields);
	req->message = msg.data;
	req->messagelen = msg.len;
}

CallbackRequest *
callback_request_parse(CallbackScheme scheme, const char *header,
					   Jsonb *headers, const char *body, Size bodylen,
					   TimestampTz at, int tolerance_s, int future_tolerance_s,
					   char **key_id)
{
	CallbackRequest *req = palloc0(sizeof(CallbackRequest));
	RequestFields fields;

	if (key_id)
		*key_id = NULL;
	req->scheme = scheme;
	fields = collect_fields(headers, scheme == CALLBACK_SCHEME_ALIPAY_RSA2);

	switch (scheme)
	{
		case CALLBACK_SCHEME_STRIPE:
			parse_stripe(req, &fields, body, bodylen, at, tolerance_s,
						 future_tolerance_s);
			break;
		case CALLBACK_SCHEME_STANDARD_WEBHOOKS:
			parse_standard_webhooks(req, &fields, body, bodylen, at,
									tolerance_s, future_tolerance_s);
			break;
		case CALLBACK_SCHEME_HMAC_SHA256:
			parse_hmac_sha256(req, header ? header : DEFAULT_HMAC_HEADER,
							  &fields, body, bodylen);
			break;
		case CALLBACK_SCHEME_WECHATPAY_V3:
			parse_wechatpay(req, &fields, body, bodylen, at, tolerance_s,
							future_tolerance_s, key_id);
			break;
		case CALLBACK_SCHEME_ALIPAY_RSA2:
			parse_alipay(req, &fields);
			break;
	}
	if (fields.fields)
		pfree(fields.fields);
	return req;
}


/* ---------------------------------------------------------------------
 * Verification
 * ---------------------------------------------------------------------
 */

static bool
verify_hmac(CallbackRequest *req, const unsigned char *key, int keylen)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned int maclen = 0;
	bool		ok = false;
	int			i;

	if (HMAC(EVP_sha256(), key, keylen,
			 (const unsigned char *) req->message, req->messagelen,
			 mac, &maclen) == NULL || maclen != HMAC_SHA256_LEN)
	{
		ERR_clear_error();
		elog(ERROR, "could not compute HMAC-SHA256");
	}

	/* Every signature is compared, so timing shows neither which nor how. */
	for (i = 0; i < req->nsigs; i++)
		if (req->sigs[i].len == HMAC_SHA256_LEN &&
			CRYPTO_memcmp(mac, req->sigs[i].data, HMAC_SHA256_LEN) == 0)
			ok = true;
	explicit_bzero(mac, sizeof(mac));
	return ok;
}

/*
 * Decoding a PEM key costs several times what the RSA verification does
 * (OpenSSL 3 runs it through its decoder framework), and a provider has one
 * key or a few, so each backend keeps the last few it decoded, keyed by
 * their exact PEM text.  The keys are public; the texts are copied into
 * TopMemoryContext, and a key is freed when its slot is reused.
 */
#define RSA_KEY_CACHE_SIZE 8

typedef struct CachedKey
{
	char	   *pem;
	Size		len;
	EVP_PKEY   *pkey;
} CachedKey;

static CachedKey rsa_key_cache[RSA_KEY_CACHE_SIZE];
static int	rsa_key_cache_next = 0;

/* The key of a PEM text, or NULL; it belongs to the cache. */
static EVP_PKEY *
cached_rsa_public_key(const char *pem, Size len)
{
	CachedKey  *slot;
	PemProblem	problem;
	EVP_PKEY   *pkey;
	char	   *copy;
	int			i;

	for (i = 0; i < RSA_KEY_CACHE_SIZE; i++)
	{
		slot = &rsa_key_cache[i];
		if (slot->pkey != NULL && slot->len == len &&
			memcmp(slot->pem, pem, len) == 0)
			return slot->pkey;
	}

	pkey = pem_rsa_public_key(pem, len, &problem);
	if (pkey == NULL)
		return NULL;
	copy = MemoryContextAllocExtended(TopMemoryContext, Max(len, 1),
									  MCXT_ALLOC_NO_OOM);
	if (copy == NULL)
	{
		EVP_PKEY_free(pkey);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	}
	memcpy(copy, pem, len);

	slot = &rsa_key_cache[rsa_key_cache_next];
	rsa_key_cache_next = (rsa_key_cache_next + 1) % RSA_KEY_CACHE_SIZE;
	if (slot->pkey != NULL)
	{
		EVP_PKEY_free(slot->pkey);
		pfree(slot->pem);
	}
	slot->pem = copy;
	slot->len = len;
	slot->pkey = pkey;
	return pkey;
}

static bool
verify_rsa(CallbackRequest *req, const char *secret, Size len)
{
	EVP_PKEY   *pkey = cached_rsa_public_key(secret, len);
	EVP_MD_CTX *mdctx;
	EVP_PKEY_CTX *pctx = NULL;
	bool		failed = false;
	bool		ok = false;
	int			i;

	if (pkey == NULL)
		return false;

	for (i = 0; i < req->nsigs && !ok && !failed; i++)
	{
		mdctx = EVP_MD_CTX_new();
		if (mdctx == NULL ||
			EVP_DigestVerifyInit_ex(mdctx, &pctx, "SHA256", NULL, NULL, pkey,
									NULL) != 1 ||
			EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) <= 0)
			failed = true;
		else
			ok = EVP_DigestVerify(mdctx, req->sigs[i].data, req->sigs[i].len,
								  (const unsigned char *) req->message,
								  req->messagelen) == 1;
		EVP_MD_CTX_free(mdctx);
	}

	ERR_clear_error();
	if (failed)
		elog(ERROR, "could not set up RSA-SHA256 verification");
	return ok;
}

bool
callback_request_verify(CallbackRequest *req, const char *secret, Size len)
{
	switch (req->scheme)
	{
		case CALLBACK_SCHEME_STRIPE:
		case CALLBACK_SCHEME_HMAC_SHA256:
			if (len > INT_MAX)
				return false;
			return verify_hmac(req, (const unsigned char *) secret, (int) len);

		case CALLBACK_SCHEME_STANDARD_WEBHOOKS:
			{
				CallbackSignature key;
				bool		ok;

				if (!whsec_key(secret, len, &key))
					return false;
				ok = verify_hmac(req, key.data, key.len);
				explicit_bzero(key.data, key.len);
				pfree(key.data);
				return ok;
			}

		case CALLBACK_SCHEME_WECHATPAY_V3:
		case CALLBACK_SCHEME_ALIPAY_RSA2:
			return verify_rsa(req, secret, len);
	}
	return false;
}
