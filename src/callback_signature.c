#include "postgres.h"
#include "callback_signature.h"
CallbackScheme callback_scheme_parse(const char *scheme, char **header) { if (header) *header = NULL; return CALLBACK_SCHEME_STRIPE; }
void callback_secret_check(CallbackScheme scheme, const char *secret, Size len) {}
CallbackRequest *callback_request_parse(CallbackScheme scheme, const char *header, Jsonb *headers, const char *body, Size bodylen, TimestampTz at, int tolerance_s, int future_tolerance_s, char **key_id) { *key_id = NULL; return NULL; }
bool callback_request_verify(CallbackRequest *req, const char *secret, Size len) { return false; }
