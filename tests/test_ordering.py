"""Events of one object in Stripe's order: what a receiver can ask (superseded, latest_processed),
events of one object never run at once (ORDERING "serialize"), and an event a later one made
stale completed without its receivers ("skip_superseded"), in both orders and concurrently."""

from __future__ import annotations

import collections
import logging
import random
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.test import Client, override_settings
from django.urls import reverse

from stripe_idempotency import leases, ordering, processing
from stripe_idempotency.backends import for_connection
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import InsufficientFunds
from stripe_idempotency.models import EventState, LedgerEntry, StripeEvent
from stripe_idempotency.outcomes import Busy, Duplicate, Processed
from stripe_idempotency.signals import signal_for
from stripe_idempotency.testing import build_event, build_thin_event, deliver
from tests import concurrency
from tests.concurrency import burst, in_thread, wait_for
from tests.settings import WEBHOOK_SECRET
from tests.testapp.models import Effect, Subscription

pytestmark = pytest.mark.django_db(transaction=True)

T0 = int(datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp())
SUBSCRIPTIONS = "customer.subscription.*"
SKIP = {"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "ORDERING": {SUBSCRIPTIONS: "skip_superseded"}}
ONE_WRITER_AT_A_TIME = pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="SQLite's one writer: a claim waits for the dispatch's lock."
)
SERIALIZE = {"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "ORDERING": {"charge.*": "serialize"}}


def stored_not_run(event: dict) -> None:
    """Store ``event`` as a deferred delivery does, its object and ``created`` read from it, and
    run nothing: it stays pending."""
    for_connection(connection).insert_unclaimed(StripeEvent, IncomingEvent.from_payload(event))


def subscription_event(event_type: str, status: str, created: int, sub: str = "sub_1") -> dict:
    subscription = {"id": sub, "object": "subscription", "status": status}
    return build_event(event_type, created=created, data=subscription)


def sync_subscription(sender, event, **kwargs):
    """A receiver that copies the object's state, as most subscription receivers do."""
    subscription = event.payload["data"]["object"]
    Subscription.objects.update_or_create(
        stripe_id=subscription["id"], defaults={"status": subscription["status"]}
    )
    Effect.objects.create(event_id=event.event_id, receiver="sync_subscription")


@pytest.fixture
def subscriptions(connect):
    for event_type in ("customer.subscription.created", "customer.subscription.updated"):
        connect(signal_for(event_type), sync_subscription)


def status_of(sub: str = "sub_1") -> str:
    return Subscription.objects.get(stripe_id=sub).status


# -- what a receiver can ask -----------------------------------------------------------------------


def test_superseded_and_latest_processed_follow_stripe_s_created_in_whole_seconds(connect):
    asked = {}

    def ask(sender, event, **kwargs):
        latest = event.latest_processed()
        asked[event.event_id] = (event.superseded(), latest.event_id if latest else None)

    connect(signal_for("customer.subscription.updated"), ask)
    newer = subscription_event("customer.subscription.updated", "active", T0 + 10)
    older = subscription_event("customer.subscription.updated", "incomplete", T0)
    same_second = subscription_event("customer.subscription.updated", "past_due", T0 + 10)
    elsewhere = subscription_event("customer.subscription.updated", "active", T0 + 99, sub="sub_2")
    for event in (elsewhere, newer, older, same_second):
        assert isinstance(processing.receive(IncomingEvent.from_payload(event)), Processed)
    assert asked == {
        elsewhere["id"]: (False, None),  # another object's events are not this one's
        newer["id"]: (False, None),
        older["id"]: (True, newer["id"]),
        # Created in the same second as the newer one: neither supersedes the other.
        same_second["id"]: (False, newer["id"]),
    }


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_superseded_by_names_the_latest_created_then_the_last_processed(subscriptions):
    # The very next second already supersedes; of several later events, the one Stripe created
    # last is named, and of those created in one second, the one processed last.
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    next_second = subscription_event("customer.subscription.updated", "trialing", T0 + 1)
    for event in (next_second, created):
        processing.receive(IncomingEvent.from_payload(event))
    assert StripeEvent.objects.get(event_id=created["id"]).superseded_by == next_second["id"]

    old = subscription_event("customer.subscription.created", "incomplete", T0, sub="sub_2")
    last_created = subscription_event("customer.subscription.updated", "active", T0 + 9, sub="sub_2")
    processed_later = subscription_event("customer.subscription.updated", "past_due", T0 + 5, sub="sub_2")
    for event in (last_created, processed_later, old):
        processing.receive(IncomingEvent.from_payload(event))
    assert StripeEvent.objects.get(event_id=old["id"]).superseded_by == last_created["id"]

    # Of two created in one second, the one processed last, though it was stored first.
    old = subscription_event("customer.subscription.created", "incomplete", T0, sub="sub_3")
    first = subscription_event("customer.subscription.updated", "active", T0 + 5, sub="sub_3")
    then = subscription_event("customer.subscription.updated", "past_due", T0 + 5, sub="sub_3")
    stored_not_run(then)
    for event in (first, then, old):
        processing.receive(IncomingEvent.from_payload(event))
    assert StripeEvent.objects.get(event_id=then["id"]).pk < StripeEvent.objects.get(event_id=first["id"]).pk
    assert StripeEvent.objects.get(event_id=old["id"]).superseded_by == then["id"]


def test_thin_events_are_ordered_by_their_related_object_to_the_second(connect):
    asked = []
    connect(signal_for("v1.customer.updated"), lambda sender, event, **kw: asked.append(event.superseded()))
    noon = datetime(2026, 11, 30, 12, 0, 0, 900000, tzinfo=UTC)
    for created in (noon, noon - timedelta(milliseconds=500), noon - timedelta(seconds=1)):
        thin = build_thin_event("v1.customer.updated", created=created)
        processing.receive(IncomingEvent.from_payload(thin))
    # 12:00:00.400 is in the same second as 12:00:00.900; 11:59:59.900 is a second before it.
    assert asked == [False, False, True]


def test_an_event_about_no_object_is_never_superseded(connect):
    asked = []
    connect(signal_for("balance.available"), lambda sender, event, **kw: asked.append(event.superseded()))
    processing.receive(IncomingEvent.from_payload(build_event("balance.available", created=T0 + 5)))
    processing.receive(IncomingEvent.from_payload(build_event("balance.available", created=T0)))
    assert asked == [False, False]
    assert StripeEvent.objects.filter(object_id=None).count() == 2


# -- skip_superseded --------------------------------------------------------------------------------


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_updated_before_created_leaves_the_subscription_as_the_newer_event_says(subscriptions):
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)
    assert deliver(Client(), updated).json()["status"] == "processed"
    answer = deliver(Client(), created)
    assert (answer.status_code, answer.json()) == (200, {"status": "superseded", "event_id": created["id"]})
    assert status_of() == "active"
    row = StripeEvent.objects.get(event_id=created["id"])
    assert (row.superseded_by, row.attempts, row.processed_at is not None) == (updated["id"], 1, True)
    assert StripeEvent.objects.with_state().get(pk=row.pk).state == EventState.PROCESSED
    assert list(Effect.objects.values_list("event_id", flat=True)) == [updated["id"]]
    # Delivered again: a duplicate, like any processed event.
    assert deliver(Client(), created).json()["status"] == "duplicate"


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
@pytest.mark.parametrize("later_state", ["pending", "failed"])
def test_only_a_later_event_that_is_processed_supersedes(subscriptions, connect, later_state):
    # A later event stored but not run (accepted, or its receivers failed) has changed nothing
    # yet: skipping the older one's receivers would lose its state for good if the later one
    # never succeeds.
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)
    if later_state == "pending":
        stored_not_run(updated)
    else:

        def fail(sender, event, **kwargs):
            raise RuntimeError("the later event's receiver fails")

        connect(signal_for("customer.subscription.updated"), fail)
        assert deliver(Client(), updated).status_code == 500
    assert deliver(Client(), created).json() == {"status": "processed", "event_id": created["id"]}
    assert status_of() == "incomplete"
    assert StripeEvent.objects.get(event_id=created["id"]).superseded_by is None


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_an_event_with_no_created_is_never_superseded_and_runs(subscriptions):
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)
    assert deliver(Client(), updated).json()["status"] == "processed"
    undated = subscription_event("customer.subscription.updated", "past_due", T0)
    del undated["created"]
    assert deliver(Client(), undated).json() == {"status": "processed", "event_id": undated["id"]}
    assert status_of() == "past_due"


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_in_stripe_s_order_both_run(subscriptions):
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)
    assert deliver(Client(), created).json()["status"] == "processed"
    assert deliver(Client(), updated).json()["status"] == "processed"
    assert status_of() == "active"
    assert StripeEvent.objects.filter(superseded_by__isnull=False).count() == 0
    assert Effect.objects.count() == 2


def test_without_ordering_the_late_older_event_wins(subscriptions):
    """What ORDERING is for: unconfigured, the older state lands last."""
    deliver(Client(), subscription_event("customer.subscription.updated", "active", T0 + 3))
    deliver(Client(), subscription_event("customer.subscription.created", "incomplete", T0))
    assert status_of() == "incomplete"


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_the_reaper_completes_a_superseded_event_and_says_so(subscriptions, capsys):
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)

    def fail_once(sender, event, **kwargs):
        if event.attempts == 1:
            raise RuntimeError("the shop's database was busy")

    signal_for("customer.subscription.created").connect(fail_once, weak=False)
    try:
        assert deliver(Client(), created).status_code == 500
        assert deliver(Client(), updated).json()["status"] == "processed"
        StripeEvent.objects.filter(event_id=created["id"]).update(next_attempt_at=None)  # its backoff over
        call_command("reap_stale_claims", "--reprocess")
    finally:
        signal_for("customer.subscription.created").disconnect(fail_once)
    out = capsys.readouterr().out
    assert f"Reprocessed {created['id']} customer.subscription.created" in out
    assert f"superseded by a later event, receivers not run ({updated['id']})" in out
    assert "1 processed, 0 failed again, 0 skipped" in out
    assert status_of() == "active"
    assert StripeEvent.objects.get(event_id=created["id"]).superseded_by == updated["id"]


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_a_forced_replay_that_runs_the_receivers_clears_superseded_by(subscriptions):
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)
    deliver(Client(), updated)
    deliver(Client(), created)
    assert StripeEvent.objects.get(event_id=created["id"]).superseded_by == updated["id"]
    # The later event is gone (pruned, say): a forced replay runs the receivers and says so.
    Effect.objects.all().delete()
    StripeEvent.objects.filter(event_id=updated["id"]).delete()
    call_command("replay_stripe_event", created["id"], "--force")
    assert StripeEvent.objects.get(event_id=created["id"]).superseded_by is None
    assert list(Effect.objects.values_list("event_id", flat=True)) == [created["id"]]


# -- serialize -------------------------------------------------------------------------------------


@ONE_WRITER_AT_A_TIME
@override_settings(STRIPE_IDEMPOTENCY=SERIALIZE)
def test_an_event_of_an_object_being_processed_is_answered_busy_and_its_claim_given_back(connect):
    inside, leave = threading.Event(), threading.Event()

    def slow(sender, event, **kwargs):
        inside.set()
        assert leave.wait(30)

    connect(signal_for("charge.succeeded"), slow)
    succeeded = build_event("charge.succeeded", created=T0, data={"id": "ch_1", "object": "charge"})
    refunded = build_event("charge.refunded", created=T0 + 1, data={"id": "ch_1", "object": "charge"})
    other = build_event("charge.refunded", created=T0 + 1, data={"id": "ch_2", "object": "charge"})
    thread, result = in_thread(lambda: deliver(Client(), succeeded).json()["status"])
    try:
        assert inside.wait(30)
        answer = deliver(Client(), refunded)
        assert (answer.status_code, answer.json()["status"]) == (503, "busy")
        assert 1 <= int(answer["Retry-After"]) <= 60
        # Another object's event is not held up.
        assert deliver(Client(), other).json()["status"] == "processed"
        # The claim was given back as if never made: a pending event, no attempt counted.
        row = StripeEvent.objects.with_state().get(event_id=refunded["id"])
        assert (row.state, row.attempts, row.claimed_at) == (EventState.PENDING, 0, None)
        assert row.claim_token is None
    finally:
        leave.set()
        thread.join(30)
    assert result == ["processed"]
    assert deliver(Client(), refunded).json()["status"] == "processed"
    assert StripeEvent.objects.get(event_id=refunded["id"]).attempts == 1


@ONE_WRITER_AT_A_TIME
@override_settings(STRIPE_IDEMPOTENCY=SERIALIZE)
def test_a_failed_event_that_gives_way_keeps_its_attempts_and_error(connect):
    inside, leave = threading.Event(), threading.Event()
    failures = []

    def refund(sender, event, **kwargs):
        if not failures:
            failures.append(event.event_id)
            raise RuntimeError("first try fails")

    def slow(sender, event, **kwargs):
        inside.set()
        assert leave.wait(30)

    connect(signal_for("charge.refunded"), refund)
    connect(signal_for("charge.succeeded"), slow)
    refunded = build_event("charge.refunded", created=T0 + 1, data={"id": "ch_1", "object": "charge"})
    succeeded = build_event("charge.succeeded", created=T0, data={"id": "ch_1", "object": "charge"})
    assert deliver(Client(), refunded).status_code == 500
    thread, _ = in_thread(lambda: deliver(Client(), succeeded))
    try:
        assert inside.wait(30)
        assert deliver(Client(), refunded).json()["status"] == "busy"
        row = StripeEvent.objects.with_state().get(event_id=refunded["id"])
        assert (row.state, row.attempts, row.claim_token) == (EventState.FAILED, 1, None)
        assert "first try fails" in row.last_error
    finally:
        leave.set()
        thread.join(30)


@override_settings(STRIPE_IDEMPOTENCY=SERIALIZE)
def test_giving_way_counts_no_attempt_on_every_backend(connect):
    # The holder is a live claim another instance made (on SQLite too: between its claim and
    # its receivers' transaction, nothing holds the write lock).
    def refund(sender, event, **kwargs):
        if event.attempts == 1:
            raise RuntimeError("first try fails")

    connect(signal_for("charge.refunded"), refund)
    succeeded = build_event("charge.succeeded", created=T0, data={"id": "ch_1", "object": "charge"})
    first_time = build_event("charge.refunded", created=T0 + 1, data={"id": "ch_1", "object": "charge"})
    failed_before = build_event("charge.updated", created=T0 + 2, data={"id": "ch_1", "object": "charge"})
    connect(signal_for("charge.updated"), refund)
    assert deliver(Client(), failed_before).status_code == 500
    holder = leases.claim(IncomingEvent.from_payload(succeeded))
    assert isinstance(holder, leases.Claimed)

    assert deliver(Client(), first_time).json()["status"] == "busy"
    row = StripeEvent.objects.with_state().get(event_id=first_time["id"])
    assert (row.state, row.attempts, row.claimed_at, row.claim_token) == (EventState.PENDING, 0, None, None)

    assert deliver(Client(), failed_before).json()["status"] == "busy"
    row = StripeEvent.objects.with_state().get(event_id=failed_before["id"])
    assert (row.state, row.attempts, row.claim_token) == (EventState.FAILED, 1, None)
    assert "first try fails" in row.last_error


def test_ordering_rules_exact_type_first_then_the_longest_pattern(settings):
    settings.STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "ORDERING": {
            "*": "serialize",
            "customer.subscription.*": "skip_superseded",
            "customer.subscription.deleted": "serialize",
        },
    }
    assert ordering.mode_for("customer.subscription.updated") == "skip_superseded"
    assert ordering.mode_for("customer.subscription.deleted") == "serialize"
    assert ordering.mode_for("invoice.paid") == "serialize"
    # The longest pattern, not the greatest string: "*voice.paid" is longer, "invoice.*" greater.
    settings.STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "ORDERING": {"invoice.*": "serialize", "*voice.paid": "skip_superseded"},
    }
    assert ordering.mode_for("invoice.paid") == "skip_superseded"
    assert ordering.mode_for("charge.refunded") is None  # rules, none matching
    settings.STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": [WEBHOOK_SECRET]}
    assert ordering.mode_for("invoice.paid") is None


@override_settings(STRIPE_IDEMPOTENCY=SERIALIZE)
def test_a_refund_delivered_before_its_payment_waits_for_it(connect):
    """The ledger's pair: the refund's debit cannot pay before the payment's credit; it fails,
    is retried, and the account ends where Stripe's order would have left it."""

    def credit(sender, event, **kwargs):
        charge = event.payload["data"]["object"]
        LedgerEntry.objects.credit(
            account="cus_1", amount=charge["amount"], currency="usd", entry_type="charge",
            reference=charge["id"], event=event,
        )  # fmt: skip

    def refund(sender, event, **kwargs):
        charge = event.payload["data"]["object"]
        LedgerEntry.objects.debit(
            account="cus_1", amount=charge["amount_refunded"], currency="usd", entry_type="refund",
            reference=charge["id"], event=event,
        )  # fmt: skip

    connect(signal_for("charge.succeeded"), credit)
    connect(signal_for("charge.refunded"), refund)
    charge = {"id": "ch_1", "object": "charge", "amount": 1500, "amount_refunded": 1500}
    succeeded = build_event("charge.succeeded", created=T0, data=charge)
    refunded = build_event("charge.refunded", created=T0 + 60, data=charge)
    answer = deliver(Client(), refunded)
    assert answer.status_code == 500
    assert InsufficientFunds.__name__ in StripeEvent.objects.get(event_id=refunded["id"]).last_error
    assert deliver(Client(), succeeded).json()["status"] == "processed"
    assert deliver(Client(), refunded).json()["status"] == "processed"  # Stripe's retry
    assert LedgerEntry.objects.balance(account="cus_1", currency="usd") == 0
    assert list(LedgerEntry.objects.order_by("id").values_list("amount", flat=True)) == [1500, -1500]


# -- concurrently ----------------------------------------------------------------------------------


def pairs(count: int) -> list[tuple[dict, dict]]:
    return [
        (
            subscription_event("customer.subscription.created", "incomplete", T0, sub=f"sub_{n}"),
            subscription_event("customer.subscription.updated", "active", T0 + 2, sub=f"sub_{n}"),
        )
        for n in range(count)
    ]


def retry_until_done(events: list[dict]) -> Counter:
    """Stripe's retries, after a burst: each unprocessed event delivered until it is done."""
    answers: Counter = Counter()
    for event in events:

        def done(event: dict = event) -> bool:
            status = deliver(Client(), event).json()["status"]
            answers[status] += 1
            return status in ("processed", "superseded", "duplicate")

        wait_for(done, f"{event['id']} to be done")
    return answers


@ONE_WRITER_AT_A_TIME
@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_two_events_of_one_object_never_run_at_once_across_threads(connect, monkeypatch):
    running: Counter = Counter()
    overlaps = []
    lock = threading.Lock()
    # An object's receivers stay open until the other event of the object has come and given
    # way, or until no other thread can bring it (each is inside a receiver or done): the
    # pairs meet whenever the threads' orders let them, however fast or slow the machine.
    met = collections.defaultdict(threading.Event)
    events = [event for pair in pairs(12) for event in pair]
    threads = 6
    answered: Counter = Counter()  # per delivering thread
    held: set[str] = set()  # the delivering threads inside a receiver now

    class GiveWay(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "another event about" in record.getMessage():
                met[record.args[1]].set()

    def counted(client, event, **kwargs):
        try:
            return deliver(client, event, **kwargs)
        finally:
            with lock:
                answered[threading.current_thread().name] += 1

    def no_other_thread_can_come() -> bool:
        with lock:
            done = {name for name, count in answered.items() if count == len(events)}
            return len(held | done) >= threads

    def watched(sender, event, **kwargs):
        sub, me = event.object_id, threading.current_thread().name
        with lock:
            running[sub] += 1
            held.add(me)
            if running[sub] > 1:
                overlaps.append(sub)
        try:
            wait_for(
                lambda: met[sub].is_set() or no_other_thread_can_come(),
                f"the other event of {sub} to come and give way, or every thread to be held or done",
            )
            sync_subscription(sender, event)
        finally:
            with lock:
                running[sub] -= 1
                held.discard(me)

    for event_type in ("customer.subscription.created", "customer.subscription.updated"):
        connect(signal_for(event_type), watched)
    monkeypatch.setattr(concurrency, "deliver", counted)
    handler = GiveWay(level=logging.INFO)
    logger = logging.getLogger("stripe_idempotency")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        burst(events, threads=threads)
        assert len(answered) == threads
        retry_until_done(events)  # on this thread: none other can come, nothing waits
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert overlaps == []
    # They met, and were kept apart: claims that found the other event of their object running.
    assert met, "no two events of one object ever met: the test proved nothing"
    assert_each_pair_ends_at_the_newer_state(12)


@ONE_WRITER_AT_A_TIME
@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_pairs_delivered_in_both_orders_from_processes_end_at_the_newer_state(subscriptions):
    events = [event for pair in pairs(30) for event in pair]
    random.Random(7).shuffle(events)
    burst(events, processes=3, threads=3)
    for open_connection in connections.all():
        open_connection.close()
    retry_until_done(events)
    assert_each_pair_ends_at_the_newer_state(30)


def assert_each_pair_ends_at_the_newer_state(count: int) -> None:
    assert dict(Subscription.objects.values_list("stripe_id", "status")) == {
        f"sub_{n}": "active" for n in range(count)
    }
    rows = StripeEvent.objects.with_state()
    assert {row.state for row in rows} == {EventState.PROCESSED}
    assert rows.count() == 2 * count
    ran = Counter(Effect.objects.values_list("event_id", flat=True))
    assert set(ran.values()) == {1}  # nothing ran twice
    for row in rows:
        # Each event either ran its receivers or was superseded by its pair's newer event.
        assert (row.event_id in ran) != (row.superseded_by is not None), row
        if row.superseded_by is not None:
            assert row.type == "customer.subscription.created"


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_a_busy_outcome_from_receive_is_retryable():
    event = IncomingEvent.from_payload(subscription_event("customer.subscription.updated", "active", T0))
    holder = subscription_event("customer.subscription.created", "incomplete", T0 - 5)
    held = processing.leases.claim(IncomingEvent.from_payload(holder))
    assert isinstance(processing.receive(event), Busy)
    processing.process(held)
    assert isinstance(processing.receive(event), Processed)
    assert isinstance(processing.receive(IncomingEvent.from_payload(holder)), Duplicate)


@override_settings(STRIPE_IDEMPOTENCY=SKIP)
def test_the_admin_shows_and_filters_superseded_events(subscriptions, admin_client):
    created = subscription_event("customer.subscription.created", "incomplete", T0)
    updated = subscription_event("customer.subscription.updated", "active", T0 + 3)
    deliver(Client(), updated)
    deliver(Client(), created)
    changelist = reverse("admin:stripe_idempotency_stripeevent_changelist")
    superseded = admin_client.get(changelist, {"superseded_by__isempty": "0"})
    assert [e.event_id for e in superseded.context["cl"].result_list] == [created["id"]]
    assert f"superseded by {updated['id']} (receivers not run)" in superseded.content.decode()
    row = StripeEvent.objects.get(event_id=created["id"])
    page = admin_client.get(reverse("admin:stripe_idempotency_stripeevent_change", args=[row.pk]))
    assert updated["id"] in page.content.decode()
