"""Fetching from Stripe's API, through the ``stripe`` library: a thin event's full event and the
object it is about. Only ever on request (:meth:`StripeEvent.fetch_event`,
:meth:`StripeEvent.fetch_related_object`), never to receive; with the ``API_KEY`` setting.

It reads an event from its payload as Stripe sent it, and knows no table: the models call it.
"""

from __future__ import annotations

import json
from typing import Any

import stripe
from django.core.exceptions import ImproperlyConfigured

from stripe_idempotency.conf import SETTINGS_NAME, app_settings
from stripe_idempotency.events import is_thin

__all__ = ["client", "fetch_event", "fetch_related_object", "parse_notification"]


def client(*, api_key: str | None = None) -> stripe.StripeClient:
    """A :class:`stripe.StripeClient` with the ``API_KEY`` setting (or ``api_key``)."""
    key = api_key or app_settings.API_KEY
    if not key:
        raise ImproperlyConfigured(
            f"Fetching from Stripe needs an API key: set {SETTINGS_NAME}['API_KEY'] "
            "(a restricted key that can read events and the objects you fetch is enough)."
        )
    base = app_settings.API_BASE
    return stripe.StripeClient(key, base_addresses={"api": base} if base else None)


def parse_notification(body: str, *, api_key: str | None = None) -> Any:
    """A thin event notification as the ``stripe`` library reads one (its ``EventNotification``),
    or ``None`` where the installed ``stripe`` has no parser for them.

    Parsing calls nothing: without an API key the notification is read with an empty one, and
    only its fetches need a real key.
    """
    parse = getattr(stripe.StripeClient, "parse_event_notification_without_verification", None)
    if parse is None:
        return None
    return parse(stripe.StripeClient(api_key or app_settings.API_KEY or ""), body)


def fetch_event(payload: dict[str, Any], *, account: str | None, api_key: str | None = None) -> Any:
    """The event ``payload`` describes, as Stripe's API has it now: a thin event's full event
    (``/v2/core/events/``), a snapshot event's ``/v1/events/`` object (on the connected
    ``account``'s behalf, for Connect)."""
    if is_thin(payload):
        return _notification(payload, api_key).fetch_event()
    options: stripe.RequestOptions = {"stripe_account": account} if account else {}
    return client(api_key=api_key).v1.events.retrieve(payload["id"], options=options)


def fetch_related_object(payload: dict[str, Any], *, api_key: str | None = None) -> Any:
    """A thin event's related object as the API has it now (``None`` for an event about none)."""
    if not is_thin(payload):
        raise TypeError(
            f"{payload.get('id')} is a snapshot event: its object is in payload['data']['object'] as it "
            "was; to read it as it is now, retrieve it with the stripe client's own resource."
        )
    return _notification(payload, api_key).fetch_related_object()


def _notification(payload: dict[str, Any], api_key: str | None) -> Any:
    stripe_client = client(api_key=api_key)
    return stripe_client.parse_event_notification_without_verification(json.dumps(payload))
