"""Log lines operators can search and count: one per refused, failed, fenced, busy or unavailable
delivery, with the event id and the outcome as structured fields, never the payload."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from django.test import Client

from stripe_idempotency import leases
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.log import FIELDS, FieldsFormatter, fields
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event, deliver, encode
from tests.concurrency import database_unreachable
from tests.test_example_project import ROOT

pytestmark = pytest.mark.django_db(transaction=True)

SECRET_DATA = {"id": "cs_1", "customer_details": {"email": "payer@example.com"}}


@pytest.fixture
def lines(caplog):
    """The app's log records during the test, as (level, message, the structured fields)."""
    caplog.set_level(logging.DEBUG, logger="stripe_idempotency")

    def read() -> list[tuple[str, str, dict[str, object]]]:
        records = [r for r in caplog.records if r.name == "stripe_idempotency"]
        for record in records:  # never the payload, anywhere in the record
            assert "payer@example.com" not in record.getMessage() + str(vars(record))
        return [
            (r.levelname, r.getMessage(), {key: getattr(r, key) for key in FIELDS if hasattr(r, key)})
            for r in records
        ]

    return read


def test_a_forged_request_is_one_warning_with_its_code(lines):
    deliver(Client(), build_event(data=SECRET_DATA), secret="whsec_forged")
    [(level, message, logged)] = lines()
    assert (level, logged) == ("WARNING", {"outcome": "rejected", "code": "invalid_signature"})
    assert message.startswith("Rejected a webhook request: invalid_signature")


def test_an_authentic_event_refused_is_one_error_with_its_id(lines):
    body = encode(build_event(id="evt_refused", data=SECRET_DATA)).replace(b'"cs_1"', b'"cs_\\u0000"')
    assert deliver(Client(), body).status_code == 400
    [(level, _, logged)] = lines()
    assert (level, logged) == (
        "ERROR",
        {"event_id": "evt_refused", "outcome": "rejected", "code": "unstorable_payload"},
    )


def test_a_failed_receiver_is_one_error_with_the_event_its_attempts_and_the_traceback(lines, connect, caplog):
    def fail(sender, event, **kwargs):
        raise RuntimeError("the warehouse is down")

    connect(event_received, fail)
    deliver(Client(), build_event("invoice.paid", id="evt_failing", data=SECRET_DATA))
    [(level, message, logged)] = lines()
    assert (level, message) == ("ERROR", "A receiver failed for Stripe event evt_failing (invoice.paid).")
    assert logged == {
        "event_id": "evt_failing",
        "event_type": "invoice.paid",
        "outcome": "failed",
        "attempts": 1,
    }
    [record] = [r for r in caplog.records if r.name == "stripe_idempotency"]
    assert record.exc_info[0] is RuntimeError


def test_a_fenced_run_is_one_warning(lines, taken_over_after_the_claim):
    deliver(Client(), build_event(id="evt_fenced"))
    [(level, _, logged)] = lines()
    assert (level, logged) == (
        "WARNING",
        {"event_id": "evt_fenced", "event_type": "checkout.session.completed", "outcome": "fenced"},
    )


def test_busy_is_one_info_line(lines):
    event = build_event(id="evt_held")
    leases.claim(IncomingEvent.from_payload(event))
    deliver(Client(), event)
    assert lines() == [
        (
            "INFO",
            "Stripe event evt_held is held by another instance; answered busy.",
            {"event_id": "evt_held", "outcome": "busy"},
        )
    ]


def test_the_database_down_is_one_error_per_delivery(lines):
    with database_unreachable():
        deliver(Client(), build_event("invoice.paid", id="evt_outage"))
    [(level, _, logged)] = lines()
    assert (level, logged) == (
        "ERROR",
        {"event_id": "evt_outage", "event_type": "invoice.paid", "outcome": "unavailable"},
    )


def test_processed_and_duplicate_deliveries_log_nothing(lines):
    event = build_event(id="evt_quiet")
    deliver(Client(), event)
    deliver(Client(), event)
    assert lines() == []


def test_the_formatter_writes_the_fields_after_the_message():
    formatter = FieldsFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord(
        "stripe_idempotency", logging.WARNING, __file__, 1, "Refused %s", ("evt_1",), None
    )
    record.__dict__.update(
        fields(event_id="evt_1", outcome="rejected", code="invalid_api_version", endpoint=None)
    )
    assert formatter.format(record) == (
        "WARNING stripe_idempotency: Refused evt_1 event_id=evt_1 outcome=rejected code=invalid_api_version"
    )
    plain = logging.LogRecord("django.request", logging.ERROR, __file__, 1, "Internal Server Error", (), None)
    assert formatter.format(plain) == "ERROR django.request: Internal Server Error"


def test_a_field_that_is_not_one_of_the_app_s_is_refused():
    with pytest.raises(TypeError, match="Not a log field: payload"):
        fields(payload="{}")


def test_the_example_project_logs_the_fields(tmp_path):
    script = (
        "import django, logging; django.setup(); "
        "from stripe_idempotency.log import fields, logger; "
        "logger.warning('Rejected a webhook request: invalid_signature', "
        "extra=fields(outcome='rejected', code='invalid_signature'))"
    )
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'example.sqlite3'}",
        "DJANGO_SETTINGS_MODULE": "example_project.settings",
    }
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        "WARNING stripe_idempotency: Rejected a webhook request: invalid_signature "
        "outcome=rejected code=invalid_signature\n"
    )
