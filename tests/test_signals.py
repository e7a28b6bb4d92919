"""Lifecycle signals: what became of each delivery, sent once the outcome is durable, outside the
app's transactions, never able to change the answer."""

from __future__ import annotations

import logging

import pytest
from django.db import connection
from django.test import Client, override_settings

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import (
    event_dead,
    event_failed,
    event_processed,
    event_received,
    event_rejected,
)
from stripe_idempotency.testing import build_event, deliver, encode
from tests.settings import WEBHOOK_SECRET
from tests.test_deferred import DEFERRED, queued, run_queued  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def heard(connect):
    """Every lifecycle signal sent during the test, as (signal name, its keyword arguments, what the
    receiver saw of the database: inside a transaction?, the row's state)."""
    log: list[tuple[str, dict, bool, str | None]] = []
    for name, signal in {
        "processed": event_processed,
        "failed": event_failed,
        "dead": event_dead,
        "rejected": event_rejected,
    }.items():

        def receiver(sender, signal, name=name, **kwargs):
            assert sender is StripeEvent
            event = kwargs.get("event")
            state = (
                StripeEvent.objects.with_state().get(pk=event.pk).state if event is not None else None
            )  # read from the database: what a receiver sees is committed
            log.append((name, kwargs, connection.in_atomic_block, state))

        connect(signal, receiver)
    return log


def failing(sender, event, **kwargs):
    raise RuntimeError("the warehouse is down")


def test_processed_is_sent_once_after_the_commit_and_not_for_a_duplicate(heard):
    event = build_event(id="evt_heard")
    assert deliver(Client(), event).json()["status"] == "processed"
    assert deliver(Client(), event).json()["status"] == "duplicate"
    [(name, kwargs, in_transaction, state)] = heard
    assert (name, set(kwargs), in_transaction, state) == ("processed", {"event"}, False, "processed")
    assert kwargs["event"].event_id == "evt_heard"


def test_failed_carries_the_error_and_processed_is_not_sent_for_rolled_back_work(heard, connect):
    connect(event_received, failing)
    assert deliver(Client(), build_event(id="evt_failing")).status_code == 500
    [(name, kwargs, in_transaction, state)] = heard
    assert (name, set(kwargs), in_transaction, state) == ("failed", {"event", "error"}, False, "failed")
    assert "RuntimeError: the warehouse is down" in kwargs["error"]


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "MAX_ATTEMPTS": 2})
def test_dead_follows_the_failure_of_the_last_attempt(heard, connect):
    connect(event_received, failing)
    event = build_event(id="evt_dying")
    deliver(Client(), event)
    deliver(Client(), event)
    assert [(name, state) for name, _, _, state in heard] == [
        ("failed", "failed"),
        ("failed", "dead"),
        ("dead", "dead"),
    ]


def test_a_fenced_run_sends_nothing(heard, taken_over_after_the_claim):
    assert deliver(Client(), build_event(id="evt_fenced")).json()["status"] == "busy"
    assert heard == []


def test_rejected_carries_the_code_and_nothing_of_the_body(heard):
    body = encode(build_event(id="evt_forged"))
    response = Client().post(
        "/stripe/webhook/", body, content_type="application/json", HTTP_STRIPE_SIGNATURE="t=1,v1=bad"
    )
    assert response.status_code == 400
    Client().get("/stripe/webhook/")
    assert [(name, kwargs, in_transaction) for name, kwargs, in_transaction, _ in heard] == [
        ("rejected", {"code": response.json()["error"]}, False),
        ("rejected", {"code": "method_not_allowed"}, False),
    ]
    assert StripeEvent.objects.count() == 0


def test_a_receiver_that_raises_changes_no_answer(connect, caplog):
    connect(event_processed, failing)
    caplog.set_level(logging.ERROR, logger="stripe_idempotency")
    response = deliver(Client(), build_event(id="evt_loud"))
    assert (response.status_code, response.json()["status"]) == (200, "processed")
    assert "A receiver of a stripe_idempotency lifecycle signal raised" in caplog.text
    assert StripeEvent.objects.get().processed_at is not None


@DEFERRED
def test_deferred_an_accepted_event_is_announced_when_its_task_processes_it(heard, queued):  # noqa: F811
    assert deliver(Client(), build_event(id="evt_later")).json()["status"] == "accepted"
    assert heard == []
    assert run_queued(queued) == ["processed"]
    assert [(name, state) for name, _, _, state in heard] == [("processed", "processed")]
