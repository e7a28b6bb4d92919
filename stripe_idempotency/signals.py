"""The signals receivers connect to.

Processing: ``event_received`` and the event type's own signal are sent with
``sender=StripeEvent`` (the model class) inside the one dispatch transaction,
``event_received`` first. They commit together or roll back together.

Lifecycle: ``event_processed``, ``event_failed``, ``event_dead`` and
``event_rejected`` say what became of a delivery, ``effect_failed`` and ``effect_dead`` what
became of an effect's run, for metrics and alerts. Each is sent once its outcome is durable,
outside any transaction of the app's, with ``sender=StripeEvent`` (``EventEffect`` for the
effects' signals); a receiver that raises is logged and changes nothing.
"""

from __future__ import annotations

import threading
from typing import Any

from django.dispatch import Signal

from stripe_idempotency.log import logger

#: Sent for every event. Keyword arguments: ``event`` (the ``StripeEvent`` row;
#: ``event.payload`` is the decoded event dict).
event_received = Signal()

#: The event's receivers committed and it is marked processed. Keyword arguments: ``event``.
event_processed = Signal()

#: A receiver raised: its work was rolled back, the claim released and the error recorded on
#: the row (it will be retried). Keyword arguments: ``event``, ``error`` (the traceback text).
event_failed = Signal()

#: The event failed its ``MAX_ATTEMPTS``-th dispatch: the reaper stops retrying it (a delivery
#: from Stripe, or ``replay_stripe_event``, still may). Sent after ``event_failed``. Keyword
#: arguments: ``event``.
event_dead = Signal()

#: A request was refused with a 4xx (a bad signature, a malformed event...): nothing was
#: stored. Keyword arguments: ``code`` (the rejection code of the answer, e.g.
#: ``"invalid_signature"``). No payload: a refused body is never passed on.
event_rejected = Signal()

#: An effect's run raised: the effect was released with the error recorded on its row and is
#: retried after its backoff. Keyword arguments: ``effect`` (the ``EventEffect`` row), ``error``
#: (the traceback text). Sent with ``sender=EventEffect``.
effect_failed = Signal()

#: An effect failed its ``max_attempts``-th run: nothing runs it again by itself (the admin's
#: action does). Sent after ``effect_failed``. Keyword arguments: ``effect``.
effect_dead = Signal()

_typed_signals: dict[str, Signal] = {}
_typed_signals_lock = threading.Lock()


def signal_for(event_type: str) -> Signal:
    """Return the signal sent for events of ``event_type``, e.g. ``"invoice.paid"``.

    The same :class:`~django.dispatch.Signal` object is returned for a type on
    every call, so receivers can connect to it at import time. Keyword
    arguments: ``event`` (the ``StripeEvent`` row).
    """
    signal = _typed_signals.get(event_type)
    if signal is None:
        with _typed_signals_lock:
            signal = _typed_signals.setdefault(event_type, Signal())
    return signal


def registered_signal(event_type: str) -> Signal | None:
    """The signal for ``event_type`` if anything ever asked for it, else ``None``.

    Dispatch uses this so that event types nobody listens to do not grow the
    registry.
    """
    return _typed_signals.get(event_type)


def connected_types() -> list[str]:
    """The event types whose signal has a receiver connected, sorted (system check W008)."""
    return sorted(event_type for event_type, signal in list(_typed_signals.items()) if signal.receivers)


def announce(signal: Signal, sender: type, **kwargs: Any) -> None:
    """Send a lifecycle signal. A receiver that raises is logged with its traceback and
    changes nothing: the outcome it reports is already durable, and the answer stands."""
    _log_failures(signal.send_robust(sender=sender, **kwargs))


async def aannounce(signal: Signal, sender: type, **kwargs: Any) -> None:
    """:func:`announce` from async code (sync receivers run in a thread, as Django sends them)."""
    _log_failures(await signal.asend_robust(sender=sender, **kwargs))


def _log_failures(results: list[tuple[Any, Any]]) -> None:
    for receiver, result in results:
        if isinstance(result, Exception):
            logger.error(
                "A receiver of a stripe_idempotency lifecycle signal raised (%r); ignored.",
                receiver,
                exc_info=result,
            )
