"""Traces and metrics through OpenTelemetry, read back with the SDK's in-memory exporters."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter

import pytest
from django.test import Client, override_settings
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from stripe_idempotency import telemetry
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received, signal_for
from stripe_idempotency.testing import build_event, deliver
from tests.settings import WEBHOOK_SECRET
from tests.test_deferred import DEFERRED, queued, run_queued  # noqa: F401 (the fixture)

pytestmark = pytest.mark.django_db(transaction=True)

_exporter = InMemorySpanExporter()
_reader = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def _providers():
    # A global provider can be set once per process; the app's proxies pick it up then.
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_reader]))


@pytest.fixture
def spans():
    """The spans ended during the test, as the exporter got them."""
    _exporter.clear()
    yield _exporter.get_finished_spans
    _exporter.clear()


@pytest.fixture
def measured():
    """``measured(name)``: the points of a metric recorded during the test (counters' sums,
    histograms' counts and sums), keyed by their attributes."""
    before = _points()

    def read(name: str) -> dict[frozenset, tuple[float, ...]]:
        after = _points().get(name, {})
        earlier = before.get(name, {})
        changed = {}
        for key, values in after.items():
            delta = tuple(a - b for a, b in zip(values, earlier.get(key, (0,) * len(values)), strict=True))
            if any(delta):
                changed[key] = delta
        return changed

    return read


def _points() -> dict[str, dict[frozenset, tuple[float, ...]]]:
    data = _reader.get_metrics_data()
    found: dict[str, dict[frozenset, tuple[float, ...]]] = {}
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    key = frozenset(point.attributes.items())
                    values = (point.count, point.sum) if hasattr(point, "count") else (point.value,)
                    found.setdefault(metric.name, {})[key] = values
    return found


def tree(finished: tuple[ReadableSpan, ...]) -> list[tuple[str, str | None]]:
    """(span, its parent's name) for each span, in the order they ended."""
    names = {s.context.span_id: s.name for s in finished}
    return [(s.name, names.get(s.parent.span_id) if s.parent else None) for s in finished]


def named(finished: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    [found] = [s for s in finished if s.name == f"stripe_idempotency.{name}"]
    return found


def test_a_delivery_is_one_span_with_verify_claim_dispatch_and_complete_as_children(spans):
    event = build_event("invoice.paid", id="evt_traced", data={"id": "in_1", "customer_email": "a@b.example"})
    assert deliver(Client(), event).json()["status"] == "processed"
    finished = spans()
    assert tree(finished) == [
        ("stripe_idempotency.verify", "stripe_idempotency.delivery"),
        ("stripe_idempotency.claim", "stripe_idempotency.delivery"),
        ("stripe_idempotency.dispatch", "stripe_idempotency.delivery"),
        ("stripe_idempotency.complete", "stripe_idempotency.delivery"),
        ("stripe_idempotency.delivery", None),
    ]
    assert len({s.context.trace_id for s in finished}) == 1
    assert dict(named(finished, "delivery").attributes) == {
        "stripe.event.id": "evt_traced",
        "stripe.event.type": "invoice.paid",
        "stripe_idempotency.endpoint": "",
        "stripe_idempotency.outcome": "processed",
    }
    # Never the payload: nothing of the event's data is on any span.
    assert not any("a@b.example" in str(value) for s in finished for value in s.attributes.values())


def test_the_outcome_of_each_delivery_is_on_its_span_and_counted(spans, measured, connect):
    event = build_event(id="evt_counted")
    deliver(Client(), event)
    deliver(Client(), event)
    deliver(Client(), event, secret="whsec_forged")
    connect(event_received, failing)
    deliver(Client(), build_event(id="evt_failing"))
    outcomes = [s.attributes["stripe_idempotency.outcome"] for s in spans() if s.name.endswith(".delivery")]
    assert outcomes == ["processed", "duplicate", "rejected", "error"]
    deliveries = measured("stripe_idempotency.deliveries")
    counted = {dict(key)["outcome"]: value for key, (value,) in deliveries.items()}
    assert counted == {"processed": 1, "duplicate": 1, "rejected": 1, "error": 1}
    # The duplicate ratio, as a dashboard computes it from the counter.
    assert counted["duplicate"] / sum(counted.values()) == 0.25


def failing(sender, event, **kwargs):
    raise RuntimeError("the warehouse is down")


def test_a_receiver_that_raises_is_an_error_on_the_dispatch_span(spans, connect):
    connect(event_received, failing)
    deliver(Client(), build_event(id="evt_raising"))
    dispatch = named(spans(), "dispatch")
    assert dispatch.status.status_code is StatusCode.ERROR
    [exception] = [e for e in dispatch.events if e.name == "exception"]
    assert exception.attributes["exception.type"] == "RuntimeError"
    assert [s.name for s in spans()].count("stripe_idempotency.complete") == 0


def test_a_forged_signature_is_an_error_on_the_verify_span_and_nothing_else_runs(spans):
    deliver(Client(), build_event(id="evt_forged"), secret="whsec_forged")
    assert tree(spans()) == [
        ("stripe_idempotency.verify", "stripe_idempotency.delivery"),
        ("stripe_idempotency.delivery", None),
    ]
    assert named(spans(), "verify").status.status_code is StatusCode.ERROR
    assert "stripe.event.id" not in named(spans(), "delivery").attributes


def test_processing_duration_and_lag_are_recorded_by_type_and_result(measured, connect):
    created = int(time.time()) - 120
    deliver(Client(), build_event("invoice.paid", id="evt_late", created=created))
    deliver(Client(), build_event("invoice.paid", id="evt_late"))  # a duplicate: not processed again
    connect(event_received, failing)
    deliver(Client(), build_event("invoice.paid", id="evt_fails"))
    durations = measured("stripe_idempotency.processing.duration")
    assert {frozenset(dict(key).values()): count for key, (count, _) in durations.items()} == {
        frozenset({"invoice.paid", "processed"}): 1,
        frozenset({"invoice.paid", "failed"}): 1,
    }
    [(key, (count, lag))] = measured("stripe_idempotency.lag").items()
    assert (dict(key), count) == ({"stripe.event.type": "invoice.paid"}, 1)
    processed_at = StripeEvent.objects.get(event_id="evt_late").processed_at.timestamp()
    assert processed_at - created - 5 < lag < processed_at - created + 5


@DEFERRED
def test_deferred_the_delivery_accepts_and_queues_and_the_task_reprocesses(spans, queued):  # noqa: F811
    deliver(Client(), build_event(id="evt_later"))
    assert tree(spans()) == [
        ("stripe_idempotency.verify", "stripe_idempotency.delivery"),
        ("stripe_idempotency.accept", "stripe_idempotency.delivery"),
        ("stripe_idempotency.enqueue", "stripe_idempotency.delivery"),
        ("stripe_idempotency.delivery", None),
    ]
    assert named(spans(), "delivery").attributes["stripe_idempotency.outcome"] == "accepted"
    _exporter.clear()
    assert run_queued(queued) == ["processed"]
    assert tree(spans()) == [
        ("stripe_idempotency.claim", "stripe_idempotency.reprocess"),
        ("stripe_idempotency.dispatch", "stripe_idempotency.reprocess"),
        ("stripe_idempotency.complete", "stripe_idempotency.reprocess"),
        ("stripe_idempotency.reprocess", None),
    ]
    assert dict(named(spans(), "reprocess").attributes) == {
        "stripe.event.id": "evt_later",
        "stripe.event.type": "checkout.session.completed",
        "stripe_idempotency.outcome": "processed",
    }


def test_without_the_api_nothing_is_traced_and_deliveries_are_answered(spans, measured, monkeypatch):
    monkeypatch.setattr(telemetry, "enabled", False)
    assert deliver(Client(), build_event(id="evt_untraced")).json()["status"] == "processed"
    assert spans() == ()
    assert measured("stripe_idempotency.deliveries") == {}


def test_the_module_imports_and_does_nothing_when_opentelemetry_is_not_installed():
    script = (
        "import sys; sys.modules['opentelemetry'] = None\n"  # as if not installed: the import fails
        "from stripe_idempotency import telemetry\n"
        "assert telemetry.enabled is False\n"
        "with telemetry.span('delivery', **{telemetry.ENDPOINT: ''}) as s: s.set_attribute('k', 'v')\n"
        "telemetry.count_delivery('processed', '')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "ok\n", "")


def test_spans_carry_each_delivery_s_own_event(spans):
    for n in range(3):
        deliver(Client(), build_event(id=f"evt_many_{n}"))
    ids = Counter(s.attributes.get("stripe.event.id") for s in spans() if s.name.endswith(".delivery"))
    assert ids == Counter({"evt_many_0": 1, "evt_many_1": 1, "evt_many_2": 1})


@override_settings(
    STRIPE_IDEMPOTENCY={
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "ENDPOINTS": {"connect": {"WEBHOOK_SECRETS": ["whsec_c"]}},
    }
)
def test_the_endpoint_is_an_attribute_and_an_invented_name_is_not(spans, measured):
    deliver(Client(), build_event(id="evt_connect"), endpoint="connect")
    for n in range(3):  # anyone can make up a URL: no time series of its own for each
        deliver(Client(), build_event(), url=f"/stripe/webhook/made-up-{n}/")
    assert [s.attributes["stripe_idempotency.endpoint"] for s in spans() if s.name.endswith(".delivery")] == [
        "connect",
        "(unknown)",
        "(unknown)",
        "(unknown)",
    ]
    counted = {
        (dict(key)["stripe_idempotency.endpoint"], dict(key)["outcome"]): value
        for key, (value,) in measured("stripe_idempotency.deliveries").items()
    }
    assert counted == {("connect", "processed"): 1, ("(unknown)", "rejected"): 3}


def test_each_run_of_an_effect_is_a_span_and_its_outcome_is_counted(spans, measured, connect):
    from django.db.models.functions import Now

    from stripe_idempotency import effects
    from stripe_idempotency.models import EventEffect

    failures = [ConnectionError("smtp down")]

    @effects.effect(name="tests.telemetry.mail")
    def mail(*, idempotency_key: str) -> None:
        if failures:
            raise failures.pop()

    connect(signal_for("invoice.paid"), lambda sender, event, **kw: mail.schedule(event))
    deliver(Client(), build_event("invoice.paid", id="evt_effect_traced"))  # returns once it ran
    EventEffect.objects.update(next_attempt_at=Now())
    assert effects.run_due(using="default") == {"processed": 1}
    runs = [s for s in spans() if s.name == "stripe_idempotency.effect"]
    assert [dict(s.attributes) for s in runs] == [
        {
            "stripe_idempotency.effect": "tests.telemetry.mail",
            "stripe.event.id": "evt_effect_traced",
            "stripe_idempotency.outcome": outcome,
        }
        for outcome in ("failed", "processed")
    ]
    runs = measured("stripe_idempotency.effects.runs")
    counted = {
        (dict(key)["stripe_idempotency.effect"], dict(key)["outcome"]): n for key, (n,) in runs.items()
    }
    assert counted == {("tests.telemetry.mail", "failed"): 1, ("tests.telemetry.mail", "processed"): 1}
