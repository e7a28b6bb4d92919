"""Traces and metrics through OpenTelemetry, when ``opentelemetry-api`` is installed.

The app only speaks the OpenTelemetry API (the ``otel`` extra); the project chooses the
SDK, the exporters and where they send. Without the API installed, or with no SDK
configured, every call here does nothing and costs next to nothing.

Spans (children of the HTTP server span when the project instruments Django):

* ``stripe_idempotency.delivery``: one per webhook request, from the body read to the
  answer; its children ``stripe_idempotency.verify``, then ``.claim``, ``.dispatch`` and
  ``.complete`` (inline) or ``.accept`` and ``.enqueue`` (deferred);
* ``stripe_idempotency.reprocess``: a stored event processed again (a task, the reaper,
  a replay, the admin), with the same ``.claim``, ``.dispatch`` and ``.complete`` children;
* ``stripe_idempotency.effect``: one run of an effect, with :data:`EFFECT` (its name),
  :data:`EVENT_ID` and :data:`OUTCOME`.

Attributes: :data:`EVENT_ID`, :data:`EVENT_TYPE`, :data:`ENDPOINT` and :data:`OUTCOME`;
never the payload.

Metrics:

* ``stripe_idempotency.deliveries`` (counter): webhook requests by ``outcome`` (the
  answer's ``status``: ``processed``, ``superseded``, ``duplicate``, ``accepted``, ``busy``,
  ``error``, ``unavailable``, ``ignored``, ``rejected``) and ``endpoint``. The duplicate ratio is the
  ``duplicate`` rate over the sum of all rates;
* ``stripe_idempotency.processing.duration`` (histogram, seconds): a claimed event's
  receivers and completion, by ``stripe.event.type`` and ``result`` (``processed``,
  ``failed``, ``fenced``);
* ``stripe_idempotency.enqueue.failures`` (counter): accepted events the queue refused
  (``reason`` ``error``) or did not answer for within ``ENQUEUE_TIMEOUT_SECONDS``
  (``timeout``); the reaper takes them;
* ``stripe_idempotency.lag`` (histogram, seconds): from Stripe's ``created`` to
  the commit of its processing, by ``stripe.event.type``;
* ``stripe_idempotency.effects.runs`` (counter): effect runs by :data:`EFFECT` and ``outcome``
  (``processed``, ``failed``, ``dead``, ``fenced``; a run that found its effect taken counts none).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from django.utils import timezone

from stripe_idempotency import __version__

if TYPE_CHECKING:
    from stripe_idempotency.models import StripeEvent

__all__ = [
    "EFFECT",
    "ENDPOINT",
    "EVENT_ID",
    "EVENT_TYPE",
    "OUTCOME",
    "count_delivery",
    "count_effect_run",
    "count_not_queued",
    "enabled",
    "processing_timer",
    "record_lag",
    "span",
]

EVENT_ID = "stripe.event.id"
EVENT_TYPE = "stripe.event.type"
ENDPOINT = "stripe_idempotency.endpoint"
OUTCOME = "stripe_idempotency.outcome"
EFFECT = "stripe_idempotency.effect"

try:
    from opentelemetry import metrics, trace
except ImportError:  # the otel extra is not installed
    enabled = False
else:
    enabled = True
    # Proxies until the project sets its providers, then the real thing: so they can be
    # made at import, before (or without) any SDK configuration.
    _tracer = trace.get_tracer("stripe_idempotency", __version__)
    _meter = metrics.get_meter("stripe_idempotency", __version__)
    _deliveries = _meter.create_counter(
        "stripe_idempotency.deliveries",
        unit="{delivery}",
        description="Webhook requests answered, by outcome and endpoint.",
    )
    _processing = _meter.create_histogram(
        "stripe_idempotency.processing.duration",
        unit="s",
        description="A claimed event's receivers and completion, by event type and result.",
    )
    _not_queued = _meter.create_counter(
        "stripe_idempotency.enqueue.failures",
        unit="{event}",
        description="Accepted events the queue did not take, by reason (error, timeout).",
    )
    _effect_runs = _meter.create_counter(
        "stripe_idempotency.effects.runs",
        unit="{run}",
        description="Effect runs, by effect and outcome.",
    )
    _lag = _meter.create_histogram(
        "stripe_idempotency.lag",
        unit="s",
        description="From the event's creation at Stripe to its processing, by event type.",
    )


class Span(Protocol):
    def set_attribute(self, key: str, value: Any) -> object: ...


class _NoSpan:
    def set_attribute(self, key: str, value: Any) -> None:
        pass


_NO_SPAN = _NoSpan()


@contextmanager
def span(name: str, **attributes: str | bool | int) -> Iterator[Span]:
    """A child of the current span, ``stripe_idempotency.<name>``; an exception that leaves it
    is recorded on it. ``attributes`` use the module's names, e.g. ``{EVENT_ID: ...}``."""
    # No SDK set up (the API's proxy provider): a span would be made, entered and dropped for
    # nothing, a few microseconds each, six times a delivery.
    if not enabled or isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        yield _NO_SPAN
        return
    with _tracer.start_as_current_span(f"stripe_idempotency.{name}", attributes=attributes) as current:
        yield current


def count_delivery(outcome: str, endpoint: str) -> None:
    """One webhook request answered with ``outcome`` (the answer's ``status``)."""
    if enabled:
        _deliveries.add(1, {"outcome": outcome, ENDPOINT: endpoint})


def count_not_queued(reason: str) -> None:
    """An accepted event the queue did not take (``reason``: ``error`` or ``timeout``); the
    reaper takes it after ``PENDING_GRACE_SECONDS``."""
    if enabled:
        _not_queued.add(1, {"reason": reason})


def count_effect_run(name: str, outcome: str) -> None:
    """One run of the effect ``name`` ended with ``outcome``."""
    if enabled:
        _effect_runs.add(1, {EFFECT: name, "outcome": outcome})


@contextmanager
def processing_timer(event: StripeEvent) -> Iterator[dict[str, str]]:
    """Time a claimed event's processing; the caller sets ``result`` in the yielded dict."""
    labels = {EVENT_TYPE: event.type, "result": "failed"}
    started = time.perf_counter()
    try:
        yield labels
    finally:
        if enabled:
            _processing.record(time.perf_counter() - started, labels)


def record_lag(event: StripeEvent) -> None:
    """The time from Stripe's ``created`` to now, for an event whose processing just committed.

    ``processed_at`` is the database's clock at the COMMIT; this is the app's clock just
    after it (the statement that sets it is not made to return it).
    """
    if enabled and event.created is not None:
        lag = (timezone.now() - event.created).total_seconds()
        _lag.record(max(0.0, lag), {EVENT_TYPE: event.type})
