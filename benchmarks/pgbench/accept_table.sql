-- The raw SQL of a deferred acknowledgement with the events table as the queue: the event
-- stored unclaimed unless its id is there, and the workers' channel notified, in one
-- statement (committed).
\set n random(1, 2000000000)
WITH inserted AS (
    INSERT INTO stripe_idempotency_stripeevent (
        event_id, type, livemode, api_version, created, payload, received_at, claimed_by, attempts, last_error
    ) VALUES (
        'evt_pgt_' || :client_id || '_' || :n, 'checkout.session.completed', false, '2024-06-20', now(),
        '{"id": "evt_pgt", "object": "event", "type": "checkout.session.completed", "api_version": "2024-06-20", "data": {"object": {"id": "cs_pgt", "object": "checkout.session", "amount_total": 1000, "currency": "usd", "customer": "cus_pgt", "customer_details": {"email": ""}}}, "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}}',
        statement_timestamp(), '', 0, ''
    )
    ON CONFLICT (event_id) DO NOTHING
    RETURNING id
)
SELECT pg_notify('stripe_idempotency_events', 'evt_pgt') FROM inserted;
