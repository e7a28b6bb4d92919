"""End to end against a Stripe we did not write: localstripe, a fake but stateful Stripe API
server that signs and sends real webhooks. The stripe client creates customers, payment methods,
subscriptions and payment intents there; its webhooks reach the example project under gunicorn
and are processed once, counted from the database; the same events sent again, concurrently,
are duplicates."""

from __future__ import annotations

import collections
import threading
import time
from pathlib import Path

import pytest

from stripe_idempotency.testing import deliver_concurrently, sign
from tests.servers import Gunicorn, LocalStripe, answer_status, post, show

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.servers]

SECRET = "whsec_example_local_only"  # the example project's default
CUSTOMERS = 8


def shop_at(stripe) -> list[str]:
    """What a shop does at Stripe: customers with cards, a subscription each, a one-off payment
    each. The payment intents' ids."""
    stripe.v1.plans.create(
        params={
            "id": "seat",
            "product": {"name": "Seat"},
            "amount": 1500,
            "currency": "usd",
            "interval": "month",
        }
    )
    payments = []
    for n in range(CUSTOMERS):
        customer = stripe.v1.customers.create(params={"email": f"buyer{n}@example.com"})
        card = stripe.v1.payment_methods.create(
            params={
                "type": "card",
                "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2034, "cvc": "123"},
            }
        )
        stripe.v1.payment_methods.attach(card.id, params={"customer": customer.id})
        stripe.v1.customers.update(
            customer.id, params={"invoice_settings": {"default_payment_method": card.id}}
        )
        stripe.v1.subscriptions.create(params={"customer": customer.id, "items": [{"plan": "seat"}]})
        payment = stripe.v1.payment_intents.create(
            params={"amount": 2000 + n, "currency": "usd", "customer": customer.id, "payment_method": card.id}
        )
        stripe.v1.payment_intents.confirm(payment.id)
        payments.append(payment.id)
    return payments


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite's single writer would serialise the app server's workers.",
)
def test_localstripe_s_webhooks_are_processed_once_and_again_delivered_are_duplicates(
    server_database, tmp_path: Path, capsys
):
    db = server_database
    localstripe = LocalStripe(tmp_path)
    server = Gunicorn(db.url, "localstripe-instance", workers=3, log_dir=tmp_path)
    try:
        localstripe.send_webhooks_to("example", server.url, SECRET)
        stripe = localstripe.client()
        payments = shop_at(stripe)
        sent = [event.id for event in stripe.v1.events.list(params={"limit": 100}).auto_paging_iter()]
        # localstripe sends each event once, a second after it happened.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            stored = db.scalar(
                "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL"
            )
            if stored >= len(sent):
                break
            time.sleep(0.5)
        rows = db.rows(
            "SELECT event_id, type, attempts, processed_at IS NOT NULL FROM stripe_idempotency_stripeevent"
        )
        assert sorted(row[0] for row in rows) == sorted(sent), server.log.read_text()[-3000:]
        assert {(attempts, processed) for _, _, attempts, processed in rows} == {(1, True)}
        types = collections.Counter(row[1] for row in rows)
        assert types["customer.created"] == CUSTOMERS
        assert types["customer.subscription.created"] == CUSTOMERS
        # The shop's receiver credited each succeeded payment intent once (subscriptions' invoices
        # are paid through payment intents too).
        credited = db.rows(
            "SELECT reference, amount FROM stripe_idempotency_ledgerentry WHERE entry_type = 'card_payment'"
        )
        assert (
            len(credited)
            == len({reference for reference, _ in credited})
            == types["payment_intent.succeeded"]
        )
        assert set(payments) <= {reference for reference, _ in credited}

        # Every event delivered again, three times at once each, from eight senders.
        bodies = {event_id: localstripe.event_body(event_id) for event_id in sent}
        answers: collections.Counter = collections.Counter()
        lock = threading.Lock()

        def attempt(event_id: str) -> float | None:
            status, headers, body = post(server.url, bodies[event_id], sign(bodies[event_id], SECRET))
            with lock:
                answers[answer_status(body)] += 1
            return None if 200 <= status < 300 else float(headers.get("Retry-After", "1"))

        deliver_concurrently([event_id for event_id in sent for _ in range(3)], attempt, senders=8)
        show(
            capsys,
            f"localstripe: {len(sent)} events ({', '.join(f'{t} {n}' for t, n in sorted(types.items()))}) "
            f"processed once; {len(credited)} payments credited; sent again: {dict(answers)}",
        )
        assert answers == {"duplicate": 3 * len(sent)}
        assert db.rows("SELECT DISTINCT attempts FROM stripe_idempotency_stripeevent") == [(1,)]
        assert len(db.rows("SELECT id FROM stripe_idempotency_ledgerentry")) == len(credited)
    finally:
        server.stop()
        localstripe.stop()
