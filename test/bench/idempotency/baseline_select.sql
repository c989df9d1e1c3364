\set i random(1, 100000)
SELECT state, response, response_code FROM baseline_keys WHERE scope = 'replay' AND key = 'r' || :i;
