-- The raw SQL of a deferred acknowledgement: the event stored unclaimed unless its id is
-- there (one statement, committed), then django-tasks-db's task row (one more, committed).
\set n random(1, 2000000000)
INSERT INTO stripe_idempotency_stripeevent (
    event_id, type, livemode, api_version, created, payload, received_at, claimed_by, attempts, last_error
) VALUES (
    'evt_pga_' || :client_id || '_' || :n, 'checkout.session.completed', false, '2024-06-20', now(),
    '{"id": "evt_pga", "object": "event", "type": "checkout.session.completed", "api_version": "2024-06-20", "data": {"object": {"id": "cs_pga", "object": "checkout.session", "amount_total": 1000, "currency": "usd", "customer": "cus_pga", "customer_details": {"email": ""}}}, "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}}',
    statement_timestamp(), '', 0, ''
)
ON CONFLICT (event_id) DO NOTHING
RETURNING id;
INSERT INTO django_tasks_database_dbtaskresult (
    id, status, enqueued_at, priority, task_path, queue_name, backend_name, args_kwargs,
    return_value, exception_class_path, traceback, worker_ids, run_after
) VALUES (
    gen_random_uuid(), 'READY', now(), 0, 'stripe_idempotency.tasks.process_stripe_event', 'default',
    'default', '{"args": ["evt_pga", "default"], "kwargs": {}}', 'null', '', '', '[]', now()
);
