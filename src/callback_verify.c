/*-------------------------------------------------------------------------
 *
 * callback_verify.c
 *	  verify_callback: a provider's request checked against the keys of
 *	  the provider's keyring that are valid at the time it is judged.
 *
 * The request is parsed once by the provider's scheme (which refuses a
 * missing or malformed header and a timestamp outside the window), then
 * its signature is checked against each valid key, newest first, until one
 * verifies.  Every refusal is counted (callback_failures.c) before it is
 * raised, since the error rolls back anything a table could record.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "callback.h"
#include "callback_signature.h"
#include "payments.h"
#include "args.h"
#include "owner_rights.h"
#include "spi_util.h"

#include "access/detoast.h"
#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_verify_callback);

static int	callback_tolerance = 300;
static int	callback_future_tolerance = 300;
static int	callback_max_body = 1024 * 1024;

static SPIPlanPtr keys_plan;
static SPIPlanPtr any_key_plan;

void
callback_verify_init(void)
{
	DefineCustomIntVariable("payments.callback_tolerance",
							gettext_noop("How old the signed timestamp of a callback may be."),
							gettext_noop("An older one is refused, so that a captured request cannot be replayed later."),
							&callback_tolerance,
							300,
							1,
							7 * 24 * 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.callback_future_tolerance",
							gettext_noop("How far ahead of the database's clock the signed timestamp of a callback may be."),
							NULL,
							&callback_future_tolerance,
							300,
							0,
							7 * 24 * 3600,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("payments.callback_max_body",
							gettext_noop("The largest callback body that is verified."),
							NULL,
							&callback_max_body,
							1024 * 1024,
							1,
							0x3fffffff,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
}

/* The length of a body in bytes, read without detoasting it. */
Size
callback_body_length(Datum body)
{
	struct varlena *v = (struct varlena *) DatumGetPointer(body);

	if (VARATT_IS_EXTERNAL(v) || VARATT_IS_COMPRESSED(v))
		return toast_raw_datum_size(body) - VARHDRSZ;
	return VARSIZE_ANY_EXHDR(v);
}

void
callback_check_body_size(Size len)
{
	if (len > (Size) callback_max_body)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("callback body is too large"),
				 errdetail("The body takes %zu bytes; the limit, payments.callback_max_body, is %d bytes.",
						   len, callback_max_body)));
}

/*
 * Check a request of provider against its keys valid at `at`; returns the
 * key_id of the key that verified it, or raises PM401 to PM404.  The
 * caller has checked that the calling role owns the provider.
 */
char *
callback_verify(const char *provider, Jsonb *headers, const char *body,
				Size bodylen, TimestampTz at, Oid tables_owner)
{
	Datum		values[2];
	PaymentsSavedUser saved;
	SPITupleTable *keys;
	uint64		nkeys;
	char	   *key_id = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	callback_check_body_size(bodylen);
	if (TIMESTAMP_NOT_FINITE(at))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("at must be a finite time")));

	values[0] = CStringGetTextDatum(provider);
	values[1] = TimestampTzGetDatum(at);

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&keys_plan,
					 "SELECT key_id, scheme, secret FROM @extschema@.callback_keys"
					 " WHERE provider = $1 AND revoked_at IS NULL"
					 "   AND valid_from <= $2 AND (valid_until IS NULL OR valid_until > $2)"
					 " ORDER BY valid_from DESC, id DESC",
					 2, (Oid[]) {TEXTOID, TIMESTAMPTZOID});
	nkeys = payments_execute(keys_plan, values, NULL, SPI_OK_SELECT, 0);
	keys = SPI_tuptable;

	PG_TRY();
	{
		if (nkeys == 0)
		{
			bool		any;

			payments_prepare(&any_key_plan,
							 "SELECT FROM @extschema@.callback_keys WHERE provider = $1 LIMIT 1",
							 1, (Oid[]) {TEXTOID});
			any = payments_execute(any_key_plan, values, NULL, SPI_OK_SELECT, 0) > 0;
			ereport(ERROR,
					(errcode(ERRCODE_PM_CALLBACK_NO_VALID_KEY),
					 errmsg("callback provider \"%s\" has no key valid at %s",
							provider, timestamptz_to_str(at)),
					 any ? errdetail("Every key of the provider is revoked, expired, or not yet valid.") :
					 errdetail("The provider has no keys."),
					 errhint("Add the provider's current key with payments.callback_key_add.")));
		}
		else
		{
			bool		isnull;
			char	   *scheme = TextDatumGetCString(SPI_getbinval(keys->vals[0], keys->tupdesc, 2, &isnull));
			char	   *header = NULL;
			char	   *serial = NULL;
			CallbackScheme parsed = callback_scheme_parse(scheme, &header);
			CallbackRequest *req;
			bool		tried = false;

			if (body == NULL && parsed != CALLBACK_SCHEME_ALIPAY_RSA2)
				ereport(ERROR,
						(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
						 errmsg("body must not be null"),
						 errdetail("Scheme \"%s\" signs the body of the request.", scheme)));
			req = callback_request_parse(parsed, header, headers, body, bodylen, at,
										 callback_tolerance,
										 callback_future_tolerance, &serial);
			for (uint64 i = 0; i < nkeys && key_id == NULL; i++)
			{
				HeapTuple	tup = keys->vals[i];
				char	   *id = SPI_getvalue(tup, keys->tupdesc, 1);
				text	   *secret;

				/* A request that names its key is checked with that key only. */
				if (serial != NULL && strcmp(serial, id) != 0)
					continue;
				tried = true;
				secret = DatumGetTextPP(SPI_getbinval(tup, keys->tupdesc, 3, &isnull));
				if (callback_request_verify(req, VARDATA_ANY(secret),
											VARSIZE_ANY_EXHDR(secret)))
				{
					MemoryContext old = MemoryContextSwitchTo(cxt);

					key_id = pstrdup(id);
					MemoryContextSwitchTo(old);
				}
			}
			if (key_id == NULL && serial != NULL && !tried)
				ereport(ERROR,
						(errcode(ERRCODE_PM_CALLBACK_NO_VALID_KEY),
						 errmsg("callback provider \"%s\" has no key \"%s\" valid at %s",
								provider, serial, timestamptz_to_str(at)),
						 errdetail("The request names the key that signed it; that key is unknown, revoked, expired, or not yet valid."),
						 errhint("Add the provider's current platform key with payments.callback_key_add, with its serial number as key_id.")));
			if (key_id == NULL)
				ereport(ERROR,
						(errcode(ERRCODE_PM_CALLBACK_SIGNATURE_MISMATCH),
						 errmsg("signature of callback from provider \"%s\" does not verify", provider),
						 errdetail("No key of the provider valid at %s verifies the signature over this body.",
								   timestamptz_to_str(at)),
						 errhint("Pass the body exactly as received, before any parsing or re-encoding.")));
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* Count refusals by the scheme and the keys, not bad arguments. */
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode == ERRCODE_PM_CALLBACK_SIGNATURE_MISMATCH ||
			edata->sqlerrcode == ERRCODE_PM_CALLBACK_NO_VALID_KEY ||
			edata->sqlerrcode == ERRCODE_PM_CALLBACK_TIMESTAMP_OUTSIDE ||
			edata->sqlerrcode == ERRCODE_PM_CALLBACK_HEADER_INVALID)
			callback_count_failure(provider);
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	PG_END_TRY();

	SPI_finish();
	payments_end_as_owner(&saved);
	return key_id;
}

/*
 * payments.verify_callback(provider, headers, body, at), body bytea or text
 */
Datum
payments_verify_callback(PG_FUNCTION_ARGS)
{
	const char *provider = callback_arg_provider(fcinfo, 0);
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	Jsonb	   *headers;
	bytea	   *body = NULL;
	TimestampTz at;
	char	   *key_id;

	payments_arg_not_null(fcinfo, 1, "headers");
	headers = PG_GETARG_JSONB_P(1);
	if (!PG_ARGISNULL(2))
		body = PG_GETARG_BYTEA_PP(2);
	payments_arg_not_null(fcinfo, 3, "at");
	at = PG_GETARG_TIMESTAMPTZ(3);

	(void) callback_provider_owner(provider, false, tables_owner);
	key_id = callback_verify(provider, headers,
							 body ? VARDATA_ANY(body) : NULL,
							 body ? VARSIZE_ANY_EXHDR(body) : 0,
							 at, tables_owner);
	PG_RETURN_TEXT_P(cstring_to_text(key_id));
}
