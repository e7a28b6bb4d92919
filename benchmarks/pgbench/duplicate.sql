-- The raw SQL of a duplicate delivery: the claim statement, refused, returning the row.
WITH claimed AS (
    INSERT INTO stripe_idempotency_stripeevent AS e (
        event_id, type, livemode, api_version, created, payload, received_at,
        claimed_at, claimed_by, claim_expires_at, claim_token, attempts, last_error
    ) VALUES (
        'evt_pgb_duplicate', 'customer.subscription.deleted', false, '2024-06-20', now(), '{}',
        statement_timestamp(), statement_timestamp(), 'pgbench',
        statement_timestamp() + make_interval(secs => 300), gen_random_uuid(), 1, ''
    )
    ON CONFLICT (event_id) DO UPDATE SET claim_token = EXCLUDED.claim_token, attempts = e.attempts + 1
    WHERE e.processed_at IS NULL AND (e.claim_expires_at IS NULL OR e.claim_expires_at <= statement_timestamp())
    RETURNING id, processed_at
)
SELECT id, processed_at FROM claimed
UNION ALL
SELECT id, processed_at FROM stripe_idempotency_stripeevent
    WHERE event_id = 'evt_pgb_duplicate' AND NOT EXISTS (SELECT 1 FROM claimed);
