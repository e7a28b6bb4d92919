"""Thin event notifications ("object": "v2.core.event"): stored, claimed and dispatched like any
event; a v1 thin event and its snapshot event processed once together; fetching through the
stripe library's own client."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connections
from django.test import Client, override_settings

from stripe_idempotency import outcomes, processing
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received, signal_for
from stripe_idempotency.testing import build_event, build_thin_event, deliver
from tests.concurrency import wait_for
from tests.settings import WEBHOOK_SECRET

pytestmark = pytest.mark.django_db(transaction=True)

THIN_SECRET = "whsec_thin_secret"
BOTH = {
    "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
    "ENDPOINTS": {"thin": {"WEBHOOK_SECRETS": [THIN_SECRET], "PAYLOAD": "thin"}},
}


def test_a_thin_event_is_stored_claimed_and_dispatched_by_its_type(connect):
    seen = []
    connect(signal_for("v1.customer.updated"), lambda sender, event, **kwargs: seen.append(event.event_id))
    created = datetime(2026, 11, 20, 9, 30, 15, 250000, tzinfo=UTC)
    thin = build_thin_event("v1.customer.updated", id="evt_thin_1", created=created, context="acct_1C")
    assert deliver(Client(), thin).json() == {"status": "processed", "event_id": "evt_thin_1"}
    assert deliver(Client(), thin).json() == {"status": "duplicate", "event_id": "evt_thin_1"}
    assert seen == ["evt_thin_1"]
    row = StripeEvent.objects.get()
    assert (row.type, row.created, row.api_version, row.livemode, row.account, row.object_id) == (
        "v1.customer.updated",
        created,
        "",
        False,
        "acct_1C",
        "cus_test_1",
    )
    assert row.is_thin
    assert row.payload == thin


def test_a_v2_event_type_is_dispatched_too(connect):
    seen = []
    connect(
        signal_for("v2.core.account.updated"), lambda sender, event, **kwargs: seen.append(event.object_id)
    )
    related = {"id": "acct_v2", "type": "v2.core.account", "url": "/v2/core/accounts/acct_v2"}
    deliver(Client(), build_thin_event("v2.core.account.updated", related_object=related))
    assert seen == ["acct_v2"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"created": None}, "not_an_event"),  # the stripe library's parser needs created
        ({"type": "v1 customer"}, "invalid_type"),
        ({"id": ""}, "invalid_id"),
        ({"snapshot_event": "evt with spaces"}, "invalid_id"),
        ({"livemode": "false"}, "invalid_livemode"),
    ],
)
def test_a_malformed_thin_event_is_refused_with_a_code_and_not_stored(change, code):
    thin = build_thin_event()
    thin.update(change)
    thin = {key: value for key, value in thin.items() if value is not None}
    response = deliver(Client(), thin)
    assert (response.status_code, response.json()) == (400, {"status": "rejected", "error": code})
    assert StripeEvent.objects.count() == 0


def test_the_reaper_reprocesses_a_thin_event_from_its_row(connect):
    failing = [True]

    def fail_once(sender, event, **kwargs):
        if failing.pop() if failing else False:
            raise RuntimeError("down")

    connect(event_received, fail_once)
    deliver(Client(), build_thin_event(id="evt_thin_retry"))
    outcome = processing.reprocess(StripeEvent.objects.get())
    assert isinstance(outcome, outcomes.Processed)
    assert (outcome.event.event_id, outcome.event.object_id) == ("evt_thin_retry", "cus_test_1")


# -- a change sent as both a snapshot event and a thin event --------------------------------


def pair(n: int) -> tuple[dict, dict]:
    """The snapshot event of one change and its v1 thin event notification, naming it."""
    snapshot = build_event("customer.updated", id=f"evt_snap_{n}", data={"id": f"cus_{n}"})
    thin = build_thin_event(
        "v1.customer.updated",
        id=f"evt_thin_{n}",
        snapshot_event=f"evt_snap_{n}",
        related_object={"id": f"cus_{n}", "type": "customer", "url": f"/v1/customers/cus_{n}"},
    )
    return snapshot, thin


@override_settings(STRIPE_IDEMPOTENCY=BOTH)
@pytest.mark.parametrize("thin_first", [True, False])
def test_a_thin_event_naming_its_snapshot_event_is_processed_once_with_it(thin_first, connect, caplog):
    runs = []
    connect(event_received, lambda sender, event, **kwargs: runs.append((event.event_id, event.type)))
    snapshot, thin = pair(1)
    first, second = [(thin, "thin"), (snapshot, "")] if thin_first else [(snapshot, ""), (thin, "thin")]
    assert deliver(Client(), first[0], endpoint=first[1]).json()["status"] == "processed"
    assert deliver(Client(), second[0], endpoint=second[1]).json() == {
        "status": "duplicate",
        "event_id": "evt_snap_1",
    }
    assert runs == [("evt_snap_1", "v1.customer.updated" if thin_first else "customer.updated")]
    assert StripeEvent.objects.get().event_id == "evt_snap_1"
    # The same change in the other family is not "delivered again with another type".
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == []


@override_settings(STRIPE_IDEMPOTENCY=BOTH)
def test_both_notifications_of_each_change_delivered_at_once_are_processed_once(connect):
    runs: list[str] = []
    lock = threading.Lock()

    def record(sender, event, **kwargs):
        with lock:
            runs.append(event.event_id)

    connect(event_received, record)
    deliveries = []
    for n in range(40):
        snapshot, thin = pair(n)
        deliveries += [(snapshot, ""), (thin, "thin")] * 2  # each notification twice, as Stripe retries
    start = threading.Barrier(4)
    answers: list[str] = []
    failures: list[AssertionError] = []

    def sender(seed: int) -> None:
        client, order = Client(), list(deliveries)
        random.Random(seed).shuffle(order)
        start.wait()
        try:
            for body, endpoint in order:

                def answered(body: dict = body, endpoint: str = endpoint) -> str | None:
                    # Busy: another connection holds the change; ask again, as Stripe would.
                    status = deliver(client, body, endpoint=endpoint).json()["status"]
                    return None if status == "busy" else status

                answer = wait_for(answered, f"{body['id']} to be answered other than busy")
                with lock:
                    answers.append(answer)
        except AssertionError as failure:
            failures.append(failure)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=sender, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sorted(set(answers)) == ["duplicate", "processed"]
    assert answers.count("processed") == 40
    assert sorted(runs) == sorted(f"evt_snap_{n}" for n in range(40))
    assert StripeEvent.objects.count() == 40


# -- fetching --------------------------------------------------------------------------------


class FakeStripeAPI(BaseHTTPRequestHandler):
    """Answers the two reads a thin event's fetches make, and remembers each request."""

    requests: list[tuple[str, str | None, str | None]] = []

    def do_GET(self) -> None:
        FakeStripeAPI.requests.append(
            (self.path, self.headers.get("Authorization"), self.headers.get("Stripe-Context"))
        )
        if self.path.startswith("/v2/core/events/"):
            body = {
                "id": self.path.rsplit("/", 1)[-1],
                "object": "v2.core.event",
                "type": "v1.customer.updated",
                "created": "2026-11-20T09:30:15.000Z",
                "livemode": False,
                "changes": {"name": ["A", "B"]},
            }
        else:
            body = {"id": "cus_test_1", "object": "customer", "name": "B", "email": "b@example.com"}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` answering on a free local port; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stripe_api():
    FakeStripeAPI.requests = []
    with serving(FakeStripeAPI) as base:
        yield base


def test_a_thin_event_fetches_its_event_and_its_object_with_the_api_key_and_its_context(stripe_api):
    deliver(Client(), build_thin_event(id="evt_fetch", context="acct_1C"))
    row = StripeEvent.objects.get()
    settings = {"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "API_KEY": "rk_test_reader", "API_BASE": stripe_api}
    with override_settings(STRIPE_IDEMPOTENCY=settings):
        event = row.fetch_event()
        customer = row.fetch_related_object()
    assert (event.id, event.changes["name"]) == ("evt_fetch", ["A", "B"])
    assert (customer.id, customer.name) == ("cus_test_1", "B")
    assert FakeStripeAPI.requests == [
        ("/v2/core/events/evt_fetch", "Bearer rk_test_reader", "acct_1C"),
        ("/v1/customers/cus_test_1", "Bearer rk_test_reader", "acct_1C"),
    ]


def test_fetching_without_an_api_key_says_how_to_set_one():
    deliver(Client(), build_thin_event())
    with pytest.raises(ImproperlyConfigured, match=r"set STRIPE_IDEMPOTENCY\['API_KEY'\]"):
        StripeEvent.objects.get().fetch_related_object()


def test_a_snapshot_event_has_its_object_in_its_payload_not_to_fetch():
    deliver(Client(), build_event(id="evt_snapshot"))
    with pytest.raises(TypeError, match="evt_snapshot is a snapshot event"):
        StripeEvent.objects.get().fetch_related_object(api_key="rk_test_reader")
