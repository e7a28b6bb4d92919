"""The dispatch: receivers in one transaction, fenced by the claim; every exit completes or releases."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.db import transaction

from stripe_idempotency import leases, outcomes, processing
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.outcomes import Duplicate, Failed, Fenced, Processed
from stripe_idempotency.signals import event_received, registered_signal, signal_for
from stripe_idempotency.testing import build_event
from tests.conftest import TYPE
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)


def verified(event_type: str = TYPE) -> IncomingEvent:
    return IncomingEvent.from_payload(build_event(event_type))


def test_receivers_get_the_row_event_received_first(connect):
    calls = []

    def on_any(sender, event, **kwargs):
        calls.append(("any", sender, event.event_id, event.payload["type"], event.pk))

    def on_type(sender, event, **kwargs):
        calls.append(("type", sender, event.event_id, event.payload["type"], event.pk))

    connect(signal_for(TYPE), on_type)
    connect(event_received, on_any)
    event = verified()
    outcome = processing.receive(event)
    assert isinstance(outcome, Processed)
    pk = StripeEvent.objects.get().pk
    assert calls == [
        ("any", StripeEvent, event.id, TYPE, pk),
        ("type", StripeEvent, event.id, TYPE, pk),
    ]


def test_a_type_nobody_listens_to_is_processed_without_registering_a_signal():
    outcome = processing.receive(verified("nobody.listens.to.this"))
    assert isinstance(outcome, Processed)
    assert registered_signal("nobody.listens.to.this") is None
    assert StripeEvent.objects.get().processed_at is not None


def test_signal_for_returns_one_signal_per_type():
    assert signal_for("invoice.paid") is signal_for("invoice.paid")
    assert signal_for("invoice.paid") is not signal_for("invoice.created")


def test_one_receiver_raising_rolls_back_every_receivers_work(connect, record_effects):
    def fail(sender, event, **kwargs):
        raise KeyError("missing price")

    connect(signal_for(TYPE), fail)
    outcome = processing.receive(verified())
    assert isinstance(outcome, Failed)
    assert "KeyError: 'missing price'" in outcome.error
    assert Effect.objects.count() == 0
    row = StripeEvent.objects.get()
    assert (row.processed_at, row.claim_token, row.claim_expires_at, row.attempts) == (None, None, None, 1)
    assert row.last_error == outcome.error


def test_a_long_error_keeps_its_end():
    def fail(sender, event, **kwargs):
        raise ValueError("x" * 20_000 + " the end")

    event_received.connect(fail)
    try:
        outcome = processing.receive(verified())
    finally:
        event_received.disconnect(fail)
    assert len(outcome.error) == outcomes.LAST_ERROR_MAX_CHARS
    assert outcome.error.endswith(" the end\n")


def test_an_interrupted_dispatch_releases_its_claim_and_goes_on_dying(connect, record_effects):
    def interrupted(sender, event, **kwargs):
        raise SystemExit(1)  # what a worker timeout raises inside gunicorn's sync worker

    connect(event_received, interrupted)
    with pytest.raises(SystemExit):
        processing.receive(verified())
    row = StripeEvent.objects.get()
    assert (row.processed_at, row.claim_token, row.claim_expires_at) == (None, None, None)
    assert "SystemExit: 1" in row.last_error
    assert Effect.objects.count() == 0


def test_a_run_whose_lease_was_taken_over_rolls_back(taken_over_after_the_claim, record_effects):
    # Another instance, on its own connection, takes the event over between this
    # run's claim and its receivers: their work must not commit.
    outcome = processing.receive(verified())
    assert isinstance(outcome, Fenced)
    assert Effect.objects.count() == 0
    [takeover] = taken_over_after_the_claim
    row = StripeEvent.objects.get()
    assert row.processed_at is None
    assert (row.claim_token, row.attempts) == (takeover.token, 2)  # the takeover's claim stands


def test_every_exit_path_leaves_no_claim_of_its_own(connect):
    outcomes = []
    for behaviour in ("succeed", "fail"):

        def receiver(sender, event, behaviour=behaviour, **kwargs):
            if behaviour == "fail":
                raise RuntimeError

        event_received.connect(receiver)
        try:
            outcomes.append(processing.receive(verified()))
        finally:
            event_received.disconnect(receiver)
    assert [type(o) for o in outcomes] == [Processed, Failed]
    assert StripeEvent.objects.filter(claim_token__isnull=False).count() == 0
    assert StripeEvent.objects.filter(claim_expires_at__isnull=False).count() == 0


def test_process_takes_a_claim_from_anyone():
    # The one path: a caller that claimed by itself (the reaper, a replay) processes the same way.
    event = verified()
    claimed = leases.claim(event)
    assert isinstance(processing.process(claimed), Processed)
    assert processing.receive(event) == Duplicate(event_id=event.id)


def test_a_failing_on_commit_callback_after_the_commit_still_answers_processed(connect, caplog):
    # The README's pattern: a receipt sent on commit, and SMTP is down. The
    # event's work is committed; the answer must say so, the later callbacks
    # must still run, and the failure must be visible, not lost.
    ran = []

    def send_receipt():
        raise ConnectionRefusedError("SMTP down")

    def fulfil(sender, event, **kwargs):
        Effect.objects.create(event_id=event.event_id, receiver="fulfil")
        transaction.on_commit(send_receipt)
        transaction.on_commit(lambda: ran.append("after"))

    connect(event_received, fulfil)
    event = build_event(id="evt_receipt")
    outcome = processing.receive(IncomingEvent.from_payload(event))
    assert isinstance(outcome, Processed)
    assert ran == ["after"]
    row = StripeEvent.objects.get()
    assert row.processed_at is not None
    assert row.last_error.startswith(
        "The event was processed; then an on_commit callback failed (not retried):"
    )
    assert "ConnectionRefusedError: SMTP down" in row.last_error
    assert Effect.objects.count() == 1
    [logged] = [r for r in caplog.records if r.name == "stripe_idempotency"]
    assert (logged.levelname, "evt_receipt" in logged.getMessage()) == ("ERROR", True)
    # Stripe's retry of the delivery is a duplicate, as the work is done.
    assert isinstance(processing.receive(IncomingEvent.from_payload(event)), Duplicate)


def test_on_commit_callbacks_do_not_run_for_a_rolled_back_attempt(connect):
    ran = []

    def fail_after_registering(sender, event, **kwargs):
        transaction.on_commit(lambda: ran.append(event.event_id))
        raise RuntimeError("boom")

    connect(event_received, fail_after_registering)
    assert isinstance(processing.receive(IncomingEvent.from_payload(build_event())), Failed)
    assert ran == []


def test_on_commit_callbacks_do_not_run_for_a_fenced_attempt(connect, taken_over_after_the_claim):
    ran = []
    connect(event_received, lambda sender, event, **kwargs: transaction.on_commit(lambda: ran.append(1)))
    assert isinstance(processing.receive(IncomingEvent.from_payload(build_event())), Fenced)
    assert ran == []


def test_a_takeover_stores_the_body_its_receivers_act_on(connect):
    # A replay tool or a test sends a known id with another body after a
    # failure: the receivers act on the new body, and the row must hold it,
    # or the admin and the reaper would show and replay the old one.
    seen = []
    failing = [True]

    def receiver(sender, event, **kwargs):
        seen.append(event.payload["data"]["object"]["amount"])
        if failing.pop() if failing else False:
            raise RuntimeError("first attempt fails")

    connect(event_received, receiver)
    # The second body is another delivery's: its created and livemode replace the first's too.
    first = build_event(
        id="evt_body", data={"amount": 100}, api_version="2024-06-20", created=1_700_000_000, livemode=False
    )
    second = build_event(
        id="evt_body",
        data={"amount": 250},
        api_version="2025-03-31.basil",
        created=1_700_000_060,
        livemode=True,
    )
    assert isinstance(processing.receive(IncomingEvent.from_payload(first)), Failed)
    assert isinstance(processing.receive(IncomingEvent.from_payload(second)), Processed)
    assert seen == [100, 250]
    row = StripeEvent.objects.get()
    assert (row.payload, row.api_version, row.livemode) == (second, "2025-03-31.basil", True)
    assert row.created == datetime.fromtimestamp(1_700_000_060, UTC)
    # A duplicate's body is not stored: the row keeps what was processed.
    third = build_event(id="evt_body", data={"amount": 999})
    assert isinstance(processing.receive(IncomingEvent.from_payload(third)), Duplicate)
    assert StripeEvent.objects.get().payload == second


def test_an_id_delivered_again_with_another_type_is_logged_and_dispatched_as_delivered(connect, caplog):
    typed = []
    connect(signal_for("invoice.paid"), lambda sender, event, **kwargs: typed.append(event.type))
    failing = [True]

    def fail_once(sender, event, **kwargs):
        if failing.pop() if failing else False:
            raise RuntimeError("boom")

    connect(event_received, fail_once)
    processing.receive(IncomingEvent.from_payload(build_event("invoice.created", id="evt_retyped")))
    outcome = processing.receive(IncomingEvent.from_payload(build_event("invoice.paid", id="evt_retyped")))
    assert isinstance(outcome, Processed)
    assert typed == ["invoice.paid"]
    assert StripeEvent.objects.get().type == "invoice.paid"
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert warning.getMessage() == (
        "Stripe event evt_retyped was delivered again with another type: "
        "stored invoice.created, delivered invoice.paid."
    )
