/*-------------------------------------------------------------------------
 *
 * callback_keys.c
 *	  Callback providers, the role that owns each, and their keyring:
 *	  callback_key_add and callback_key_revoke.
 *
 * A provider is a name the first role to use it owns.  Keys, routes,
 * received events and expectations of a provider are that role's: a role
 * without its privileges can neither plant a key nor an event id in its
 * name, which would let it forge callbacks or make the genuine one a
 * duplicate.
 *
 * A secret is written once and never read back by SQL: no role but the
 * extension's owner may read the column, and no message of this file
 * quotes it.  The statement that adds a key carries the secret, so every
 * error raised while adding one hides the statement from the server log.
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

#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/timestamp.h"

PG_FUNCTION_INFO_V1(payments_callback_key_add);
PG_FUNCTION_INFO_V1(payments_callback_key_revoke);

static SPIPlanPtr owner_plan;
static SPIPlanPtr claim_plan;
static SPIPlanPtr scheme_plan;
static SPIPlanPtr add_plan;
static SPIPlanPtr key_plan;
static SPIPlanPtr revoke_plan;

/* A provider name argument: 1 to CALLBACK_PROVIDER_MAX_BYTES bytes. */
const char *
callback_arg_provider(FunctionCallInfo fcinfo, int argno)
{
	return text_to_cstring(payments_arg_text(fcinfo, argno, "provider",
											 CALLBACK_PROVIDER_MAX_BYTES));
}

/* The owner of a provider, or InvalidOid; the caller is connected to SPI. */
static Oid
read_owner(Datum provider)
{
	bool		isnull;

	payments_prepare(&owner_plan,
					 "SELECT owner::oid FROM @extschema@.callback_providers"
					 " WHERE provider = $1",
					 1, (Oid[]) {TEXTOID});
	if (payments_execute(owner_plan, &provider, NULL, SPI_OK_SELECT, 0) == 1)
		return DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1, &isnull));
	return InvalidOid;
}

/*
 * The role that owns provider, after checking that the calling role has
 * its privileges.  A provider nobody named yet is refused with PM405, or,
 * if claim is set, becomes the caller's.  The extension's tables are read
 * as tables_owner.
 */
Oid
callback_provider_owner(const char *provider, bool claim, Oid tables_owner)
{
	Oid			caller = GetUserId();
	Datum		values[2];
	Oid			owner = InvalidOid;
	bool		isnull;
	PaymentsSavedUser saved;

	values[0] = CStringGetTextDatum(provider);
	values[1] = ObjectIdGetDatum(caller);

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	owner = read_owner(values[0]);
	if (!OidIsValid(owner) && claim)
	{
		payments_check_not_in_recovery();

		/*
		 * Two roles claiming the same new name at once: ON CONFLICT waits
		 * for the first, and the second reads the owner that won.
		 */
		payments_prepare(&claim_plan,
						 "INSERT INTO @extschema@.callback_providers AS p (provider, owner)"
						 " VALUES ($1, $2::regrole)"
						 " ON CONFLICT (provider) DO UPDATE SET owner = p.owner"
						 " RETURNING owner::oid",
						 2, (Oid[]) {TEXTOID, OIDOID});
		payments_execute(claim_plan, values, NULL, SPI_OK_INSERT_RETURNING, 0);
		owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											   SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();
	payments_end_as_owner(&saved);

	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_NOT_FOUND),
				 errmsg("callback provider \"%s\" does not exist", provider),
				 errhint("A provider exists once a key, a route or an expectation names it: add its keys with payments.callback_key_add.")));
	if (!has_privs_of_role(caller, owner))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied for callback provider \"%s\"", provider),
				 errdetail("The provider belongs to a role whose privileges role \"%s\" does not have.",
						   GetUserNameFromId(caller, false)),
				 errhint("Use a provider name of your own, or ask for the owner's role to be granted to yours.")));
	return owner;
}

/*
 * Whether the calling role may see provider's figures: it owns the
 * provider (or has the owner's privileges), or it is a payments_operator.
 */
bool
callback_provider_visible(const char *provider, Oid tables_owner)
{
	Oid			caller = GetUserId();
	Oid			operator = get_role_oid(PAYMENTS_OPERATOR_ROLE, true);
	Datum		values[1];
	Oid			owner = InvalidOid;
	PaymentsSavedUser saved;

	values[0] = CStringGetTextDatum(provider);
	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	owner = read_owner(values[0]);
	SPI_finish();
	payments_end_as_owner(&saved);

	return OidIsValid(owner) &&
		(has_privs_of_role(caller, owner) ||
		 (OidIsValid(operator) && has_privs_of_role(caller, operator)));
}

static void
check_window(TimestampTz from, TimestampTz until, bool until_null)
{
	if (TIMESTAMP_NOT_FINITE(from))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("valid_from must be a finite time"),
				 errhidestmt(true)));
	if (!until_null && (TIMESTAMP_IS_NOBEGIN(until) || until <= from))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("valid_until must be later than valid_from"),
				 errhidestmt(true)));
}

static int64
key_add(FunctionCallInfo fcinfo)
{
	static const Oid argtypes[] = {TEXTOID, TEXTOID, TEXTOID, TEXTOID,
	TIMESTAMPTZOID, TIMESTAMPTZOID, OIDOID};
	const char *provider;
	char	   *scheme;
	text	   *secret;
	text	   *key_id = NULL;
	TimestampTz valid_from;
	TimestampTz valid_until = 0;
	CallbackScheme parsed;
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	PaymentsSavedUser saved;
	bool		isnull;
	int64		id;

	provider = callback_arg_provider(fcinfo, 0);
	scheme = text_to_cstring(payments_arg_text(fcinfo, 1, "scheme", 255));
	parsed = callback_scheme_parse(scheme, NULL);
	secret = payments_arg_text(fcinfo, 2, "secret", CALLBACK_SECRET_MAX_BYTES);
	callback_secret_check(parsed, VARDATA_ANY(secret), VARSIZE_ANY_EXHDR(secret));
	if (!PG_ARGISNULL(3))
		key_id = payments_arg_text(fcinfo, 3, "key_id", CALLBACK_KEY_ID_MAX_BYTES);
	else if (parsed == CALLBACK_SCHEME_WECHATPAY_V3)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("key_id must not be null for scheme wechatpay-v3"),
				 errdetail("WeChat Pay names the platform certificate that signed a callback in header Wechatpay-Serial; the key's key_id must be that serial number.")));
	payments_arg_not_null(fcinfo, 4, "valid_from");
	valid_from = PG_GETARG_TIMESTAMPTZ(4);
	if (!PG_ARGISNULL(5))
		valid_until = PG_GETARG_TIMESTAMPTZ(5);
	check_window(valid_from, valid_until, PG_ARGISNULL(5));
	payments_check_not_in_recovery();

	(void) callback_provider_owner(provider, true, tables_owner);

	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(scheme);
	values[2] = PointerGetDatum(secret);
	if (key_id != NULL)
		values[3] = PointerGetDatum(key_id);
	else
		nulls[3] = 'n';
	values[4] = TimestampTzGetDatum(valid_from);
	values[5] = TimestampTzGetDatum(valid_until);
	if (PG_ARGISNULL(5))
		nulls[5] = 'n';
	values[6] = ObjectIdGetDatum(GetUserId());

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();

	/*
	 * One scheme per provider: a request is parsed once, by its scheme,
	 * before its signature is checked against each key.  Revoked keys do
	 * not count, so a provider can move to another scheme.
	 */
	payments_prepare(&scheme_plan,
					 "SELECT scheme FROM @extschema@.callback_keys"
					 " WHERE provider = $1 AND revoked_at IS NULL AND scheme <> $2"
					 " LIMIT 1",
					 2, (Oid[]) {TEXTOID, TEXTOID});
	if (payments_execute(scheme_plan, values, NULL, SPI_OK_SELECT, 0) == 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("callback provider \"%s\" has keys of scheme \"%s\"",
						provider,
						TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1, &isnull))),
				 errdetail("All keys of a provider that are not revoked follow one scheme."),
				 errhint("Revoke the provider's keys of the other scheme first.")));

	/* A key_id left out is the key's id, as text. */
	payments_prepare(&add_plan,
					 "WITH n AS (SELECT nextval(pg_catalog.pg_get_serial_sequence("
					 "   '@extschema@.callback_keys', 'id')) AS id)"
					 " INSERT INTO @extschema@.callback_keys"
					 " (id, provider, scheme, key_id, secret, valid_from, valid_until, added_by)"
					 " SELECT n.id, $1, $2, coalesce($4, n.id::text), $3, $5, $6, $7::regrole FROM n"
					 " ON CONFLICT (provider, key_id) DO NOTHING"
					 " RETURNING id",
					 7, argtypes);
	if (payments_execute(add_plan, values, nulls, SPI_OK_INSERT_RETURNING, 0) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("callback provider \"%s\" already has a key with this key_id",
						provider),
				 errhint("Give the new key another key_id; revoking a key keeps its key_id taken.")));
	id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
									 SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	payments_end_as_owner(&saved);
	return id;
}

/*
 * payments.callback_key_add(provider, scheme, secret, key_id, valid_from,
 * valid_until)
 *
 * Whatever fails, the error hides the statement, which holds the secret,
 * from the server log (log_min_error_statement), and so its context, which
 * quotes the statement when a function or DO block made the call.
 */
Datum
payments_callback_key_add(PG_FUNCTION_ARGS)
{
	volatile int64 id = 0;
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		id = key_add(fcinfo);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->hide_stmt = true;
		edata->hide_ctx = true;
		edata->context = NULL;
		edata->internalquery = NULL;
		ReThrowError(edata);
	}
	PG_END_TRY();
	PG_RETURN_INT64(id);
}

/*
 * payments.callback_key_revoke(id): the key never verifies again.  Returns
 * false if it was revoked before.
 */
Datum
payments_callback_key_revoke(PG_FUNCTION_ARGS)
{
	Oid			tables_owner = payments_function_owner(fcinfo->flinfo->fn_oid);
	int64		id;
	Datum		values[1];
	PaymentsSavedUser saved;
	MemoryContext cxt = CurrentMemoryContext;
	char	   *provider = NULL;
	bool		active = false;
	bool		isnull;

	payments_arg_not_null(fcinfo, 0, "id");
	id = PG_GETARG_INT64(0);
	values[0] = Int64GetDatum(id);
	payments_check_not_in_recovery();

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&key_plan,
					 "SELECT provider, revoked_at IS NOT NULL"
					 " FROM @extschema@.callback_keys WHERE id = $1 FOR UPDATE",
					 1, (Oid[]) {INT8OID});
	if (payments_execute(key_plan, values, NULL, SPI_OK_SELECT, 0) == 1)
	{
		provider = MemoryContextStrdup(cxt, SPI_getvalue(SPI_tuptable->vals[0],
														  SPI_tuptable->tupdesc, 1));
		active = !DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 2, &isnull));
	}
	SPI_finish();
	payments_end_as_owner(&saved);

	if (provider == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_PM_CALLBACK_NOT_FOUND),
				 errmsg("callback key %lld does not exist", (long long) id)));
	(void) callback_provider_owner(provider, false, tables_owner);
	if (!active)
		PG_RETURN_BOOL(false);

	payments_begin_as_owner(tables_owner, false, &saved);
	SPI_connect();
	payments_prepare(&revoke_plan,
					 "UPDATE @extschema@.callback_keys SET revoked_at = now()"
					 " WHERE id = $1",
					 1, (Oid[]) {INT8OID});
	payments_execute(revoke_plan, values, NULL, SPI_OK_UPDATE, 0);
	SPI_finish();
	payments_end_as_owner(&saved);
	PG_RETURN_BOOL(true);
}
