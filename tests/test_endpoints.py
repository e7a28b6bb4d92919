"""Named endpoints: each its own secrets, live-mode policy, payload family and processing mode;
Connect accounts and the object of each event on the row."""

from __future__ import annotations

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received, event_rejected
from stripe_idempotency.testing import build_event, build_thin_event, deliver
from tests.settings import WEBHOOK_SECRET
from tests.test_deferred import queued  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)

CONNECT_SECRET = "whsec_connect_secret"
THIN_SECRET = "whsec_thin_secret"
ENDPOINTS = override_settings(
    STRIPE_IDEMPOTENCY={
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "ENDPOINTS": {
            "connect": {"WEBHOOK_SECRETS": [CONNECT_SECRET], "LIVEMODE": True},
            "thin": {"WEBHOOK_SECRETS": [THIN_SECRET], "PAYLOAD": "thin"},
            "snapshots": {"WEBHOOK_SECRETS": ["whsec_snapshots_secret"], "PAYLOAD": "snapshot"},
            "later": {"WEBHOOK_SECRETS": ["whsec_later_secret"], "PROCESSING": "deferred"},
        },
    }
)


def answer(response) -> tuple[int, dict]:
    return response.status_code, response.json()


def test_a_named_endpoint_is_reversed_with_its_name():
    assert reverse("stripe_idempotency:webhook") == "/stripe/webhook/"
    assert reverse("stripe_idempotency:webhook", kwargs={"endpoint": "connect"}) == "/stripe/webhook/connect/"


@ENDPOINTS
def test_each_endpoint_takes_its_own_secret_and_records_its_name(connect):
    seen = []
    connect(event_received, lambda sender, event, **kwargs: seen.append((event.event_id, event.endpoint)))
    live = build_event(id="evt_connect", livemode=True)
    assert answer(deliver(Client(), live, endpoint="connect")) == (
        200,
        {"status": "processed", "event_id": "evt_connect"},
    )
    assert deliver(Client(), build_event(id="evt_platform")).json()["status"] == "processed"
    assert seen == [("evt_connect", "connect"), ("evt_platform", "")]
    assert dict(StripeEvent.objects.values_list("event_id", "endpoint")) == {
        "evt_connect": "connect",
        "evt_platform": "",
    }


@ENDPOINTS
@pytest.mark.parametrize(
    ("endpoint", "secret"),
    [("", CONNECT_SECRET), ("connect", WEBHOOK_SECRET), ("connect", THIN_SECRET), ("thin", CONNECT_SECRET)],
)
def test_an_event_signed_for_one_endpoint_is_refused_on_every_other(endpoint, secret):
    response = deliver(Client(), build_event(livemode=True), endpoint=endpoint, secret=secret)
    assert answer(response) == (400, {"status": "rejected", "error": "invalid_signature"})
    assert StripeEvent.objects.count() == 0


@ENDPOINTS
def test_an_unknown_endpoint_is_a_json_404_and_announced(connect):
    codes = []
    connect(event_rejected, lambda sender, code, **kwargs: codes.append(code))
    response = deliver(Client(), build_event(), url="/stripe/webhook/nowhere/")
    assert answer(response) == (404, {"status": "rejected", "error": "unknown_endpoint"})
    assert codes == ["unknown_endpoint"]
    assert StripeEvent.objects.count() == 0


@override_settings(STRIPE_IDEMPOTENCY={"ENDPOINTS": {"connect": {"WEBHOOK_SECRETS": [CONNECT_SECRET]}}})
def test_without_secrets_of_its_own_the_default_endpoint_is_off():
    response = deliver(
        Client(), build_event(), url=reverse("stripe_idempotency:webhook"), secret=CONNECT_SECRET
    )
    assert answer(response) == (404, {"status": "rejected", "error": "unknown_endpoint"})
    assert deliver(Client(), build_event(), endpoint="connect").json()["status"] == "processed"


@ENDPOINTS
def test_the_live_mode_policy_is_the_endpoint_s():
    test_mode = build_event(id="evt_test_mode", livemode=False)
    assert answer(deliver(Client(), test_mode, endpoint="connect")) == (
        200,
        {"status": "ignored", "reason": "livemode_mismatch"},
    )
    assert StripeEvent.objects.count() == 0
    # The default endpoint takes both modes (LIVEMODE None): the same event is processed there.
    assert deliver(Client(), test_mode).json()["status"] == "processed"


@ENDPOINTS
def test_each_endpoint_takes_only_its_payload_family(connect):
    refused = []
    connect(event_rejected, lambda sender, code, **kwargs: refused.append(code))
    snapshot, thin = build_event(id="evt_snapshot"), build_thin_event(id="evt_thin")
    rejection = {"status": "rejected", "error": "payload_not_accepted"}
    assert answer(deliver(Client(), snapshot, endpoint="thin")) == (400, rejection)
    assert answer(deliver(Client(), thin, endpoint="snapshots")) == (400, rejection)
    assert StripeEvent.objects.count() == 0
    assert refused == ["payload_not_accepted", "payload_not_accepted"]
    assert deliver(Client(), thin, endpoint="thin").json()["status"] == "processed"
    assert deliver(Client(), snapshot, endpoint="snapshots").json()["status"] == "processed"
    # "any", the default endpoint's: both families.
    assert deliver(Client(), build_thin_event()).json()["status"] == "processed"
    assert deliver(Client(), build_event()).json()["status"] == "processed"


@ENDPOINTS
def test_the_processing_mode_is_the_endpoint_s(queued):  # noqa: F811
    assert deliver(Client(), build_event(id="evt_later"), endpoint="later").json()["status"] == "accepted"
    assert [result.args for result in queued] == [["evt_later", "default"]]
    assert deliver(Client(), build_event(id="evt_now")).json()["status"] == "processed"


@ENDPOINTS
def test_the_connected_account_and_the_object_are_on_the_row_for_receivers(connect):
    seen = []
    connect(event_received, lambda sender, event, **kwargs: seen.append((event.account, event.object_id)))
    deliver(
        Client(),
        build_event("customer.updated", livemode=True, account="acct_1Connected", data={"id": "cus_9"}),
        endpoint="connect",
    )
    deliver(
        Client(),
        build_thin_event(
            "v1.customer.updated",
            context="acct_2Connected",
            related_object={"id": "cus_8", "type": "customer", "url": "/v1/customers/cus_8"},
        ),
        endpoint="thin",
    )
    deliver(
        Client(), build_event("balance.available", data={"object": "balance"})
    )  # no account, no object id
    assert seen == [("acct_1Connected", "cus_9"), ("acct_2Connected", "cus_8"), (None, None)]
    assert list(
        StripeEvent.objects.filter(account="acct_1Connected").values_list("object_id", flat=True)
    ) == ["cus_9"]


@ENDPOINTS
def test_an_endpoint_name_is_stored_and_compared_byte_for_byte():
    # Another case is another endpoint (none here), never "connect" by a collation's leniency.
    assert deliver(Client(), build_event(livemode=True), url="/stripe/webhook/Connect/").status_code == 404
    event = build_event(livemode=True)
    response = deliver(Client(), event, url="/stripe/webhook/connect/", secret=CONNECT_SECRET)
    assert response.json()["status"] == "processed"
    assert list(StripeEvent.objects.values_list("event_id", "endpoint")) == [(event["id"], "connect")]
    assert not StripeEvent.objects.filter(endpoint="Connect").exists()
    assert not StripeEvent.objects.filter(endpoint="connect ").exists()
