"""The signals receivers connect to.

Both kinds are sent with ``sender=StripeEvent`` (the model class) inside the
one dispatch transaction: ``event_received`` first, then the event type's own
signal. They commit together or roll back together.
"""

from __future__ import annotations

import threading

from django.dispatch import Signal

#: Sent for every event. Keyword arguments: ``event`` (the ``StripeEvent`` row;
#: ``event.payload`` is the decoded event dict).
event_received = Signal()

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
