"""Exactly once under real concurrency: many deliveries of each event at once, from threads and processes."""

from __future__ import annotations

import collections
import threading
import time
import uuid

import pytest
from django.db import OperationalError, connection, connections
from django.db.models.functions import Now
from django.test import Client, override_settings

from stripe_idempotency.models import LedgerEntry, StripeEvent
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event, deliver
from tests.concurrency import burst, in_thread, wait_for
from tests.conftest import TYPE
from tests.testapp.models import Effect

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.concurrency]

EVENTS = 50


def slow_receiver(sender, event, **kwargs):
    # Long enough for the other deliveries of the event to arrive while it runs.
    time.sleep(0.01)


def assert_exactly_once(events, deliveries, per_event):
    ids = [e["id"] for e in events]
    assert len(deliveries) == len(ids) * per_event
    answers = collections.Counter((d.http_status, d.status) for d in deliveries)
    allowed = {(200, "processed"), (200, "duplicate"), (503, "busy"), (503, "unavailable")}
    assert set(answers) <= allowed, answers
    processed = collections.Counter(d.event_id for d in deliveries if d.status == "processed")
    assert processed == collections.Counter(ids), "each event answered 'processed' exactly once"
    runs = collections.Counter(Effect.objects.values_list("event_id", "receiver"))
    assert runs == collections.Counter({(i, r): 1 for i in ids for r in ("received", "typed")})
    rows = StripeEvent.objects.filter(event_id__in=ids)
    assert rows.count() == len(ids)
    assert rows.filter(processed_at__isnull=True).count() == 0
    assert set(rows.values_list("attempts", flat=True)) == {1}
    assert rows.filter(claim_token__isnull=False).count() == 0


@pytest.mark.parametrize(
    ("processes", "threads"), [(1, 8), (2, 4)], ids=["8-threads", "2-processes-x-4-threads"]
)
def test_every_event_delivered_eight_times_at_once(record_effects, connect, processes, threads):
    connect(event_received, slow_receiver)
    events = [build_event(TYPE, data={"id": f"cs_{n}"}) for n in range(EVENTS)]
    deliveries = burst(events, processes=processes, threads=threads)
    assert_exactly_once(events, deliveries, per_event=processes * threads)


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite has one writer: a lease cannot be taken over while its dispatch runs (next test).",
)
def test_an_instance_that_outlives_its_lease_is_fenced(record_effects, connect):
    inside, finish = threading.Event(), threading.Event()
    runs = []

    def outlive_the_lease(sender, event, **kwargs):
        runs.append(event.event_id)
        if len(runs) == 1:
            inside.set()
            assert finish.wait(30)

    connect(event_received, outlive_the_lease)
    event = build_event()
    slow, slow_result = in_thread(lambda: deliver(Client(), event))
    assert inside.wait(30)

    # Another instance asks, as Stripe would: busy while the lease lives. Then the lease
    # runs out on the database clock (set there, not waited for: no race with the load)
    # and the next delivery takes the event over while the first instance still runs.
    client = Client()
    answers = [deliver(client, event).json()["status"]]
    StripeEvent.objects.update(claim_expires_at=Now())
    answers.append(deliver(client, event).json()["status"])
    finish.set()
    slow.join(30)

    assert answers == ["busy", "processed"]
    late = slow_result[0]
    assert (late.status_code, late.json()["status"]) == (503, "busy")
    assert 1 <= int(late["Retry-After"]) <= 60
    # The late instance's work rolled back; the takeover's committed: once in all.
    assert sorted(Effect.objects.values_list("receiver", flat=True)) == ["received", "typed"]
    row = StripeEvent.objects.get()
    assert row.processed_at is not None
    assert row.attempts == 2
    assert len(runs) == 2


@pytest.mark.only_on(
    "sqlite", reason="SQLite only: the other backends let the takeover happen (previous test)."
)
@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "CLAIM_TTL_SECONDS": 1})
def test_sqlite_serialises_a_takeover_behind_the_running_dispatch(record_effects, connect):
    inside, finish, claiming = threading.Event(), threading.Event(), threading.Event()
    first_run = threading.Lock()

    def hold_the_dispatch_open(sender, event, **kwargs):
        if first_run.acquire(blocking=False):  # only the first delivery's receivers wait
            inside.set()
            assert finish.wait(30)

    def note_the_claim(execute, sql, params, many, context):
        if sql.lstrip().startswith("INSERT"):
            claiming.set()
        return execute(sql, params, many, context)

    def deliver_while_the_first_runs():
        with connection.execute_wrapper(note_the_claim):
            return deliver(Client(), event)

    connect(event_received, hold_the_dispatch_open)
    event = build_event()
    slow, slow_result = in_thread(lambda: deliver(Client(), event))
    assert inside.wait(30)
    # The lease runs out, on the database's clock, while the receivers hold SQLite's write lock.
    wait_for(
        lambda: StripeEvent.objects.filter(claim_expires_at__lte=Now()).exists(),
        "the first delivery's lease to run out",
    )
    other, other_result = in_thread(deliver_while_the_first_runs)
    assert claiming.wait(30)
    # The takeover's claim has started; it cannot finish while the dispatch holds
    # the only write lock (if it could, it would be done in far less than this).
    other.join(0.5)
    assert other.is_alive(), "the takeover ran beside the dispatch"
    finish.set()
    slow.join(30)
    other.join(30)
    assert slow_result[0].json()["status"] == "processed"
    # Answered once the dispatch committed (or, past the connection's timeout, unavailable).
    assert other_result[0].json()["status"] in {"duplicate", "unavailable"}
    assert sorted(Effect.objects.values_list("receiver", flat=True)) == ["received", "typed"]
    assert StripeEvent.objects.get().attempts == 1


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite has one writer: the duplicate waits for the whole dispatch instead.",
)
def test_a_duplicate_arriving_while_the_receivers_hold_a_foreign_key_does_not_deadlock(connect):
    # A receiver's row that points at the event (a ledger entry, or any model of
    # the project's own with a foreign key to StripeEvent) makes InnoDB hold a
    # shared lock on the event's row until commit. A duplicate that asked for an
    # exclusive lock on that row would queue in front of the fenced update that
    # ends the receivers' transaction: a deadlock, and their work rolled back.
    duplicates = []

    def credit_then_meet_a_duplicate(sender, event, **kwargs):
        LedgerEntry.objects.credit(
            account="cus_fk",
            amount=100,
            currency="usd",
            entry_type="payment",
            reference=event.event_id,
            event=event,
        )
        # The duplicate is answered while this transaction holds the row's shared lock.
        thread, result = in_thread(lambda: deliver(Client(), event.payload))
        thread.join(30)
        duplicates.append(result[0] if result else None)

    connect(event_received, credit_then_meet_a_duplicate)
    event = build_event()
    response = deliver(Client(), event)

    assert (response.status_code, response.json()["status"]) == (200, "processed")
    [duplicate] = duplicates
    assert (duplicate.status_code, duplicate.json()["status"]) == (503, "busy")
    assert LedgerEntry.objects.balance(account="cus_fk", currency="usd") == 100
    assert StripeEvent.objects.get().processed_at is not None


@pytest.mark.only_on(
    "mariadb",
    "mysql",
    reason="InnoDB's upsert and foreign-key locks; PostgreSQL and SQLite have neither problem.",
)
def test_a_duplicate_whose_read_raced_the_claim_does_not_wait_for_the_receivers(connect):
    # MySQL/MariaDB: a duplicate reads the row without a lock before its upsert.
    # When that read ran just before this delivery's claim, the upsert comes
    # after it, while the receivers hold the event's row through a foreign key.
    # An upsert that waited for that lock would deadlock the receivers' fenced
    # update; MariaDB's claim upsert does not wait: it fails at once, and the
    # claim reads again and answers busy.
    from stripe_idempotency import leases, outcomes
    from stripe_idempotency.backends.mysql import MySQLBackend
    from stripe_idempotency.events import IncomingEvent

    racing = []

    def raced_upsert(payload):
        backend = MySQLBackend(connections["default"])  # this thread's own connection
        event = IncomingEvent.from_payload(payload)
        params = backend.upsert_params(StripeEvent, event, uuid.uuid4(), claimed_by="racer", ttl=300)
        with backend.connection.cursor() as cursor:
            try:
                cursor.execute(backend.upsert_statement(StripeEvent), params)
            except OperationalError as exc:
                return exc.args[0]
            return "upserted"

    def credit_then_meet_the_upsert(sender, event, **kwargs):
        reference = event.event_id
        LedgerEntry.objects.credit(
            account="cus_race",
            amount=100,
            currency="usd",
            entry_type="payment",
            reference=reference,
            event=event,
        )
        thread, result = in_thread(lambda: raced_upsert(event.payload))
        thread.join(30)
        racing.append(result)
        # And the claim as a whole, while the row is held: busy, at once.
        thread, claimed = in_thread(lambda: leases.claim(IncomingEvent.from_payload(event.payload)))
        thread.join(30)
        racing.append(claimed)

    connect(event_received, credit_then_meet_the_upsert)
    event = build_event()
    response = deliver(Client(), event)

    assert (response.status_code, response.json()["status"]) == (200, "processed")
    [upsert_result], [claim_result] = racing
    assert upsert_result == 1205  # lock wait timeout, at once: it did not queue on the row
    assert isinstance(claim_result, outcomes.Busy)
    row = StripeEvent.objects.get()
    assert row.processed_at is not None
    assert row.attempts == 1
    assert LedgerEntry.objects.balance(account="cus_race", currency="usd") == 100
