\set i random(1, 100000)
SELECT state, response, response_code,
       request_hash = sha256(convert_to(jsonb_build_object('order', (:i)::int, 'amount', 4990)::text, 'UTF8')) AS same_request
  FROM baseline_keys WHERE scope = 'replay' AND key = 'r' || :i;
