-- The least SQL a worker runs per event: pick and claim one pending row without waiting for
-- the rows others are taking (committed), then mark it processed, fenced by the claim, in a
-- transaction of its own (where the receivers' work would be).
WITH picked AS MATERIALIZED (
    SELECT id FROM stripe_idempotency_stripeevent
    WHERE processed_at IS NULL AND claim_expires_at IS NULL AND claimed_at IS NULL
    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
)
UPDATE stripe_idempotency_stripeevent SET claim_token = gen_random_uuid(), claimed_at = statement_timestamp(),
    claimed_by = 'pgbench', claim_expires_at = statement_timestamp() + make_interval(secs => 300),
    attempts = attempts + 1
WHERE id IN (SELECT id FROM picked)
RETURNING id, quote_literal(claim_token::text) AS tok \gset
BEGIN;
UPDATE stripe_idempotency_stripeevent SET processed_at = statement_timestamp(), claim_expires_at = NULL, claim_token = NULL
    WHERE id = :id AND claim_token = :tok::uuid;
COMMIT;
