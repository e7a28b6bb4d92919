"""The public test helpers produce what Stripe produces: checked with stripe's own verifier."""

from __future__ import annotations

import json
import time

import pytest
import stripe
from django.test import override_settings

from stripe_idempotency.testing import build_event, deliver, encode, sign

pytestmark = pytest.mark.django_db(transaction=True)


def test_build_event_has_stripes_shape():
    event = build_event("invoice.paid", data={"id": "in_1"}, livemode=True, request={"id": "req_1"})
    assert event["object"] == "event"
    assert event["id"].startswith("evt_")
    assert event["type"] == "invoice.paid"
    invoice = event["data"]["object"]
    # The fields Stripe always sends in an invoice, the test's own laid over them.
    assert (invoice["id"], invoice["object"], invoice["status"], invoice["amount_paid"]) == (
        "in_1",
        "invoice",
        "paid",
        1500,
    )
    assert event["livemode"] is True
    assert event["request"] == {"id": "req_1"}
    assert build_event()["id"] != build_event()["id"]


def test_a_type_without_a_known_shape_gets_its_data_alone():
    assert build_event("shop.thing_happened", data={"id": "x_1"})["data"] == {"object": {"id": "x_1"}}
    assert build_event("shop.thing_happened")["data"] == {"object": {}}


@pytest.mark.parametrize(
    ("event_type", "kind", "id_prefix"),
    [
        ("checkout.session.completed", "checkout.session", "cs_test_"),
        ("checkout.session.async_payment_succeeded", "checkout.session", "cs_test_"),
        ("payment_intent.succeeded", "payment_intent", "pi_test_"),
        ("charge.refunded", "charge", "ch_test_"),
        ("charge.refund.updated", "refund", "re_test_"),
        ("invoice.payment_succeeded", "invoice", "in_test_"),
        ("customer.subscription.deleted", "subscription", "sub_test_"),
        ("customer.created", "customer", "cus_test_"),
        ("payout.paid", "payout", "po_test_"),
    ],
)
def test_common_types_carry_the_fields_stripe_always_sends(event_type, kind, id_prefix):
    first, second = (build_event(event_type)["data"]["object"] for _ in range(2))
    assert (first["object"], first["id"][: len(id_prefix)]) == (kind, id_prefix)
    assert first["id"] != second["id"]
    first["metadata"]["changed"] = "yes"  # each event's object is its own
    assert second["metadata"] == {}


def test_the_readme_s_test_and_receiver_agree_on_a_checkout():
    # A paid guest checkout: no customer, a payment status, an amount, as Stripe sends one.
    session = build_event("checkout.session.completed", data={"id": "cs_test_1"})["data"]["object"]
    assert (session["id"], session["payment_status"], session["customer"]) == ("cs_test_1", "paid", None)
    assert (session["amount_total"], session["currency"]) == (1500, "usd")


def test_sign_is_accepted_by_stripe():
    body = encode(build_event())
    header = sign(body, "whsec_a")
    assert stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_a", 300)
    parsed = stripe.Webhook.construct_event(body.decode(), header, "whsec_a")
    assert parsed["id"] == json.loads(body)["id"]


def test_sign_with_several_secrets_carries_one_signature_each():
    body = encode(build_event())
    header = sign(body, ["whsec_old", "whsec_new"], timestamp=1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert header.count("v1=") == 2
    for secret in ("whsec_old", "whsec_new"):
        assert stripe.WebhookSignature.verify_header(body.decode(), header, secret)


def test_old_timestamps_fail_stripes_tolerance():
    body = encode(build_event())
    header = sign(body, "whsec_a", timestamp=int(time.time()) - 600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(body.decode(), header, "whsec_a", 300)


def test_deliver_signs_with_the_configured_secret(client):
    assert deliver(client, build_event()).json()["status"] == "processed"


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_new", "whsec_old"]})
def test_rotation_accepts_either_secret(client):
    assert deliver(client, build_event(), secret="whsec_old").status_code == 200
    assert deliver(client, build_event(), secret="whsec_new").status_code == 200
    assert deliver(client, build_event(), secret=["whsec_gone", "whsec_old"]).status_code == 200
    assert deliver(client, build_event(), secret="whsec_gone").status_code == 400


@override_settings(STRIPE_IDEMPOTENCY={})
def test_deliver_without_any_secret_says_so(client):
    with pytest.raises(ValueError, match="pass secret="):
        deliver(client, build_event())


def test_deliver_concurrently_retries_until_done_and_no_further():
    import collections
    import threading

    from stripe_idempotency.testing import deliver_concurrently

    attempts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def attempt(job):
        with lock:
            attempts[job] += 1
            made = attempts[job]
        if job == "fails_twice":
            return 0.01 if made <= 2 else None
        if job == "never_succeeds":
            return 0.01
        return None

    jobs = ["fails_twice", "never_succeeds", *[f"ok_{n}" for n in range(20)]]
    deliver_concurrently(jobs, attempt, senders=3, max_attempts=5)
    assert attempts["fails_twice"] == 3
    assert attempts["never_succeeds"] == 5
    assert all(attempts[f"ok_{n}"] == 1 for n in range(20))


def test_deliver_concurrently_spreads_first_attempts_in_order():
    import time

    from stripe_idempotency.testing import deliver_concurrently

    started = []
    deliver_concurrently(range(5), lambda job: started.append((job, time.monotonic())), senders=1, spread=0.5)
    assert [job for job, _ in started] == [0, 1, 2, 3, 4]
    # Job n does not start before n * 0.1 s after the first (a bound, not a timing measurement).
    first = started[0][1]
    assert all(at - first >= n * 0.1 - 0.01 for n, (_, at) in enumerate(started))


def test_deliver_concurrently_reports_an_attempt_that_raised_after_the_others_ran():
    from stripe_idempotency.testing import deliver_concurrently

    done = []

    def attempt(job):
        if job == "bad":
            raise ValueError("bad job")
        done.append(job)

    with pytest.raises(ValueError, match="bad job"):
        deliver_concurrently(["bad", "a", "b", "c"], attempt, senders=2)
    assert sorted(done) == ["a", "b", "c"]
