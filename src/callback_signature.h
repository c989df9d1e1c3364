/* TEMPORARY STUB: replaced by the helper's file */
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
extern CallbackScheme callback_scheme_parse(const char *scheme, char **header);
extern void callback_secret_check(CallbackScheme scheme, const char *secret, Size len);
typedef struct CallbackRequest CallbackRequest;
extern CallbackRequest *callback_request_parse(CallbackScheme scheme, const char *header,
					   Jsonb *headers, const char *body, Size bodylen, TimestampTz at,
					   int tolerance_s, int future_tolerance_s, char **key_id);
extern bool callback_request_verify(CallbackRequest *req, const char *secret, Size len);
#endif
