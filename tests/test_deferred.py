"""Deferred processing: stored and acknowledged at once, processed by a task, nothing lost between."""

from __future__ import annotations

import datetime as dt
import logging
import socket
import subprocess
import sys
import threading
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.db.models.functions import Now
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from stripe_idempotency import processing
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import EventState, StripeEvent
from stripe_idempotency.outcomes import Accepted, Duplicate, Processed
from stripe_idempotency.queueing import tasks_framework
from stripe_idempotency.tasks import process_stripe_event
from stripe_idempotency.testing import build_event, deliver
from tests.concurrency import wait_for
from tests.conftest import per_backend
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

DEFERRED = override_settings(
    STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "PROCESSING": "deferred"}
)


@pytest.fixture
def queued():
    """The tasks queued so far (the dummy backend keeps them in memory), emptied per test."""
    backend = tasks_framework().task_backends["default"]
    backend.clear()
    yield backend.results
    backend.clear()


def run_queued(results) -> list[str]:
    """What a worker does with each task queued so far: call it with its arguments. A snapshot:
    a task that queues another (or the queue's own thread adding one) never extends the walk."""
    return [process_stripe_event.call(*result.args, **result.kwargs) for result in list(results)]


@DEFERRED
def test_a_delivery_is_acknowledged_before_any_receiver_runs(record_effects, queued):
    event = build_event(id="evt_deferred")
    response = deliver(Client(), event)
    assert (response.status_code, response.json()) == (
        200,
        {"status": "accepted", "event_id": "evt_deferred"},
    )
    row = StripeEvent.objects.with_state().get()
    assert (row.state, row.attempts, Effect.objects.count()) == (EventState.PENDING, 0, 0)
    assert [(r.args, r.task.name) for r in queued] == [(["evt_deferred", "default"], "process_stripe_event")]
    assert run_queued(queued) == ["processed"]
    assert Effect.objects.count() == 2  # event_received and the type's receiver, once
    assert StripeEvent.objects.get().processed_at is not None


@DEFERRED
def test_a_task_for_an_event_pruned_meanwhile_ends_quietly(record_effects, queued, caplog):
    caplog.set_level(logging.INFO, logger="stripe_idempotency")
    deliver(Client(), build_event(id="evt_pruned"))
    wait_for(lambda: list(queued), "the task to be queued")
    StripeEvent.objects.all().delete()
    caplog.clear()
    assert run_queued(queued) == ["missing"]
    assert [record for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert (StripeEvent.objects.count(), Effect.objects.count()) == (0, 0)


#: What the project's own ENQUEUE callable was handed, in order.
HANDED: list[tuple[str, str]] = []


def hand_to_the_project_s_queue(event_id: str, database: str) -> None:
    HANDED.append((event_id, database))


@override_settings(
    STRIPE_IDEMPOTENCY={
        "WEBHOOK_SECRETS": ["whsec_test_secret"],
        "PROCESSING": "deferred",
        "ENQUEUE": "tests.test_deferred.hand_to_the_project_s_queue",
    }
)
def test_enqueue_names_the_callable_that_queues_the_event_instead_of_django_tasks(queued):
    HANDED.clear()
    assert deliver(Client(), build_event(id="evt_own_queue")).json()["status"] == "accepted"
    wait_for(lambda: HANDED, "the project's queue to be handed the event")
    assert (HANDED, list(queued)) == ([("evt_own_queue", "default")], [])
    HANDED.clear()


@DEFERRED
def test_a_task_delivered_twice_runs_the_receivers_once(record_effects, queued):
    deliver(Client(), build_event(id="evt_twice"))
    assert run_queued(queued + queued) == ["processed", "duplicate"]
    assert Effect.objects.count() == 2


@DEFERRED
def test_stripes_retry_of_an_accepted_event_queues_it_again_and_of_a_processed_one_is_a_duplicate(
    record_effects, queued
):
    event = build_event(id="evt_retried")
    assert deliver(Client(), event).json()["status"] == "accepted"
    assert deliver(Client(), event).json()["status"] == "accepted"  # the first task may be lost
    assert len(queued) == 2
    assert run_queued(queued) == ["processed", "duplicate"]
    response = deliver(Client(), event)
    assert (response.status_code, response.json()["status"]) == (200, "duplicate")
    assert len(queued) == 2  # nothing queued for a processed event
    assert Effect.objects.count() == 2


def test_accept_returns_the_outcome_and_one_statement_stores_a_new_event(queued):
    event = IncomingEvent.from_payload(build_event(id="evt_counted"))
    with CaptureQueriesContext(connection) as queries:
        assert processing.accept(event) == Accepted(event_id="evt_counted")
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == per_backend(postgresql=1, mysql=1, sqlite=1), statements
    assert statements[0].lstrip().upper().startswith("INSERT")
    run_queued(queued)
    assert processing.accept(event) == Duplicate(event_id="evt_counted")


class RefusingBackend(tasks_framework().backends.base.BaseTaskBackend):
    """A queue whose broker is down: every enqueue raises, as a broker client does."""

    def enqueue(self, task, args, kwargs):
        raise ConnectionError("broker unreachable")


@override_settings(
    STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "PROCESSING": "deferred"},
    TASKS={"default": {"BACKEND": "tests.test_deferred.RefusingBackend"}},
)
def test_a_queue_that_refuses_the_task_loses_nothing_the_reaper_takes_it_after_the_grace(
    record_effects, caplog
):
    caplog.set_level(logging.ERROR, logger="stripe_idempotency")
    response = deliver(Client(), build_event(id="evt_unqueued"))
    assert response.json()["status"] == "accepted"  # the row is committed: Stripe may stop
    assert [r.getMessage() for r in caplog.records] == [
        "Could not queue Stripe event evt_unqueued for processing; the reaper will take it."
    ]
    assert reap() == ""  # within the grace period the task may still come
    StripeEvent.objects.update(received_at=Now() - dt.timedelta(seconds=61))
    out = StringIO()
    call_command("reap_stale_claims", stdout=out, no_color=True)
    assert "evt_unqueued checkout.session.completed age 1m" in out.getvalue()
    assert "attempts 0: accepted, never claimed (no task ran it)" in out.getvalue()
    assert "Reprocessed evt_unqueued" in reap()
    assert Effect.objects.count() == 2
    assert StripeEvent.objects.get().processed_at is not None


@override_settings(
    STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_test_secret"], "PROCESSING": "deferred"},
    TASKS={"default": {"BACKEND": "tests.test_deferred.RefusingBackend"}},
)
def test_the_readme_s_cron_line_takes_a_lost_task_s_event_once_it_is_older_than_min_age(record_effects):
    # The README's cron line, `--min-age 300`: an accepted event never claimed is aged from its
    # arrival (it has no claim to age from). Both past the pending grace (60 s); far enough on
    # either side of 300 s that no pause of the machine moves one across.
    for event_id in ("evt_lost_long_ago", "evt_lost_lately"):
        assert deliver(Client(), build_event(id=event_id)).json()["status"] == "accepted"
    StripeEvent.objects.filter(event_id="evt_lost_long_ago").update(
        received_at=Now() - dt.timedelta(seconds=400)
    )
    StripeEvent.objects.filter(event_id="evt_lost_lately").update(
        received_at=Now() - dt.timedelta(seconds=200)
    )
    out = StringIO()
    call_command("reap_stale_claims", "--reprocess", "--min-age", "300", "-v", "0", stdout=out, no_color=True)
    processed = StripeEvent.objects.filter(processed_at__isnull=False).values_list("event_id", flat=True)
    assert list(processed) == ["evt_lost_long_ago"]
    assert Effect.objects.filter(event_id="evt_lost_lately").count() == 0


def reap() -> str:
    out = StringIO()
    call_command("reap_stale_claims", "--reprocess", "-v", "1", stdout=out, no_color=True)
    lines = [line for line in out.getvalue().splitlines() if line.startswith("Reprocessed")]
    return "\n".join(lines)


def test_inline_mode_is_the_default(record_effects):
    response = deliver(Client(), build_event())
    assert response.json()["status"] == "processed"
    assert Effect.objects.count() == 2


def test_receive_takes_an_event_as_the_processing_mode_says(record_effects, queued):
    event = IncomingEvent.from_payload(build_event(id="evt_received"))
    with DEFERRED:
        assert processing.receive(event) == Accepted(event_id="evt_received")
    assert Effect.objects.count() == 0
    # The task, the reaper and a replay claim and process, whatever the mode.
    with DEFERRED:
        outcome = processing.reprocess(StripeEvent.objects.get())
    assert isinstance(outcome, Processed)
    assert processing.receive(event, mode="deferred") == Duplicate(event_id="evt_received")
    assert Effect.objects.count() == 2


class SilentBroker:
    """A broker that accepts connections and never answers: what a stopped (SIGSTOP) or
    black-holed Redis looks like to a client, the kernel completing each handshake."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                accepted, _ = self.listener.accept()
            except OSError:  # closed
                return
            self.accepted.append(accepted)

    def close(self) -> None:
        # The hung publish sees its connection end, and gives its thread back. The accepting
        # thread is stopped first, so no connection it accepts is left open behind the loop.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join()
        for accepted in self.accepted:
            accepted.close()


@pytest.fixture
def silent_redis():
    from celery import Celery, current_app

    previous = current_app._get_current_object()
    broker = SilentBroker()
    app = Celery("silent_redis", broker=f"redis://127.0.0.1:{broker.port}/0")
    # The default of every thread: the task is published from the queue's own thread.
    app.set_default()
    app.set_current()
    yield broker
    broker.close()
    app.close()
    previous.set_default()
    previous.set_current()


def test_a_broker_that_never_answers_holds_no_delivery_past_its_deadline(silent_redis, settings, caplog):
    settings.STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": ["whsec_test_secret"],
        "PROCESSING": "deferred",
        "ENQUEUE": "stripe_idempotency.contrib.celery.enqueue",
        "ENQUEUE_TIMEOUT_SECONDS": 1,
    }
    answers = []

    def deliver_and_close() -> None:
        try:
            answers.append(deliver(Client(), build_event(id="evt_hung_broker")))
        finally:
            connections.close_all()  # this thread's own, as a server closes a request's

    delivery = threading.Thread(target=deliver_and_close, daemon=True)
    delivery.start()
    # Not a measure of speed: without the deadline the delivery waits for ever.
    delivery.join(timeout=120)
    assert answers, "the delivery was still waiting for the broker after 120 s"
    [response] = answers
    assert (response.status_code, response.json()) == (
        200,
        {"status": "accepted", "event_id": "evt_hung_broker"},
    )
    assert silent_redis.accepted, "the publish never reached the broker"
    row = StripeEvent.objects.with_state().get()
    assert (row.event_id, row.state) == ("evt_hung_broker", EventState.PENDING)  # the reaper's to take
    [line] = [r for r in caplog.records if getattr(r, "code", None) == "enqueue_timeout"]
    assert (line.levelname, line.event_id, line.outcome) == ("WARNING", "evt_hung_broker", "not_queued")
    assert line.getMessage() == (
        "The queue did not take Stripe event evt_hung_broker within 1 s; answered accepted, "
        "the reaper will take it."
    )


EXITS_WITH_A_HUNG_PUBLISH = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
import django
django.setup()
from celery import Celery
from django.conf import settings
from stripe_idempotency import queueing

app = Celery("silent_redis", broker=f"redis://127.0.0.1:{sys.argv[1]}/0")
app.set_default()
app.set_current()
settings.STRIPE_IDEMPOTENCY = {
    **settings.STRIPE_IDEMPOTENCY,
    "ENQUEUE": "stripe_idempotency.contrib.celery.enqueue",
    "ENQUEUE_TIMEOUT_SECONDS": 1,
}
print(queueing.enqueue("evt_hung_at_exit", "default"))
"""


def test_a_publish_hung_on_the_broker_does_not_hold_the_process_at_exit():
    # A cron command or a server worker shutting down: its hung publish must not keep it alive.
    broker = SilentBroker()
    try:
        done = subprocess.run(
            [sys.executable, "-c", EXITS_WITH_A_HUNG_PUBLISH, str(broker.port)],
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=120,  # not a measure: a process held at exit never ends while the broker lives
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process was still alive 120 s on: its hung publish held it at exit")
    finally:
        broker.close()
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr[-3000:]
    assert broker.accepted, "the publish never reached the broker"
