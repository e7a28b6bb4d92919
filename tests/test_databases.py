"""Several databases: events and the ledger where a router puts them, or where ``using=`` says."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from django.core.management import call_command
from django.db.models.functions import Now
from django.test import Client, override_settings
from django.utils import timezone

from stripe_idempotency import leases, processing, retention
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import LedgerBalance, LedgerEntry, PruneWatermark, StripeEvent
from stripe_idempotency.outcomes import Processed, Superseded
from stripe_idempotency.queueing import tasks_framework
from stripe_idempotency.signals import event_received
from stripe_idempotency.tasks import process_stripe_event
from stripe_idempotency.testing import build_event, deliver
from tests.concurrency import wait_for

pytestmark = pytest.mark.django_db(transaction=True, databases=["default", "payments"])

ROUTED = override_settings(DATABASE_ROUTERS=["tests.routers.PaymentsRouter"])


def credit_on_each_event(sender, event, **kwargs):
    LedgerEntry.objects.credit(
        account="cus_1",
        amount=500,
        currency="usd",
        entry_type="deposit",
        reference=event.event_id,
        event=event,
    )


def counts(model) -> tuple[int, int]:
    return model.objects.using("default").count(), model.objects.using("payments").count()


@ROUTED
def test_a_router_puts_events_and_the_ledger_in_its_database(connect):
    connect(event_received, credit_on_each_event)
    event = build_event(id="evt_routed")
    assert deliver(Client(), event).json()["status"] == "processed"
    assert deliver(Client(), event).json()["status"] == "duplicate"
    assert counts(StripeEvent) == (0, 1)
    assert counts(LedgerEntry) == (0, 1)
    assert LedgerBalance.objects.using("payments").get().balance == 500
    assert StripeEvent.objects.using("payments").get().processed_at is not None


@ROUTED
def test_the_commands_follow_the_router_unless_told_a_database():
    leases.claim(IncomingEvent.from_payload(build_event(id="evt_stale")))  # on the router's database
    StripeEvent.objects.update(claim_expires_at=Now() - dt.timedelta(seconds=1))
    out = StringIO()
    call_command("reap_stale_claims", "--dry-run", stdout=out, no_color=True)
    assert "evt_stale" in out.getvalue()
    out = StringIO()
    call_command("reap_stale_claims", "--dry-run", "--database", "default", stdout=out, no_color=True)
    assert "evt_stale" not in out.getvalue()
    out = StringIO()
    call_command("replay_stripe_event", "evt_stale", stdout=out, no_color=True)
    assert out.getvalue() == "Processed evt_stale (checkout.session.completed).\n"
    assert StripeEvent.objects.using("payments").get().processed_at is not None
    LedgerEntry.objects.credit(account="cus_1", amount=700, currency="usd", entry_type="deposit")
    out = StringIO()
    call_command("verify_ledger", stdout=out, no_color=True)
    assert out.getvalue().startswith("cus_1 usd: ok (1 entry, balance 700)\n")


@ROUTED
@override_settings(
    STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "PROCESSING": "deferred", "ENQUEUE": None}
)
def test_the_table_queue_s_workers_follow_the_router_unless_told_a_database(connect):
    connect(event_received, credit_on_each_event)
    assert deliver(Client(), build_event(id="evt_routed_table")).json()["status"] == "accepted"
    out = StringIO()
    call_command("process_stripe_events", "--database", "default", stdout=out, no_color=True)
    assert out.getvalue().startswith("Done: 0 events run")
    out = StringIO()
    call_command("process_stripe_events", stdout=out, no_color=True)
    assert out.getvalue().startswith("Done: 1 event run (1 processed")
    assert counts(StripeEvent) == (0, 1)
    assert LedgerBalance.objects.using("payments").get().balance == 500


def test_using_names_the_database_without_a_router():
    outcome = processing.receive(IncomingEvent.from_payload(build_event(id="evt_using")), using="payments")
    assert isinstance(outcome, Processed)
    entry, created = LedgerEntry.objects.credit(
        account="cus_2", amount=300, currency="usd", entry_type="deposit", reference="r", using="payments"
    )
    assert created
    assert entry._state.db == "payments"
    assert counts(StripeEvent) == (0, 1)
    assert counts(LedgerEntry) == (0, 1)
    assert LedgerEntry.objects.balance(account="cus_2", currency="usd", using="payments") == 300
    assert LedgerEntry.objects.balance(account="cus_2", currency="usd") == 0  # default holds nothing


@ROUTED
@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "PROCESSING": "deferred"})
def test_a_deferred_event_s_task_names_the_database_it_lives_in(connect):
    # The worker has no request to route by: the task must say where the row is, or it would
    # look in "default", find nothing, and end as if the event had been pruned.
    backend = tasks_framework().task_backends["default"]
    backend.clear()
    connect(event_received, credit_on_each_event)
    assert deliver(Client(), build_event(id="evt_routed_later")).json()["status"] == "accepted"
    wait_for(lambda: list(backend.results), "the task to be queued")
    assert [result.args for result in backend.results] == [["evt_routed_later", "payments"]]
    assert [process_stripe_event.call(*result.args) for result in list(backend.results)] == ["processed"]
    backend.clear()
    assert counts(StripeEvent) == (0, 1)
    assert LedgerBalance.objects.using("payments").get().balance == 500


@override_settings(
    STRIPE_IDEMPOTENCY={
        "WEBHOOK_SECRETS": ["whsec_test_secret"],
        "ORDERING": {"customer.*": "skip_superseded"},
    }
)
def test_ordering_reads_the_events_of_the_database_it_was_given():
    def customer(event_id: str, created: int) -> IncomingEvent:
        data = {"id": "cus_1", "object": "customer"}
        return IncomingEvent.from_payload(
            build_event("customer.updated", id=event_id, created=created, data=data)
        )

    assert isinstance(processing.receive(customer("evt_newer", 1_700_000_060), using="payments"), Processed)
    outcome = processing.receive(customer("evt_older", 1_700_000_000), using="payments")
    assert isinstance(outcome, Superseded)
    assert outcome.by == "evt_newer"


def test_pruning_works_in_the_database_it_was_given():
    long_ago = timezone.now() - dt.timedelta(days=40)
    for event_id in ("evt_old", "evt_paid"):
        processing.receive(IncomingEvent.from_payload(build_event(id=event_id)), using="payments")
    StripeEvent.objects.using("payments").update(processed_at=long_ago)
    LedgerEntry.objects.credit(
        account="cus_1",
        amount=100,
        currency="usd",
        entry_type="deposit",
        reference="r",
        event=StripeEvent.objects.using("payments").get(event_id="evt_paid"),
        using="payments",
    )
    before = timezone.now() - dt.timedelta(days=30)
    pruned = retention.prune(using="payments", before=before, batch_size=1)
    # Two keys walked one at a time (the ledger's keeps its range, and deletes nothing).
    assert (pruned.deleted, pruned.batches, pruned.kept_for_the_ledger) == (1, 2, 1)
    assert list(StripeEvent.objects.using("payments").values_list("event_id", flat=True)) == ["evt_paid"]
    assert retention.pruned_before(using="payments") == before
    assert retention.pruned_before(using="default") is None
    # A later run moves the one watermark row of that database.
    processing.receive(IncomingEvent.from_payload(build_event(id="evt_later")), using="payments")
    StripeEvent.objects.using("payments").filter(event_id="evt_later").update(processed_at=long_ago)
    later = timezone.now() - dt.timedelta(days=20)
    assert retention.prune(using="payments", before=later).deleted == 1
    assert list(PruneWatermark.objects.using("payments").values_list("pruned_before", flat=True)) == [later]
    assert not PruneWatermark.objects.using("default").exists()
