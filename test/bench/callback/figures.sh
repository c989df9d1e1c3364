#!/usr/bin/env bash
# After the cases: a check that every event the extension received was
# recorded once and applied or found stale, then the cost of one signature
# verification by payments.verify_callback, RSA-2048 (wechatpay-v3) beside
# HMAC-SHA256 (hmac-sha256) over the same 1 KB body, in microseconds: the
# best of a few timed loops of calls in one session.  The key pair is made
# here with openssl, the request signed with openssl dgst, as the provider
# would.
#
# Called by test/bench/run.sh with PGHOST/PGPORT/PGUSER/PGDATABASE set.
set -euo pipefail

CALLS=${BENCH_VERIFY_CALLS:-2000}
LOOPS=${BENCH_VERIFY_LOOPS:-5}
PSQL=(psql -X -q -A -t -v ON_ERROR_STOP=1)

bad=$("${PSQL[@]}" -c "SELECT count(*) FROM payments.callbacks
                        WHERE outcome NOT IN ('applied', 'stale') OR deliveries <> 1")
[ "$bad" = 0 ] || { echo "$bad callbacks were not applied or stale once" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/key.pem" 2>/dev/null
openssl pkey -in "$tmp/key.pem" -pubout -out "$tmp/pub.pem"
ts=$(date +%s)
nonce=5K8264ILTKCH16CQ2502SI8ZNMTM67VS
"${PSQL[@]}" -c "SELECT encode(body, 'base64') FROM request" | base64 -d >"$tmp/body"
printf '%s\n%s\n' "$ts" "$nonce" >"$tmp/message"
cat "$tmp/body" >>"$tmp/message"
printf '\n' >>"$tmp/message"
sig=$(openssl dgst -sha256 -sign "$tmp/key.pem" "$tmp/message" | base64 -w0)

"${PSQL[@]}" -v pub="$(cat "$tmp/pub.pem")" -v ts="$ts" -v nonce="$nonce" -v sig="$sig" \
	-v calls="$CALLS" -v loops="$LOOPS" <<'SQL'
SELECT FROM payments.callback_key_add('wechatpay', 'wechatpay-v3', :'pub', 'bench-serial-1');
CREATE TEMP TABLE signed AS
SELECT 'wechatpay' AS provider, body,
       jsonb_build_object('Wechatpay-Timestamp', :'ts', 'Wechatpay-Nonce', :'nonce',
                          'Wechatpay-Signature', :'sig', 'Wechatpay-Serial', 'bench-serial-1') AS headers
  FROM request
UNION ALL
SELECT 'bench', body, headers FROM request;

-- The least time per call over a few loops, in microseconds.
CREATE FUNCTION pg_temp.us_per_call(p text, calls int, loops int) RETURNS numeric
LANGUAGE plpgsql AS $$
DECLARE
    h jsonb;
    b bytea;
    t0 timestamptz;
    best numeric;
BEGIN
    SELECT headers, body INTO STRICT h, b FROM signed WHERE provider = p;
    PERFORM payments.verify_callback(p, h, b);      -- the key decoded once
    FOR l IN 1..loops LOOP
        t0 := clock_timestamp();
        FOR i IN 1..calls LOOP
            PERFORM payments.verify_callback(p, h, b);
        END LOOP;
        best := least(best, extract(epoch FROM clock_timestamp() - t0) * 1e6 / calls);
    END LOOP;
    RETURN best;
END
$$;
SELECT format('%-12s %8s µs per RSA-2048 verification (verify_callback, wechatpay-v3)', 'callback',
              round(pg_temp.us_per_call('wechatpay', :calls, :loops), 1));
SELECT format('%-12s %8s µs per HMAC-SHA256 verification (verify_callback, hmac-sha256), for comparison', 'callback',
              round(pg_temp.us_per_call('bench', :calls, :loops), 1));
SQL
