-- The raw SQL of a first delivery: the claim (one statement, committed), then the
-- receivers' transaction with one effect row and the fenced processed mark.
\set n random(1, 2000000000)
WITH claimed AS (
    INSERT INTO stripe_idempotency_stripeevent AS e (
        event_id, type, livemode, api_version, created, payload, received_at,
        claimed_at, claimed_by, claim_expires_at, claim_token, attempts, last_error
    ) VALUES (
        'evt_pgb_' || :client_id || '_' || :n, 'customer.subscription.deleted', false, '2024-06-20', now(),
        '{"id": "evt_pgb", "object": "event", "type": "customer.subscription.deleted", "api_version": "2024-06-20", "data": {"object": {"id": "sub_pgb", "object": "subscription", "status": "canceled"}}, "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}}',
        statement_timestamp(), statement_timestamp(), 'pgbench',
        statement_timestamp() + make_interval(secs => 300), gen_random_uuid(), 1, ''
    )
    ON CONFLICT (event_id) DO UPDATE SET claim_token = EXCLUDED.claim_token, attempts = e.attempts + 1
    WHERE e.processed_at IS NULL AND (e.claim_expires_at IS NULL OR e.claim_expires_at <= statement_timestamp())
    RETURNING id, claim_token
)
SELECT id, quote_literal(claim_token::text) AS tok FROM claimed \gset
BEGIN;
INSERT INTO shop_cancellation (subscription_id, stripe_event_id, created_at)
    VALUES ('sub_pgb', 'evt_pgb_' || :client_id || '_' || :n, now());
UPDATE stripe_idempotency_stripeevent SET processed_at = statement_timestamp(), claim_expires_at = NULL, claim_token = NULL
    WHERE id = :id AND claim_token = :tok::uuid AND processed_at IS NULL;
COMMIT;
