"""Effects: stored in the receivers' transaction, run once past the commit, under a claim of their own."""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest.mock import ANY

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import OperationalError
from django.db.models.functions import Now
from django.test import Client
from django.urls import reverse

from stripe_idempotency import effects, leases, processing, retention, tasks
from stripe_idempotency.effects import EffectOutsideDispatch, effect
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import EventEffect, EventState, StripeEvent
from stripe_idempotency.outcomes import Failed, Processed
from stripe_idempotency.signals import effect_dead, effect_failed, signal_for
from stripe_idempotency.testing import build_event, deliver, encode, sign
from tests.concurrency import in_thread
from tests.conftest import TYPE
from tests.settings import WEBHOOK_SECRET

pytestmark = pytest.mark.django_db(transaction=True)

#: What the effects below were called with, in call order: (name, idempotency_key, arguments).
calls: list[tuple[str, str, dict[str, Any]]] = []
#: Exceptions the failing effect raises, one per run, until none is left.
failures: list[Exception] = []


@effect
def send_receipt(*, order: int, idempotency_key: str) -> None:
    calls.append(("send_receipt", idempotency_key, {"order": order}))


@effect(name="tests.flaky", max_attempts=2)
def flaky(*, idempotency_key: str) -> None:
    calls.append(("flaky", idempotency_key, {}))
    if failures:
        raise failures.pop(0)


@pytest.fixture(autouse=True)
def _fresh_calls() -> None:
    calls.clear()
    failures.clear()


def incoming(event_type: str = TYPE, **fields: Any) -> IncomingEvent:
    return IncomingEvent.from_payload(build_event(event_type, **fields))


def processed_with(connect: Any, receiver: Any, event: IncomingEvent | None = None) -> Any:
    """``event`` (a new one by default) processed with ``receiver`` on its type; effects run here."""
    connect(signal_for(TYPE), receiver)
    with effects.run_in_this_thread():
        return processing.receive(event or incoming())


def test_an_effect_is_stored_with_the_receivers_work_and_run_once_after_the_commit(connect):
    seen_inside: list[int] = []

    def fulfil(sender, event, **kwargs):
        row = send_receipt.schedule(event, order=7)
        seen_inside.append(EventEffect.objects.filter(pk=row.pk, completed_at__isnull=True).count())

    outcome = processed_with(connect, fulfil)
    assert isinstance(outcome, Processed)
    event_id = outcome.event.event_id
    assert seen_inside == [1]  # stored in the transaction, not yet run
    assert calls == [("send_receipt", f"{event_id}:tests.test_effects.send_receipt:0", {"order": 7})]
    row = EventEffect.objects.get()
    assert (row.event_id, row.name, row.key, row.arguments) == (
        outcome.event.pk,
        "tests.test_effects.send_receipt",
        "0",
        {"order": 7},
    )
    assert (row.attempts, row.claim_token, row.claim_expires_at, row.last_error) == (1, None, None, "")
    assert row.completed_at is not None
    assert EventEffect.objects.with_state().get().state == EventState.PROCESSED


def test_keys_count_the_schedules_of_each_effect_in_the_dispatch_or_are_given(connect):
    def fulfil(sender, event, **kwargs):
        send_receipt.schedule(event, order=1)
        flaky.schedule(event)
        send_receipt.schedule(event, order=2)
        send_receipt.schedule(event, key="copy-to-accounts", order=3)
        send_receipt.schedule(event, order=4)

    event_id = processed_with(connect, fulfil).event.event_id
    keys = sorted(EventEffect.objects.values_list("idempotency_key", flat=True))
    name = "tests.test_effects.send_receipt"
    assert keys == sorted(
        [
            f"{event_id}:{name}:0",
            f"{event_id}:{name}:1",
            f"{event_id}:{name}:2",
            f"{event_id}:{name}:copy-to-accounts",
            f"{event_id}:tests.flaky:0",
        ]
    )
    assert sorted(call[2].get("order", 0) for call in calls) == [0, 1, 2, 3, 4]


def test_a_rolled_back_attempt_leaves_no_effect_and_the_retry_schedules_under_the_same_keys(connect):
    attempts: list[int] = []

    def fulfil_then_fail_once(sender, event, **kwargs):
        send_receipt.schedule(event, order=5)
        attempts.append(1)
        if len(attempts) == 1:
            raise RuntimeError("the warehouse is down")

    event = incoming()
    first = processed_with(connect, fulfil_then_fail_once, event)
    assert isinstance(first, Failed)
    assert EventEffect.objects.count() == 0
    assert calls == []
    second = processed_with(connect, lambda *a, **k: None, event)  # Stripe's retry
    assert isinstance(second, Processed)
    assert calls == [("send_receipt", f"{event.id}:tests.test_effects.send_receipt:0", {"order": 5})]
    assert EventEffect.objects.get().completed_at is not None


def test_schedule_outside_the_dispatch_of_its_event_is_refused(connect):
    with pytest.raises(EffectOutsideDispatch) as outside:
        send_receipt.schedule(StripeEvent(event_id="evt_x", type=TYPE, payload={}), order=1)
    assert str(outside.value) == (
        "schedule() is called by a receiver of the event, while it runs: the effect is stored "
        "in the receivers' transaction, so it exists only if their work commits."
    )
    other = processing.receive(incoming())
    assert isinstance(other, Processed)
    errors: list[BaseException] = []

    def for_another_event(sender, event, **kwargs):
        try:
            send_receipt.schedule(other.event, order=1)
        except EffectOutsideDispatch as error:
            errors.append(error)

    def with_its_payload(sender, event, **kwargs):
        try:
            send_receipt.schedule(event.payload, order=1)
        except TypeError as error:
            errors.append(error)

    connect(signal_for(TYPE), with_its_payload)
    running = processed_with(connect, for_another_event).event.event_id
    assert [str(error) for error in errors] == [
        "schedule() takes the event a receiver is given (a StripeEvent), not dict.",
        f"schedule() names '{other.event.event_id}', but the receivers running are {running}'s: "
        "an effect belongs to the event being dispatched.",
    ]
    assert EventEffect.objects.count() == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"order": datetime(2026, 1, 1, tzinfo=UTC)}, "must be JSON values"),
        ({"order": "a\x00b"}, "NUL"),
        ({"order": float("nan")}, "NaN"),
        ({"order": 1, "colour": "red"}, "cannot be run with these arguments"),
        ({}, "cannot be run with these arguments"),
        ({"order": 1, "idempotency_key": "mine"}, "given by the app"),
        ({"order": 1, "key": ""}, "key is 1 to 100 characters"),
        ({"order": 1, "key": "k" * 101}, "key is 1 to 100 characters"),
        ({"order": 1, "key": "a\x00b"}, "key is 1 to 100 characters"),
    ],
)
def test_arguments_an_effect_cannot_run_with_fail_the_delivery_and_store_nothing(connect, arguments, message):
    def fulfil(sender, event, **kwargs):
        send_receipt.schedule(event, **arguments)

    outcome = processed_with(connect, fulfil)
    assert isinstance(outcome, Failed)
    assert "InvalidEffect" in outcome.error
    assert message in outcome.error
    assert EventEffect.objects.count() == 0
    assert StripeEvent.objects.get().processed_at is None


def test_one_key_scheduled_twice_in_a_dispatch_is_refused(connect):
    def fulfil(sender, event, **kwargs):
        send_receipt.schedule(event, key="receipt", order=1)
        send_receipt.schedule(event, key="receipt", order=2)

    outcome = processed_with(connect, fulfil)
    assert isinstance(outcome, Failed)
    assert "scheduled twice" in outcome.error
    assert EventEffect.objects.count() == 0


def test_an_idempotency_key_past_its_column_is_refused(connect):
    def fulfil(sender, event, **kwargs):
        send_receipt.schedule(event, key="k" * 100, order=1)

    outcome = processed_with(connect, fulfil, incoming(id="evt_" + "x" * 150))
    assert isinstance(outcome, Failed)
    assert "longer than 255 characters" in outcome.error


def test_effects_are_named_by_module_and_qualname_or_by_name_and_must_take_the_key():
    assert send_receipt.name == "tests.test_effects.send_receipt"
    assert effects.registered("tests.flaky") is flaky
    assert send_receipt(order=3, idempotency_key="direct") is None  # still a plain function
    assert calls == [("send_receipt", "direct", {"order": 3})]
    with pytest.raises(ImproperlyConfigured, match="must take the keyword argument idempotency_key"):
        effect(lambda *, order: None)
    with pytest.raises(ImproperlyConfigured, match=r"Two effects are named 'tests\.flaky'"):
        effect(name="tests.flaky")(lambda *, idempotency_key: None)
    with pytest.raises(ImproperlyConfigured, match="without ':'"):
        effect(name="a:b")(lambda *, idempotency_key: None)
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        effect(name="tests.never", max_attempts=0)(lambda *, idempotency_key: None)


def test_a_failed_run_backs_off_is_retried_and_is_dead_after_max_attempts(connect, settings):
    settings.STRIPE_IDEMPOTENCY = {**settings.STRIPE_IDEMPOTENCY, "PENDING_GRACE_SECONDS": 0}
    failed: list[tuple[str, str]] = []
    dead: list[str] = []
    connect(effect_failed, lambda sender, effect, error, **kw: failed.append((effect.idempotency_key, error)))
    connect(
        effect_dead,
        lambda sender, effect, **kw: dead.append(effect.idempotency_key if sender is EventEffect else "?"),
    )
    failures.extend([ConnectionError("smtp down"), ConnectionError("smtp still down")])

    outcome = processed_with(connect, lambda sender, event, **kw: flaky.schedule(event))
    assert isinstance(outcome, Processed)  # the event's answer does not depend on its effects
    row = EventEffect.objects.with_state().get()
    key = row.idempotency_key
    assert (row.state, row.attempts, row.max_attempts) == (EventState.FAILED, 1, 2)
    assert "ConnectionError: smtp down" in row.last_error
    assert failed == [(key, row.last_error)]
    assert dead == []
    # Waiting out its backoff (half of RETRY_HORIZON_SECONDS: the first of one retry's delays).
    assert EventEffect.objects.due().count() == 0
    assert effects.run_due(using="default") == {}
    EventEffect.objects.update(next_attempt_at=Now())
    assert effects.run_due(using="default") == {"dead": 1}
    row = EventEffect.objects.with_state().get()
    assert (row.state, row.attempts) == (EventState.DEAD, 2)
    assert [k for k, _ in failed] == [key, key]
    assert dead == [key]
    assert effects.run_due(using="default") == {}  # dead: nothing runs it by itself
    assert effects.run(row) == "busy"
    assert effects.run(row, dead_too=True) == "processed"  # the admin's action
    assert len(calls) == 3


def test_a_run_whose_lease_was_taken_over_is_not_recorded(connect, monkeypatch, caplog):
    taken: list[Any] = []
    monkeypatch.setattr(effects, "start", lambda rows: None)  # run below, by the test

    @effect(name="tests.slow")
    def slow(*, idempotency_key: str) -> None:
        calls.append(("slow", idempotency_key, {}))
        if len(calls) == 1:  # the first run outlives its lease, and another run takes the effect
            EventEffect.objects.update(claim_expires_at=Now())
            thread, result = in_thread(
                lambda: leases.take(EventEffect, EventEffect.objects.get().pk, using="default")
            )
            thread.join(30)
            taken.extend(result)

    outcome = processed_with(connect, lambda sender, event, **kw: slow.schedule(event))
    assert isinstance(outcome, Processed)
    assert effects.run(EventEffect.objects.get()) == "fenced"
    row = EventEffect.objects.get()
    [line] = [r for r in caplog.records if getattr(r, "effect", None) == row.idempotency_key]
    assert (line.levelname, line.outcome, line.getMessage()) == (
        "WARNING",
        "fenced",
        f"Effect {row.idempotency_key} ran past its lease and another run took it over; "
        "this run is not recorded.",
    )
    assert taken[0] is not None
    assert row.claim_token == taken[0]
    assert row.completed_at is None
    assert effects.run(row) == "busy"


def test_two_runs_of_one_effect_at_once_call_it_once(connect):
    """Real concurrency: the second run starts while the first is inside the effect."""
    inside, released = threading.Event(), threading.Event()

    @effect(name="tests.held")
    def held(*, idempotency_key: str) -> None:
        calls.append(("held", idempotency_key, {}))
        inside.set()
        assert released.wait(60), "the second run never returned"

    def fulfil(sender, event, **kwargs):
        held.schedule(event)

    connect(signal_for(TYPE), fulfil)
    effects_started = processing.receive(incoming())  # its effect runs on this process's threads
    assert isinstance(effects_started, Processed)
    assert inside.wait(60), "the effect never started"
    second = effects.run(EventEffect.objects.get())
    released.set()
    assert effects.wait_for_runs(60)
    assert second == "busy"
    assert [c[0] for c in calls] == ["held"]
    assert EventEffect.objects.get().completed_at is not None


def test_the_answer_to_stripe_does_not_wait_for_the_effect(connect):
    """The effect blocks until the test has its answer: an answer that waited for it would time
    out the effect's wait and find it finished."""
    answered = threading.Event()
    finished_before_the_answer: list[bool] = []

    @effect(name="tests.after_the_answer")
    def after_the_answer(*, idempotency_key: str) -> None:
        finished_before_the_answer.append(not answered.wait(60))

    connect(signal_for(TYPE), lambda sender, event, **kw: after_the_answer.schedule(event))
    body = encode(build_event(TYPE))
    response = Client().post(
        reverse("stripe_idempotency:webhook"),
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": sign(body, WEBHOOK_SECRET)},
    )
    answered.set()
    assert response.status_code == 200
    assert response.json()["status"] == "processed"
    assert effects.wait_for_runs(60)
    assert finished_before_the_answer == [False]
    assert EventEffect.objects.get().completed_at is not None


def test_deliver_returns_once_the_deliverys_effects_have_run(connect, client):
    connect(signal_for(TYPE), lambda sender, event, **kw: send_receipt.schedule(event, order=9))
    response = deliver(client, build_event(TYPE))
    assert response.json()["status"] == "processed"
    assert [c[2] for c in calls] == [{"order": 9}]
    assert EventEffect.objects.get().completed_at is not None


def test_an_effect_its_process_never_ran_is_run_by_the_reaper(connect, monkeypatch, settings, capsys):
    settings.STRIPE_IDEMPOTENCY = {**settings.STRIPE_IDEMPOTENCY, "PENDING_GRACE_SECONDS": 0}
    monkeypatch.setattr(effects, "start", lambda rows: None)  # the process died after the COMMIT
    connect(signal_for(TYPE), lambda sender, event, **kw: send_receipt.schedule(event, order=4))
    assert isinstance(processing.receive(incoming()), Processed)
    assert EventEffect.objects.pending().count() == 1
    assert calls == []
    call_command("reap_stale_claims", "--reprocess")
    assert "Effects run: 1 processed, 0 failed, 0 dead" in capsys.readouterr().out
    assert [c[2] for c in calls] == [{"order": 4}]
    assert EventEffect.objects.processed().count() == 1


def test_a_run_that_died_holding_its_lease_is_run_again_once_the_lease_is_gone(connect, monkeypatch):
    monkeypatch.setattr(effects, "start", lambda rows: None)
    connect(signal_for(TYPE), lambda sender, event, **kw: send_receipt.schedule(event, order=4))
    processing.receive(incoming())
    row = EventEffect.objects.get()
    assert leases.take(EventEffect, row.pk, using="default") is not None  # then the process died
    assert effects.run_due(using="default") == {}  # its lease is live
    EventEffect.objects.update(claim_expires_at=Now())
    assert EventEffect.objects.stale().count() == 1
    assert effects.run_due(using="default") == {"processed": 1}
    assert EventEffect.objects.get().attempts == 2


def test_the_deferred_task_runs_its_events_effects_in_its_own_thread(connect, settings):
    settings.STRIPE_IDEMPOTENCY = {
        **settings.STRIPE_IDEMPOTENCY,
        "PROCESSING": "deferred",
        "ENQUEUE": "tests.test_deferred.hand_to_the_project_s_queue",
    }
    connect(signal_for(TYPE), lambda sender, event, **kw: send_receipt.schedule(event, order=6))
    event = incoming()
    processing.receive(event)
    assert tasks.process(event.id, "default") == "processed"
    assert [c[2] for c in calls] == [{"order": 6}]  # before the task returned


def test_a_forced_replay_schedules_nothing_already_scheduled(connect):
    def fulfil(sender, event, **kwargs):
        send_receipt.schedule(event, order=8)

    outcome = processed_with(connect, fulfil)
    with effects.run_in_this_thread():
        replayed = processing.replay(StripeEvent.objects.get(), force=True)
    assert isinstance(replayed, Processed)
    assert EventEffect.objects.count() == 1
    assert [c[2] for c in calls] == [{"order": 8}]
    assert outcome.event.event_id in EventEffect.objects.get().idempotency_key


def test_pruning_keeps_an_event_whose_effects_are_not_all_completed_and_deletes_completed_ones(connect):
    failures.append(RuntimeError("not yet"))

    def fulfil(sender, event, **kwargs):
        if event.payload["data"]["object"].get("metadata", {}).get("flaky"):
            flaky.schedule(event)
        else:
            send_receipt.schedule(event, order=1)

    connect(signal_for(TYPE), fulfil)
    with effects.run_in_this_thread():
        done = processing.receive(incoming())
        waiting = processing.receive(incoming(data={"metadata": {"flaky": "yes"}}))
    StripeEvent.objects.update(processed_at=datetime(2020, 1, 1, tzinfo=UTC))
    pruned = retention.prune(using="default", before=datetime(2021, 1, 1, tzinfo=UTC))
    assert pruned.deleted == 1
    assert list(StripeEvent.objects.values_list("event_id", flat=True)) == [waiting.event.event_id]
    assert list(EventEffect.objects.values_list("name", flat=True)) == ["tests.flaky"]
    assert done.event.event_id not in str(list(EventEffect.objects.values_list("idempotency_key", flat=True)))


def test_the_events_admin_page_lists_its_effects_and_the_effects_action_runs_a_dead_one(connect, client):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw"))
    failures.extend([RuntimeError("mailbox full"), RuntimeError("mailbox still full")])
    outcome = processed_with(connect, lambda sender, event, **kw: flaky.schedule(event))
    EventEffect.objects.update(next_attempt_at=Now())
    assert effects.run_due(using="default") == {"dead": 1}

    page = client.get(reverse("admin:stripe_idempotency_stripeevent_change", args=[outcome.event.pk]))
    html = page.content.decode()
    assert page.status_code == 200
    assert "tests.flaky" in html
    assert re.search(r'<td class="field-state">\s*<p>dead</p>', html)
    assert "RuntimeError: mailbox still full" in html

    row = EventEffect.objects.get()
    response = client.post(
        reverse("admin:stripe_idempotency_eventeffect_changelist"),
        {"action": "run_selected", "_selected_action": [row.pk]},
        follow=True,
    )
    assert [str(m) for m in response.context["messages"]] == [f"Ran: {row.idempotency_key}."]
    assert EventEffect.objects.processed().count() == 1
    listed = client.get(reverse("admin:stripe_idempotency_eventeffect_changelist"), {"state": "processed"})
    assert [e.pk for e in listed.context["cl"].result_list] == [row.pk]


def test_an_effect_the_database_stops_from_running_is_logged_and_left_to_the_reaper(
    connect, monkeypatch, caplog
):
    def connection_lost(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(leases, "take", connection_lost)  # the claim's statement fails
    outcome = processed_with(connect, lambda sender, event, **kw: send_receipt.schedule(event, order=2))
    assert isinstance(outcome, Processed)  # the event's answer stands
    assert calls == []
    assert EventEffect.objects.pending().count() == 1
    key = EventEffect.objects.get().idempotency_key
    [line] = [r for r in caplog.records if "Could not run effect" in r.getMessage()]
    assert (line.levelname, line.effect, line.outcome) == ("ERROR", key, "not_run")
    assert line.getMessage() == (
        f"Could not run effect {key} after its event's commit; it is stored, and the reaper runs it."
    )
    monkeypatch.undo()
    assert effects.run(EventEffect.objects.get()) == "processed"


def test_each_effect_costs_one_insert_to_schedule_and_a_claim_and_a_fenced_update_to_run(connect):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def statements_of(receiver: Any) -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            processed_with(connect, receiver)
        return [q["sql"].split()[0].upper() for q in queries if "eventeffect" in q["sql"].lower()]

    assert statements_of(lambda sender, event, **kw: None) == []
    two = statements_of(lambda sender, event, **kw: [send_receipt.schedule(event, order=n) for n in (1, 2)])
    assert two == ["INSERT", "INSERT", "UPDATE", "UPDATE", "UPDATE", "UPDATE"]


def test_each_failed_run_is_one_error_line_with_the_effect_and_the_last_one_says_dead(connect, caplog):
    failures.extend([ConnectionError("smtp down"), ConnectionError("smtp still down")])
    processed_with(connect, lambda sender, event, **kw: flaky.schedule(event))
    EventEffect.objects.update(next_attempt_at=Now())
    effects.run_due(using="default")
    key = EventEffect.objects.get().idempotency_key
    lines = [
        (r.levelname, r.getMessage(), r.effect, r.outcome, r.attempts, r.exc_info[1])
        for r in caplog.records
        if getattr(r, "effect", None) == key
    ]
    assert lines == [
        ("ERROR", f"Effect {key} failed (run 1 of 2); it will be retried.", key, "failed", 1, ANY),
        (
            "ERROR",
            f"Effect {key} failed (run 2 of 2); it is dead: nothing runs it again by itself.",
            key,
            "dead",
            2,
            ANY,
        ),
    ]
    assert [str(line[5]) for line in lines] == ["smtp down", "smtp still down"]


def test_an_effect_is_its_function_to_call_and_to_read():
    def notify(channel: str, *, idempotency_key: str) -> str:
        """Post to a channel."""
        return f"{channel}:{idempotency_key}"

    made = effect(name="tests.notify")(notify)
    assert made("ops", idempotency_key="k") == "ops:k"  # positional arguments pass through
    assert (made.__name__, made.__doc__, made.__wrapped__) == ("notify", "Post to a channel.", notify)
    assert repr(made) == "<Effect tests.notify>"


@pytest.mark.parametrize(
    ("name", "refused"),
    [("", True), ("n" * 200, False), ("n" * 201, True), ("shop:mail", True), ("shop.mail", False)],
)
def test_an_effect_s_name_is_1_to_200_characters_without_a_colon(name, refused):
    def register() -> Any:  # effect(name="") would name it by its function: the class itself
        return effects.Effect(lambda *, idempotency_key: None, name=name, max_attempts=None)

    if refused:
        with pytest.raises(ImproperlyConfigured, match="1 to 200 characters without ':'"):
            register()
    else:
        assert register().name == name


def test_max_attempts_is_the_effect_s_own_down_to_one(connect, settings):
    failures.extend([RuntimeError("once")])

    @effect(name="tests.once", max_attempts=1)
    def once(*, idempotency_key: str) -> None:
        if failures:
            raise failures.pop()

    assert once.max_attempts == 1
    assert effect(name="tests.default_attempts")(lambda *, idempotency_key: None).max_attempts == 20
    settings.STRIPE_IDEMPOTENCY = {**settings.STRIPE_IDEMPOTENCY, "MAX_ATTEMPTS": 7}
    assert effects.registered("tests.default_attempts").max_attempts == 7  # read when scheduled
    processed_with(connect, lambda sender, event, **kw: once.schedule(event))
    row = EventEffect.objects.with_state().get()
    assert (row.max_attempts, row.attempts, row.state) == (1, 1, EventState.DEAD)


def test_a_failure_backs_off_over_the_effect_s_own_attempts_and_the_signals_name_it(connect, settings):
    settings.STRIPE_IDEMPOTENCY = {**settings.STRIPE_IDEMPOTENCY, "RETRY_HORIZON_SECONDS": 3600}
    signalled: list[tuple[Any, str, str]] = []
    connect(
        effect_failed,
        lambda sender, effect, error, **kw: signalled.append((sender, effect.last_error, error)),
    )
    failures.append(ConnectionError("smtp down"))
    processed_with(connect, lambda sender, event, **kw: flaky.schedule(event))
    row = EventEffect.objects.get()
    # flaky's max_attempts is 2: its one retry waits the whole horizon (MAX_ATTEMPTS' 19 retries
    # would start at 3600 / (2**19 - 1) s).
    waits = (row.next_attempt_at - row.claimed_at).total_seconds()
    assert 3590 < waits < 3610
    [(sender, last_error, error)] = signalled
    assert sender is EventEffect
    assert last_error == error == row.last_error


def test_a_run_that_fails_after_its_lease_was_taken_over_is_fenced_and_records_nothing(connect, monkeypatch):
    late: list[int] = []

    @effect(name="tests.fails_late")
    def fails_late(*, idempotency_key: str) -> None:
        late.append(1)
        if len(late) > 1:
            raise RuntimeError("on time, and failing")
        EventEffect.objects.update(claim_expires_at=Now())  # outlived its lease
        thread, _ = in_thread(lambda: leases.take(EventEffect, EventEffect.objects.get().pk, using="default"))
        thread.join(30)
        raise RuntimeError("too late")

    monkeypatch.setattr(effects, "start", lambda rows: None)  # run below, by the test
    processed_with(connect, lambda sender, event, **kw: fails_late.schedule(event))
    assert effects.run(EventEffect.objects.get()) == "fenced"
    row = EventEffect.objects.get()
    assert (row.attempts, row.last_error) == (2, "")  # the taker's claim stands, no error recorded
    EventEffect.objects.update(claim_expires_at=Now())
    assert effects.run(row) == "failed"  # and a plain failure says so


def test_an_effect_no_process_registered_fails_with_the_reason(connect, monkeypatch):
    monkeypatch.setattr(effects, "start", lambda rows: None)
    processed_with(connect, lambda sender, event, **kw: send_receipt.schedule(event, order=1))
    EventEffect.objects.update(name="shop.renamed_since")
    assert effects.run(EventEffect.objects.get()) == "failed"
    assert EventEffect.objects.get().last_error.strip().splitlines()[-1] == (
        "LookupError: No effect named 'shop.renamed_since' is registered in this process: "
        "is the module that defines it imported at start?"
    )


def test_run_due_takes_at_most_limit_and_counts_each_outcome(connect, monkeypatch, settings):
    settings.STRIPE_IDEMPOTENCY = {**settings.STRIPE_IDEMPOTENCY, "PENDING_GRACE_SECONDS": 0}
    monkeypatch.setattr(effects, "start", lambda rows: None)
    processed_with(
        connect, lambda sender, event, **kw: [send_receipt.schedule(event, order=n) for n in range(3)]
    )
    assert effects.run_due(using="default", min_age=1) == {}  # scheduled under a second ago
    assert effects.run_due(using="default", limit=1) == {"processed": 1}
    assert effects.run_due(using="default") == {"processed": 2}


def test_an_effect_interrupted_by_the_process_ending_is_given_back_at_once(connect):
    @effect(name="tests.interrupted")
    def interrupted(*, idempotency_key: str) -> None:
        raise SystemExit("the worker's timeout")

    connect(signal_for(TYPE), lambda sender, event, **kw: interrupted.schedule(event))
    with pytest.raises(SystemExit):
        processed_with(connect, lambda sender, event, **kw: None)
    row = EventEffect.objects.with_state().get()
    assert (row.state, row.claim_token, row.attempts) == (EventState.FAILED, None, 1)
    assert "SystemExit: the worker's timeout" in row.last_error
    assert EventEffect.objects.due().count() == 1  # no backoff: it is due again now


def test_the_reaper_leaves_a_just_scheduled_effect_to_its_process_and_honours_min_age(connect, monkeypatch):
    monkeypatch.setattr(effects, "start", lambda rows: None)
    processed_with(connect, lambda sender, event, **kw: send_receipt.schedule(event, order=3))
    assert effects.run_due(using="default") == {}  # PENDING_GRACE_SECONDS (60) not over
    EventEffect.objects.update(scheduled_at=Now() - timedelta(seconds=120))
    assert effects.run_due(using="default", min_age=3600) == {}  # scheduled 2 minutes ago
    assert effects.run_due(using="default", min_age=60) == {"processed": 1}
    monkeypatch.undo()  # the next event's effects run after its commit; flaky fails once
    failures.append(RuntimeError("down"))
    processed_with(connect, lambda sender, event, **kw: flaky.schedule(event))
    EventEffect.objects.filter(name="tests.flaky").update(
        next_attempt_at=Now(), scheduled_at=Now() - timedelta(seconds=120)
    )
    assert effects.run_due(using="default", min_age=60) == {}  # claimed a moment ago
    EventEffect.objects.filter(name="tests.flaky").update(claimed_at=Now() - timedelta(seconds=120))
    assert effects.run_due(using="default", min_age=60) == {"processed": 1}


@pytest.mark.django_db(transaction=True, databases=["default", "payments"])
def test_effects_live_and_run_in_their_event_s_database(connect):
    failures.append(RuntimeError("once"))
    connect(signal_for(TYPE), lambda sender, event, **kw: flaky.schedule(event))
    with effects.run_in_this_thread():
        processing.receive(incoming(), using="payments")
    assert EventEffect.objects.using("default").count() == 0
    row = EventEffect.objects.using("payments").with_state().get()
    assert (row.state, row.attempts) == (EventState.FAILED, 1)  # its failure recorded there
    EventEffect.objects.using("payments").update(next_attempt_at=Now())
    assert effects.run_due(using="payments") == {"processed": 1}
    # A forced replay there finds the effect its first run committed, there.
    with effects.run_in_this_thread():
        replayed = processing.replay(StripeEvent.objects.using("payments").get(), force=True)
    assert isinstance(replayed, Processed)
    assert EventEffect.objects.using("payments").count() == 1


def test_an_idempotency_key_of_exactly_255_characters_is_taken(connect):
    name = "tests.test_effects.send_receipt"
    event_id = "evt_" + "x" * (255 - len(f"evt_:{name}:0"))
    processed_with(
        connect, lambda sender, event, **kw: send_receipt.schedule(event, order=1), incoming(id=event_id)
    )
    assert len(EventEffect.objects.get().idempotency_key) == 255


def test_waiting_for_the_effects_gives_up_at_its_timeout(connect):
    released = threading.Event()

    @effect(name="tests.held_long")
    def held_long(*, idempotency_key: str) -> None:
        released.wait(60)

    connect(signal_for(TYPE), lambda sender, event, **kw: held_long.schedule(event))
    processing.receive(incoming())
    try:
        assert effects.wait_for_runs(0.2) is False
    finally:
        released.set()
    assert effects.wait_for_runs(60) is True
