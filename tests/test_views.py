"""The webhook endpoint, through HTTP: every rejection and every answer in the status table."""

from __future__ import annotations

import json
import time

import pytest
from django.db import InterfaceError, connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event, deliver, encode, sign
from tests.concurrency import database_unreachable
from tests.conftest import TYPE, per_backend
from tests.testapp.models import Effect

URL = "/stripe/webhook/"

pytestmark = pytest.mark.django_db(transaction=True)


def test_url_name():
    assert reverse("stripe_idempotency:webhook") == URL


@pytest.fixture
def csrf_client() -> Client:
    # Stripe sends no CSRF token: the view must be exempt, and this client checks it.
    return Client(enforce_csrf_checks=True)


def body_of(response) -> dict:
    assert response["Content-Type"] == "application/json"
    return json.loads(response.content)


# -- rejections: 4xx, a JSON body naming the reason, nothing stored -----------------------


def assert_rejected(response, status: int, error: str) -> None:
    assert response.status_code == status
    assert body_of(response) == {"status": "rejected", "error": error}
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_methods_other_than_post_are_rejected(csrf_client, method):
    response = getattr(csrf_client, method)(URL)
    assert_rejected(response, 405, "method_not_allowed")
    assert response["Allow"] == "POST"


def test_missing_signature(csrf_client):
    assert_rejected(deliver(csrf_client, build_event(), signature=""), 400, "missing_signature")


def test_signature_for_another_secret(csrf_client):
    response = deliver(csrf_client, build_event(), secret="whsec_someone_else")
    assert_rejected(response, 400, "invalid_signature")


@pytest.mark.parametrize("signed_with", ["whsec_new", "whsec_old", "whsec_third"])
def test_while_secrets_roll_a_body_signed_with_any_of_them_is_accepted(csrf_client, settings, signed_with):
    # Rolling a secret in Stripe's Dashboard: the old one signs for up to 24 hours beside the new.
    secrets = ["whsec_new", "whsec_old", "whsec_third"]
    settings.STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": secrets}
    assert_rejected(deliver(csrf_client, build_event(), secret="whsec_other"), 400, "invalid_signature")
    assert body_of(deliver(csrf_client, build_event(), secret=signed_with))["status"] == "processed"


def test_garbled_signature_header(csrf_client):
    response = deliver(csrf_client, build_event(), signature="t=abc,v1=zz")
    assert_rejected(response, 400, "invalid_signature")


def test_a_non_ascii_signature_header(csrf_client):
    # Found by tests/test_verification.py: stripe's comparison raises TypeError on non-ASCII.
    response = deliver(csrf_client, build_event(), signature="t=1,v1=\x80")
    assert_rejected(response, 400, "invalid_signature")


def test_signature_over_another_body(csrf_client):
    signature = sign(encode(build_event()))
    response = deliver(csrf_client, build_event(), signature=signature)
    assert_rejected(response, 400, "invalid_signature")


def test_stale_timestamp(csrf_client):
    response = deliver(csrf_client, build_event(), timestamp=int(time.time()) - 301)
    assert_rejected(response, 400, "timestamp_outside_tolerance")


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "TOLERANCE_SECONDS": 1000})
def test_tolerance_is_read_at_call_time(csrf_client):
    response = deliver(csrf_client, build_event(), timestamp=int(time.time()) - 900)
    assert response.status_code == 200


def test_body_not_utf8(csrf_client):
    body = b'{"id": "evt_\xff"}'
    response = deliver(csrf_client, body, signature="t=1,v1=00")
    assert_rejected(response, 400, "invalid_encoding")


def test_body_not_json(csrf_client):
    assert_rejected(deliver(csrf_client, "{not json"), 400, "invalid_json")


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ([], "not_an_event"),
        ("evt_1", "not_an_event"),
        (None, "not_an_event"),
        ({"id": "evt_1", "type": TYPE}, "not_an_event"),
        ({"id": "evt_1", "object": "charge", "type": TYPE}, "not_an_event"),
        ({"object": "event", "type": TYPE}, "invalid_id"),
        ({"object": "event", "id": 42, "type": TYPE}, "invalid_id"),
        ({"object": "event", "id": "", "type": TYPE}, "invalid_id"),
        ({"object": "event", "id": "evt_1\r\nX-Injected: 1", "type": TYPE}, "invalid_id"),
        ({"object": "event", "id": "e" * 256, "type": TYPE}, "invalid_id"),
        ({"object": "event", "id": "evt_1"}, "invalid_type"),
        ({"object": "event", "id": "evt_1", "type": ["x"]}, "invalid_type"),
        ({"object": "event", "id": "evt_1", "type": TYPE, "livemode": "yes"}, "invalid_livemode"),
    ],
)
def test_json_that_is_not_an_event(csrf_client, payload, error):
    assert_rejected(deliver(csrf_client, json.dumps(payload)), 400, error)


IGNORED = {"status": "ignored", "reason": "livemode_mismatch"}


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "LIVEMODE": True})
def test_a_live_mode_endpoint_ignores_test_events_with_a_200_and_stores_nothing(csrf_client, caplog):
    # A 4xx would have Stripe retry it for three days: a live Connect endpoint receives its
    # accounts' test events too, and can do nothing about them.
    caplog.set_level("INFO", logger="stripe_idempotency")
    response = deliver(csrf_client, build_event(id="evt_test_mode", livemode=False))
    assert (response.status_code, body_of(response)) == (200, IGNORED)
    assert StripeEvent.objects.count() == 0
    [line] = [r for r in caplog.records if r.name == "stripe_idempotency"]
    assert (line.levelname, line.event_id, line.outcome) == ("INFO", "evt_test_mode", "ignored")
    assert body_of(deliver(csrf_client, build_event(livemode=True)))["status"] == "processed"


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "LIVEMODE": False})
def test_a_test_mode_endpoint_ignores_live_events(csrf_client):
    response = deliver(csrf_client, build_event(livemode=True))
    assert (response.status_code, body_of(response)) == (200, IGNORED)
    assert StripeEvent.objects.count() == 0
    assert deliver(csrf_client, build_event(livemode=False)).status_code == 200


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "MAX_BODY_BYTES": 2000})
def test_body_over_the_limit_by_content_length(csrf_client):
    event = build_event(data={"padding": "x" * 2000})
    assert_rejected(deliver(csrf_client, event), 413, "body_too_large")


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "MAX_BODY_BYTES": 2000})
def test_body_over_the_limit_without_a_content_length():
    # Nothing declared up front: the limit is enforced while reading, one byte past it at most.
    from django.test import RequestFactory

    from stripe_idempotency.views import WebhookView

    body = encode(build_event(data={"padding": "x" * 2000}))
    request = RequestFactory().post(
        URL, data=body, content_type="application/json", headers={"Stripe-Signature": sign(body)}
    )
    request.META.pop("CONTENT_LENGTH", None)
    assert_rejected(WebhookView.as_view()(request), 413, "body_too_large")
    assert request._stream.read() == body[2001:]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "read-to-the-end"])
def test_a_body_of_exactly_the_limit_is_accepted_and_one_byte_more_is_not(settings, declared):
    from django.test import RequestFactory

    from stripe_idempotency.views import WebhookView

    body = encode(build_event(data={"padding": "x" * 2000}))

    def post(limit: int):
        settings.STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": ["whsec_test_secret"], "MAX_BODY_BYTES": limit}
        request = RequestFactory().post(
            URL, data=body, content_type="application/json", headers={"Stripe-Signature": sign(body)}
        )
        if not declared:
            request.META.pop("CONTENT_LENGTH", None)
        return WebhookView.as_view()(request)

    assert_rejected(post(len(body) - 1), 413, "body_too_large")
    assert post(len(body)).status_code == 200
    assert StripeEvent.objects.get().is_processed


def test_size_is_checked_before_the_signature(csrf_client, settings):
    settings.STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": ["whsec_test_secret"], "MAX_BODY_BYTES": 10}
    assert_rejected(deliver(csrf_client, build_event(), signature=""), 413, "body_too_large")


def test_signature_is_checked_before_the_json(csrf_client):
    assert_rejected(deliver(csrf_client, "{not json", secret="whsec_other"), 400, "invalid_signature")


# -- answers ---------------------------------------------------------------------------------


def test_first_delivery_is_processed(csrf_client, record_effects):
    event = build_event(data={"id": "cs_test_1"})
    response = deliver(csrf_client, event)
    assert response.status_code == 200
    assert body_of(response) == {"status": "processed", "event_id": event["id"]}
    row = StripeEvent.objects.get()
    assert (row.event_id, row.type, row.livemode, row.payload) == (event["id"], TYPE, False, event)
    assert row.processed_at is not None
    assert row.attempts == 1
    assert row.claimed_by == "test-instance"
    assert (row.claim_token, row.claim_expires_at, row.last_error) == (None, None, "")
    assert row.created is not None
    assert int(row.created.timestamp()) == event["created"]
    assert row.api_version == event["api_version"]
    assert sorted(Effect.objects.values_list("receiver", flat=True)) == ["received", "typed"]


def test_redelivery_is_a_duplicate(csrf_client, record_effects):
    event = build_event()
    deliver(csrf_client, event)
    response = deliver(csrf_client, event)
    assert response.status_code == 200
    assert body_of(response) == {"status": "duplicate", "event_id": event["id"]}
    assert Effect.objects.count() == 2
    assert StripeEvent.objects.get().attempts == 1


def test_event_claimed_elsewhere_is_busy(csrf_client, record_effects):
    from stripe_idempotency import leases
    from stripe_idempotency.events import IncomingEvent

    event = build_event()
    assert isinstance(leases.claim(IncomingEvent.from_payload(event)), leases.Claimed)
    response = deliver(csrf_client, event)
    assert response.status_code == 503
    assert body_of(response) == {"status": "busy", "event_id": event["id"]}
    # The lease has ~300 s left; the answer is capped at RETRY_AFTER_MAX_SECONDS.
    assert response["Retry-After"] == "60"
    assert Effect.objects.count() == 0


def test_a_fenced_run_is_answered_busy(csrf_client, taken_over_after_the_claim, record_effects):
    event = build_event()
    response = deliver(csrf_client, event)
    assert response.status_code == 503
    assert body_of(response) == {"status": "busy", "event_id": event["id"]}
    assert response["Retry-After"] == "60"  # the takeover's lease, capped
    assert Effect.objects.count() == 0
    assert StripeEvent.objects.get().processed_at is None


def test_busy_is_logged_as_routine_not_as_a_server_error(csrf_client, caplog):
    from stripe_idempotency import leases
    from stripe_idempotency.events import IncomingEvent

    event = build_event()
    leases.claim(IncomingEvent.from_payload(event))
    with caplog.at_level("INFO"):
        deliver(csrf_client, event)
    assert [(r.name, r.levelname) for r in caplog.records] == [("stripe_idempotency", "INFO")]


def test_receiver_error_is_500_and_releases_the_claim(csrf_client, connect, record_effects):
    calls = []

    def fail_once(sender, event, **kwargs):
        calls.append(event.event_id)
        if len(calls) == 1:
            raise RuntimeError("card network down")

    connect(event_received, fail_once)
    event = build_event()
    response = deliver(csrf_client, event)
    assert response.status_code == 500
    assert body_of(response) == {"status": "error", "event_id": event["id"]}
    row = StripeEvent.objects.get()
    assert (row.processed_at, row.claim_expires_at, row.claim_token) == (None, None, None)
    assert row.attempts == 1
    assert "RuntimeError: card network down" in row.last_error
    assert "Traceback" in row.last_error
    # The receivers that did run rolled back with the one that raised.
    assert Effect.objects.count() == 0

    # Redelivered at once: claimed immediately (not 503), processed.
    retry = deliver(csrf_client, event)
    assert body_of(retry) == {"status": "processed", "event_id": event["id"]}
    row.refresh_from_db()
    assert row.attempts == 2
    assert row.processed_at is not None
    assert Effect.objects.count() == 2


def test_database_unavailable_is_503_with_json(csrf_client):
    with database_unreachable():
        response = deliver(csrf_client, build_event())
    assert response.status_code == 503
    assert response["Retry-After"] == "60"
    assert body_of(response)["status"] == "unavailable"
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize(
    "invalid",
    [{"PROCESSING": "defered"}, {"MAX_BODY_BYTES": "1MB"}, {"WEBHOOK_SECRETS": ["whsec_test", ""]}],
    ids=["misspelt-mode", "size-as-text", "empty-secret"],
)
def test_a_setting_its_declaration_refuses_is_a_503_and_runs_nothing(csrf_client, record_effects, invalid):
    # Never a silent fallback (a misspelt "deferred" run inline) nor an HTML 500: Stripe keeps the
    # event, and delivers it again once the setting is fixed.
    event = build_event()
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test"], **invalid}):
        response = deliver(csrf_client, event, secret="whsec_test")
    assert (response.status_code, response["Content-Type"], response["Retry-After"]) == (
        503,
        "application/json",
        "60",
    )
    assert body_of(response) == {"status": "unavailable"}
    assert (StripeEvent.objects.count(), Effect.objects.count()) == (0, 0)


def test_a_connection_lost_mid_request_is_503_with_json(csrf_client, monkeypatch):
    # The driver's InterfaceError (psycopg2's "connection already closed", a MySQL connector's
    # lost connection) is no DatabaseError in DB-API terms: it must be named to be caught.
    from stripe_idempotency import processing

    def lost(*args, **kwargs):
        raise InterfaceError("connection already closed")

    monkeypatch.setattr(processing, "receive", lost)
    event = build_event()
    response = deliver(csrf_client, event)
    assert (response.status_code, response["Content-Type"]) == (503, "application/json")
    assert body_of(response) == {"status": "unavailable", "event_id": event["id"]}


def test_works_under_atomic_requests(csrf_client, record_effects):
    with override_settings():
        connection.settings_dict["ATOMIC_REQUESTS"] = True
        try:
            from stripe_idempotency.views import WebhookView

            view = WebhookView.as_view()
            assert connection.alias in view._non_atomic_requests
            response = deliver(csrf_client, build_event())
        finally:
            connection.settings_dict["ATOMIC_REQUESTS"] = False
    assert body_of(response)["status"] == "processed"


# -- SQL per delivery, receivers excluded ----------------------------------------------------
#
# Django logs transaction control (BEGIN, COMMIT, ROLLBACK) as statements of
# their own; each count below is (data statements, all statements logged).

TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


def count_queries(func) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as queries:
        func()
    statements = [q["sql"].strip().upper() for q in queries.captured_queries]
    data = [sql for sql in statements if not sql.startswith(TRANSACTION_CONTROL)]
    return len(data), len(statements)


def test_queries_per_first_delivery(csrf_client):
    # The claim; then BEGIN, the fenced update, COMMIT around the receivers.
    # MySQL/MariaDB read the row before the upsert (see backends.mysql.MySQLBackend.claim).
    claim = per_backend(postgresql=1, mysql=2, sqlite=1)
    assert count_queries(lambda: deliver(csrf_client, build_event())) == (claim + 1, claim + 3)


def test_queries_per_duplicate(csrf_client):
    event = build_event()
    deliver(csrf_client, event)
    # PostgreSQL learns why the claim was refused from the claim statement
    # itself, MariaDB from a read that takes no lock; SQLite reads the row after
    # its upsert.
    expected = per_backend(postgresql=1, mysql=1, sqlite=2)
    assert count_queries(lambda: deliver(csrf_client, event)) == (expected, expected)


def test_queries_per_busy_answer(csrf_client):
    from stripe_idempotency import leases
    from stripe_idempotency.events import IncomingEvent

    event = build_event()
    leases.claim(IncomingEvent.from_payload(event))
    expected = per_backend(postgresql=1, mysql=1, sqlite=2)
    assert count_queries(lambda: deliver(csrf_client, event)) == (expected, expected)


def test_queries_per_failed_delivery(csrf_client, connect):
    def fail(sender, event, **kwargs):
        raise ValueError("no")

    connect(event_received, fail)
    # The claim; BEGIN and ROLLBACK around the receivers; the release.
    claim = per_backend(postgresql=1, mysql=2, sqlite=1)
    assert count_queries(lambda: deliver(csrf_client, build_event())) == (claim + 1, claim + 3)


def test_a_chunked_body_without_content_length_is_read_under_wsgi(settings):
    # gunicorn decodes a chunked body and says so with wsgi.input_terminated;
    # Django alone would read it as empty and the signature could never match.
    from io import BytesIO

    from django.test import RequestFactory

    from stripe_idempotency.views import WebhookView

    body = encode(build_event(id="evt_chunked"))
    request = RequestFactory().post(
        reverse("stripe_idempotency:webhook"),
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": sign(body, settings.WEBHOOK_SECRET)},
    )
    request.META.pop("CONTENT_LENGTH", None)
    request.META["wsgi.input"] = BytesIO(body)
    request.META["wsgi.input_terminated"] = True
    request._stream = request.META["wsgi.input"]  # as WSGIRequest would, with no length to limit it
    response = WebhookView.as_view()(request)
    assert json.loads(response.content) == {"status": "processed", "event_id": "evt_chunked"}


def test_a_chunked_body_past_the_limit_is_refused_having_read_one_byte_more(settings):
    from io import BytesIO

    from django.test import RequestFactory

    from stripe_idempotency.views import WebhookView

    stream = BytesIO(b"x" * 5000)
    request = RequestFactory().post("/stripe/webhook/", data=b"", content_type="application/json")
    request.META.pop("CONTENT_LENGTH", None)
    request.META.update({"wsgi.input": stream, "wsgi.input_terminated": True})
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_BODY_BYTES": 1000}):
        response = WebhookView.as_view()(request)
    assert (response.status_code, json.loads(response.content)["error"]) == (413, "body_too_large")
    assert stream.tell() == 1001
