"""The events table as the queue: ``"ENQUEUE": None`` stores an accepted event and nothing else,
and :func:`stripe_idempotency.worker.work` takes pending events, retries and due effects, in
batches no two workers share, through the one path."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from typing import Any

import psycopg
import pytest
from django.db import connection, connections, transaction
from django.db.models.functions import Now
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from stripe_idempotency import leases, processing, wakeup, worker
from stripe_idempotency.effects import effect
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import EventEffect, EventState, StripeEvent
from stripe_idempotency.outcomes import Accepted, Duplicate
from stripe_idempotency.signals import event_received, signal_for
from stripe_idempotency.testing import build_event
from tests.concurrency import PATIENCE_SECONDS, close_connections_and_pools, in_thread, wait_for
from tests.conftest import TYPE, per_backend
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

TABLE_QUEUE = {"WEBHOOK_SECRETS": ["whsec_test_secret"], "PROCESSING": "deferred", "ENQUEUE": None}
TABLE = override_settings(STRIPE_IDEMPOTENCY=TABLE_QUEUE)

#: The idempotency keys the effect below was run with, in order.
sent: list[str] = []


@effect(name="tests.worker.notify")
def notify(*, idempotency_key: str) -> None:
    sent.append(idempotency_key)


@pytest.fixture(autouse=True)
def _nothing_sent() -> None:
    sent.clear()


def accept(*ids: str, event_type: str = TYPE, **fields: Any) -> None:
    for event_id in ids:
        outcome = processing.accept(
            IncomingEvent.from_payload(build_event(event_type, id=event_id, **fields))
        )
        assert outcome == Accepted(event_id=event_id)


def runs() -> Counter[str]:
    """Receiver runs that committed, by event id (``record_effects``' ``received`` rows)."""
    return Counter(Effect.objects.filter(receiver="received").values_list("event_id", flat=True))


def states() -> dict[str, str]:
    return dict(StripeEvent.objects.with_state().values_list("event_id", "state"))


@TABLE
def test_with_no_queue_an_accepted_event_is_one_statement_and_nothing_is_queued(monkeypatch):
    monkeypatch.setattr("stripe_idempotency.queueing.enqueue", lambda *a: pytest.fail("queued"))
    event = IncomingEvent.from_payload(build_event(id="evt_table"))
    with CaptureQueriesContext(connection) as queries:
        assert processing.accept(event) == Accepted(event_id="evt_table")
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == per_backend(postgresql=1, mysql=1, sqlite=1), statements
    assert (
        statements[0]
        .lstrip()
        .upper()
        .startswith(per_backend(postgresql="WITH", mysql="INSERT", sqlite="INSERT"))
    )
    assert states() == {"evt_table": EventState.PENDING}
    # Delivered again while it waits: nothing more stored, still accepted; once processed, a duplicate.
    assert processing.accept(event) == Accepted(event_id="evt_table")
    assert worker.work(using="default").events == Counter(processed=1)
    assert processing.accept(event) == Duplicate(event_id="evt_table")


@TABLE
def test_the_insert_notifies_the_channel_when_it_commits_and_only_for_a_new_event():
    if not listens():
        # (only_on would fail the skip behind PgBouncer, where the pooled pass runs it too)
        pytest.skip("No LISTEN here: NOTIFY is PostgreSQL's, and a transaction pooler loses a LISTEN.")
    params = connection.get_connection_params()
    for django_only in ("cursor_factory", "context"):
        params.pop(django_only)
    with psycopg.connect(**params, autocommit=True) as listener:
        listener.execute(f"LISTEN {wakeup.CHANNEL}")
        accept("evt_notified")
        accept("evt_notified")  # stored already: no second notification
        heard = [(n.channel, n.payload) for n in listener.notifies(timeout=2)]
    assert heard == [(wakeup.CHANNEL, "evt_notified")]


@TABLE
def test_a_worker_processes_pending_events_oldest_first_once_each_then_exits(record_effects):
    accept("evt_1", "evt_2", "evt_3")
    order: list[str] = []

    worked = worker.work(using="default", batch_size=2, step=lambda done: order.append(done.row.event_id))

    assert order == ["evt_1", "evt_2", "evt_3"]
    assert (worked.events, worked.effects, worked.stopped) == (Counter(processed=3), Counter(), False)
    assert runs() == {"evt_1": 1, "evt_2": 1, "evt_3": 1}
    assert set(states().values()) == {EventState.PROCESSED}
    assert worker.work(using="default").handled == 0  # nothing left: processed events are left alone


@TABLE
def test_an_event_under_a_live_lease_is_left_to_its_holder(record_effects):
    leases.claim(IncomingEvent.from_payload(build_event(id="evt_held")))  # another process holds it
    accept("evt_free")
    assert worker.work(using="default").events == Counter(processed=1)
    assert runs() == {"evt_free": 1}
    assert states()["evt_held"] == EventState.CLAIMED


@TABLE
def test_stale_events_and_failed_ones_past_their_backoff_are_retried_but_not_dead_ones(connect):
    failing = {"evt_failed_due", "evt_backing_off", "evt_dead"}

    def fail(sender, event, **kwargs):
        if event.event_id in failing:
            raise RuntimeError("boom")

    connect(event_received, fail)
    for event_id in ("evt_stale", *sorted(failing)):
        processing.receive(IncomingEvent.from_payload(build_event(id=event_id)), mode="inline")
    # evt_stale: processed, then made a claim whose holder died (its lease ran out).
    StripeEvent.objects.filter(event_id="evt_stale").update(
        processed_at=None, claim_expires_at=Now() - dt.timedelta(seconds=1)
    )
    StripeEvent.objects.filter(event_id="evt_failed_due").update(
        next_attempt_at=Now() - dt.timedelta(seconds=1)
    )
    StripeEvent.objects.filter(event_id="evt_dead").update(attempts=20, next_attempt_at=None)
    failing.clear()
    assert states() == {
        "evt_stale": EventState.STALE,
        "evt_failed_due": EventState.FAILED,
        "evt_backing_off": EventState.FAILED,
        "evt_dead": EventState.DEAD,
    }

    ran = []
    worked = worker.work(using="default", step=lambda done: ran.append(done.row.event_id))

    assert sorted(ran) == ["evt_failed_due", "evt_stale"]
    assert worked.events == Counter(processed=2)
    assert states() == {
        "evt_stale": EventState.PROCESSED,
        "evt_failed_due": EventState.PROCESSED,
        "evt_backing_off": EventState.FAILED,
        "evt_dead": EventState.DEAD,
    }


@TABLE
def test_effects_of_the_events_it_runs_run_in_the_worker_and_due_ones_left_by_others_too(connect):
    def schedule(sender, event, **kwargs):
        notify.schedule(event)

    connect(signal_for(TYPE), schedule)
    accept("evt_with_effect")
    assert worker.work(using="default").effects == Counter()  # run by process(), not taken as due
    assert sent == ["evt_with_effect:tests.worker.notify:0"]
    # One another process committed and never ran (it died): due once its grace is over.
    processing.receive(IncomingEvent.from_payload(build_event(id="evt_orphan")), mode="inline")
    assert sent == ["evt_with_effect:tests.worker.notify:0"]  # scheduled, left to this process's threads
    from stripe_idempotency import effects

    effects.wait_for_runs()
    sent.clear()
    # As if neither run had happened: scheduled, never claimed.
    EventEffect.objects.update(completed_at=None, claimed_at=None, claimed_by="", attempts=0)
    assert worker.work(using="default").effects == Counter()  # within PENDING_GRACE_SECONDS
    EventEffect.objects.update(scheduled_at=Now() - dt.timedelta(hours=1))
    assert worker.work(using="default").effects == Counter(processed=2)
    assert sorted(sent) == ["evt_orphan:tests.worker.notify:0", "evt_with_effect:tests.worker.notify:0"]


@TABLE
def test_every_round_serves_every_kind_so_a_flood_of_new_events_starves_no_retry(record_effects, connect):
    failing = {"evt_retry"}

    def fail(sender, event, **kwargs):
        if event.event_id in failing:
            raise RuntimeError("boom")

    connect(event_received, fail)
    processing.receive(IncomingEvent.from_payload(build_event(id="evt_retry")), mode="inline")
    failing.clear()
    StripeEvent.objects.filter(event_id="evt_retry").update(next_attempt_at=Now() - dt.timedelta(seconds=1))
    accept(*(f"evt_new_{n}" for n in range(5)))
    order: list[str] = []

    worker.work(using="default", batch_size=1, step=lambda done: order.append(done.row.event_id))

    assert order[:3] == ["evt_new_0", "evt_retry", "evt_new_1"]  # a pending one, a retry, a pending one
    assert sorted(order) == sorted(["evt_retry", *(f"evt_new_{n}" for n in range(5))])


@TABLE
def test_a_stop_request_finishes_the_event_in_hand_and_gives_back_the_rest_untouched(connect):
    stop = threading.Event()

    def stop_on_first(sender, event, **kwargs):
        stop.set()  # SIGTERM arrives while this receiver runs

    connect(event_received, stop_on_first)
    accept("evt_a", "evt_b", "evt_c")
    worked = worker.work(using="default", batch_size=3, stop=stop, follow=True)

    assert (worked.events, worked.stopped) == (Counter(processed=1), True)
    rows = {
        e.event_id: (e.state, e.attempts, e.claimed_at, e.claimed_by, e.claim_token)
        for e in StripeEvent.objects.with_state()
    }
    assert rows["evt_a"][0] == EventState.PROCESSED
    # Taken with evt_a, never started: pending again, as if never claimed.
    assert rows["evt_b"] == rows["evt_c"] == (EventState.PENDING, 0, None, "", None)


@override_settings(STRIPE_IDEMPOTENCY={**TABLE_QUEUE, "CLAIM_TTL_SECONDS": 1})
def test_events_a_batch_would_reach_after_half_a_lease_are_given_back(connect):
    def slow(sender, event, **kwargs):
        time.sleep(0.6)  # past half the lease

    connect(event_received, slow)
    accept("evt_a", "evt_b")
    taken: list[int] = []
    real = leases.take_batch

    def counted(picked, **kwargs):
        token, rows = real(picked, **kwargs)
        taken.append(len(rows))
        return token, rows

    from unittest import mock

    with mock.patch.object(leases, "take_batch", counted):
        assert worker.work(using="default", batch_size=2).events == Counter(processed=2)
    # evt_b was given back (not left to run on a lease near its end) and taken again.
    assert [n for n in taken if n] == [2, 1]
    assert StripeEvent.objects.get(event_id="evt_b").attempts == 1


@override_settings(STRIPE_IDEMPOTENCY={**TABLE_QUEUE, "ORDERING": {TYPE: "serialize"}})
def test_events_about_one_object_in_one_batch_run_in_order_neither_giving_way_to_the_other(record_effects):
    accept("evt_first", "evt_second", data={"id": "cs_same", "object": "checkout.session"})
    assert set(StripeEvent.objects.values_list("object_id", flat=True)) == {"cs_same"}
    order: list[str] = []
    worked = worker.work(using="default", batch_size=2, step=lambda done: order.append(done.row.event_id))
    assert (order, worked.events) == (["evt_first", "evt_second"], Counter(processed=2))


@TABLE
def test_budgets_cap_the_rows_run_and_the_time_to_start_new_ones(record_effects):
    accept(*(f"evt_{n}" for n in range(5)))
    assert worker.work(using="default", max_items=2).events == Counter(processed=2)
    assert worker.work(using="default", max_items=10, batch_size=1).events == Counter(processed=3)
    accept("evt_late")
    assert worker.work(using="default", max_seconds=0.000001).handled == 0


@TABLE
def test_a_following_worker_picks_up_an_event_accepted_while_it_waits_and_stops_when_asked(record_effects):
    stop = threading.Event()
    hows: list[str] = []
    result: list[worker.Worked] = []
    thread = threading.Thread(
        target=lambda: result.append(
            _in_own_connection(
                lambda: worker.work(
                    using="default",
                    follow=True,
                    interval=PATIENCE_SECONDS * 5 if listens() else 0.05,
                    stop=stop,
                    waiting=lambda how: hows.append(how.how),
                )
            )
        )
    )
    thread.start()
    try:
        wait_for(lambda: hows, "the worker to wait")
        accept("evt_while_waiting")
        # Listening, the wait outlasts the test's patience: only the notification wakes it in time.
        wait_for(lambda: runs()["evt_while_waiting"] == 1, "the event to be processed")
    finally:
        stop.set()
        thread.join(120)
    assert not thread.is_alive()
    assert (result[0].events, result[0].stopped) == (Counter(processed=1), True)
    assert len(hows) == 1, hows  # said once, however many times it waited
    assert hows[0].startswith("LISTEN on" if listens() else "polling"), hows


def listens() -> bool:
    """Whether a following worker here is woken by NOTIFY: PostgreSQL, unless behind PgBouncer
    in transaction mode (``DISABLE_SERVER_SIDE_CURSORS``), where it polls."""
    return isinstance(wakeup.for_database("default", threading.Event()), wakeup.Listening)


def _in_own_connection(func):
    try:
        return func()
    finally:
        connections.close_all()


@pytest.mark.only_on("postgresql", "mariadb", "mysql", reason="SQLite has one writer: batches cannot overlap")
@pytest.mark.concurrency
@TABLE
def test_workers_taking_batches_at_once_never_share_a_row_and_leave_none(record_effects):
    ids = [f"evt_{n:04d}" for n in range(300)]
    accept(*ids)
    start = threading.Barrier(6)
    taken: list[list[str]] = []
    lock = threading.Lock()

    def one_worker() -> None:
        mine: list[str] = []
        start.wait()
        try:
            worker.work(using="default", batch_size=7, step=lambda done: mine.append(done.row.event_id))
        finally:
            connections.close_all()
            with lock:
                taken.append(mine)

    threads = [threading.Thread(target=one_worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    close_connections_and_pools()

    every = [event_id for mine in taken for event_id in mine]
    assert sorted(every) == ids  # each event run by exactly one worker, none skipped
    assert runs() == dict.fromkeys(ids, 1)
    assert sum(1 for mine in taken if mine) > 1  # the workers did share the work


@TABLE
def test_a_batch_claims_exactly_the_rows_its_query_picks(record_effects):
    accept(*(f"evt_{n}" for n in range(5)))
    token, rows = leases.take_batch(worker.pending_events("default").order_by("pk")[:2], using="default")
    assert [row.event_id for row in rows] == ["evt_0", "evt_1"]
    assert {row.claim_token for row in rows} == {token}
    assert states() == {
        "evt_0": EventState.CLAIMED,
        "evt_1": EventState.CLAIMED,
        "evt_2": EventState.PENDING,
        "evt_3": EventState.PENDING,
        "evt_4": EventState.PENDING,
    }
    assert StripeEvent.objects.filter(event_id__in=["evt_0", "evt_1"], attempts=1).count() == 2
    assert leases.give_back(StripeEvent, [row.pk for row in rows], token, using="default") == 2
    assert set(states().values()) == {EventState.PENDING}


@pytest.mark.only_on("postgresql", "mariadb", "mysql", reason="SQLite has one writer: no row is locked alone")
@pytest.mark.concurrency
@TABLE
def test_a_batch_skips_rows_another_worker_is_taking_instead_of_waiting_for_them(record_effects):
    accept(*(f"evt_{n}" for n in range(8)))
    first_three = list(StripeEvent.objects.order_by("pk").values_list("pk", flat=True)[:3])
    holding, release = threading.Event(), threading.Event()

    def another_worker_mid_claim() -> None:
        # Locks the three oldest rows, as another worker's pick does for the moment of its claim.
        with transaction.atomic():
            list(StripeEvent.objects.select_for_update().filter(pk__in=first_three))
            holding.set()
            release.wait(PATIENCE_SECONDS)

    holder, _ = in_thread(another_worker_mid_claim)
    try:
        assert holding.wait(PATIENCE_SECONDS)
        taker, taken = in_thread(
            lambda: leases.take_batch(worker.pending_events("default").order_by("pk")[:5], using="default")
        )
        # Taken while the three are still locked: the batch never waits for another's rows.
        wait_for(lambda: not taker.is_alive(), "the batch to be taken while the rows are held")
    finally:
        release.set()
        holder.join(PATIENCE_SECONDS)
    _token, rows = taken[0]
    assert [row.event_id for row in rows] == [f"evt_{n}" for n in range(3, 8)]
    assert states() == {
        **{f"evt_{n}": EventState.PENDING for n in range(3)},
        **{f"evt_{n}": EventState.CLAIMED for n in range(3, 8)},
    }
