"""The event types Stripe sends, as the installed ``stripe`` library lists them.

A receiver connected to a misspelt type (``signal_for("invoice.payment_succeded")``) is never
called: every event of the real type is processed with no receiver run, and later deliveries
are duplicates, so the work is lost without an error. System check ``W008`` compares each
type that has receivers with this list. It is read from the library, not kept here, so it
follows Stripe as the library is upgraded: the snapshot types a webhook endpoint can be
enabled for (the ``enabled_events`` values of its create parameters) and the thin event types
the library has classes for (``v1.invoice.paid``, ``v2.core.account.created``...). A project
names the types it receives beyond those (newer than its ``stripe``, or its own) in
``EXTRA_EVENT_TYPES``.
"""

from __future__ import annotations

import functools
import importlib
import re
import typing
from typing import Any

__all__ = ["known_event_types"]

# The wildcard of enabled_events is not a type.
_NOT_TYPES = {"*"}


@functools.cache
def known_event_types() -> frozenset[str]:
    """Every event type the installed ``stripe`` names; empty where it names none (an older
    ``stripe`` without typed parameters), so that nothing is judged against an empty list."""
    return frozenset((_snapshot_types() | _thin_types()) - _NOT_TYPES)


def _snapshot_types() -> set[str]:
    params = _attribute("stripe.params._webhook_endpoint_create_params", "WebhookEndpointCreateParams")
    if params is None:
        return set()
    annotation = getattr(params, "__annotations__", {}).get("enabled_events")
    if isinstance(annotation, str):  # postponed annotations: the literal's text
        return set(re.findall(r"""["']([a-z0-9_.\[\]]+|\*)["']""", annotation))
    return {value for value in _literals(annotation) if isinstance(value, str)}


def _literals(annotation: Any) -> set[Any]:
    """The values of every ``Literal`` inside ``annotation`` (``List[Literal[...]]``)."""
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    found: set[Any] = set()
    for argument in typing.get_args(annotation):
        found |= _literals(argument)
    return found


def _thin_types() -> set[str]:
    lookup = _attribute("stripe.events._event_classes", "_V2_EVENT_NOTIFICATION_CLASS_LOOKUP")
    return {key for key in lookup if isinstance(key, str)} if isinstance(lookup, dict) else set()


def _attribute(module: str, name: str) -> Any:
    # Private modules of the library: read where they exist, never required.
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None
