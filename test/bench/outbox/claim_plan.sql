-- The statement payments.outbox_claim runs (src/outbox.c), prepared with
-- the same parameter types and always planned generic, as the extension's
-- payments_prepare does (CURSOR_OPT_GENERIC_PLAN): explain.sh EXPLAINs it.
SET plan_cache_mode = force_generic_plan;
PREPARE claim_stmt(text, int4, interval, int8, oid, bool, timestamptz) AS
WITH claimed AS (
 UPDATE payments.outbox o
 SET status = CASE WHEN (o.status = 'in_flight' AND o.attempts >= o.max_attempts) THEN 'dead' ELSE 'in_flight' END,
  attempts = CASE WHEN (o.status = 'in_flight' AND o.attempts >= o.max_attempts) THEN o.attempts ELSE o.attempts + 1 END,
  last_error = CASE WHEN o.status = 'in_flight' THEN 'The lease of its claim ran out.' ELSE o.last_error END,
  lease_expires_at = CASE WHEN (o.status = 'in_flight' AND o.attempts >= o.max_attempts) THEN NULL ELSE clock_timestamp() + $3 END,
  claim_token = CASE WHEN (o.status = 'in_flight' AND o.attempts >= o.max_attempts) THEN NULL ELSE $4 END,
  claimed_by = CASE WHEN (o.status = 'in_flight' AND o.attempts >= o.max_attempts) THEN o.claimed_by ELSE $5::regrole END
 WHERE o.id = ANY (ARRAY(
  SELECT m.id FROM payments.outbox m
  WHERE m.topic = $1 AND m.settled_at IS NULL
   AND ((m.status = 'pending' AND m.next_attempt_at <= $7)
    OR (m.status = 'in_flight' AND m.lease_expires_at < $7))
   AND NOT EXISTS (SELECT FROM payments.outbox e
    WHERE e.topic = $1 AND e.key = m.key AND e.id < m.id
     AND e.settled_at IS NULL)
  ORDER BY m.id LIMIT $2
  FOR UPDATE SKIP LOCKED))
  AND o.settled_at IS NULL
  AND (o.status = 'pending'
   OR (o.status = 'in_flight' AND o.lease_expires_at < $7))
 RETURNING o.*)
 SELECT * FROM claimed WHERE status = 'in_flight' ORDER BY id;
