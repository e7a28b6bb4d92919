"""From request bytes to a :class:`VerifiedEvent`, or a typed rejection.

The signature is checked with the ``stripe`` library's own verification,
against every configured secret, before the body is parsed: nothing an
unauthenticated sender writes is ever decoded as JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import stripe

from stripe_idempotency.conf import app_settings
from stripe_idempotency.exceptions import WebhookRejected

if TYPE_CHECKING:
    from stripe_idempotency.models import StripeEvent

# Printable ASCII without spaces: what Stripe's ids and type names are made of.
# Anything else (control characters, CR/LF) never reaches the database or a log line.
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class VerifiedEvent:
    """An authentic, well-formed Stripe event, not yet stored."""

    id: str
    type: str
    livemode: bool
    api_version: str | None
    created: datetime | None
    payload: dict[str, Any]

    @classmethod
    def from_payload(cls, payload: Any) -> VerifiedEvent:
        """Validate the decoded JSON of an event; raise :class:`WebhookRejected` if it is not one."""
        if not isinstance(payload, dict) or payload.get("object") != "event":
            raise WebhookRejected("not_an_event", 'The body is not a JSON object with "object": "event".')
        event_id = payload.get("id")
        if not isinstance(event_id, str) or not _TOKEN.fullmatch(event_id):
            raise WebhookRejected("invalid_id", "The event has no valid string id.")
        event_type = payload.get("type")
        if not isinstance(event_type, str) or not _TOKEN.fullmatch(event_type):
            raise WebhookRejected("invalid_type", "The event has no valid string type.")
        livemode = payload.get("livemode", False)
        if not isinstance(livemode, bool):
            raise WebhookRejected("invalid_livemode", "The event's livemode is not a boolean.")
        expected = app_settings.LIVEMODE
        if expected is not None and livemode is not expected:
            raise WebhookRejected(
                "livemode_mismatch",
                f"This endpoint accepts only {'live' if expected else 'test'}-mode events.",
            )
        api_version = payload.get("api_version")
        created = payload.get("created")
        return cls(
            id=event_id,
            type=event_type,
            livemode=livemode,
            api_version=api_version if isinstance(api_version, str) else None,
            created=_timestamp(created),
            payload=payload,
        )


def stored_event(event: StripeEvent) -> VerifiedEvent:
    """The :class:`VerifiedEvent` of a stored row: it was verified when it was first received."""
    return VerifiedEvent(
        id=event.event_id,
        type=event.type,
        livemode=event.livemode,
        api_version=event.api_version or None,
        created=event.created,
        payload=event.payload,
    )


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def verify(body: bytes, signature_header: str | None) -> VerifiedEvent:
    """Authenticate ``body`` with its ``Stripe-Signature`` header and validate the event.

    Raises :class:`WebhookRejected` with one of the codes ``missing_signature``,
    ``invalid_encoding``, ``invalid_signature``, ``timestamp_outside_tolerance``,
    ``invalid_json``, ``not_an_event``, ``invalid_id``, ``invalid_type``,
    ``invalid_livemode`` or ``livemode_mismatch``.
    """
    if not signature_header:
        raise WebhookRejected("missing_signature", "The Stripe-Signature header is missing.")
    try:
        # Stripe signs the text of the body, so a body that is not UTF-8
        # cannot carry a valid signature.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("invalid_encoding", "The body is not UTF-8.") from None
    _verify_signature(text, signature_header)
    try:
        payload = json.loads(text)
    except ValueError:
        raise WebhookRejected("invalid_json", "The body is not valid JSON.") from None
    return VerifiedEvent.from_payload(payload)


def _verify_signature(text: str, header: str) -> None:
    if not header.isascii():
        # Stripe's headers are ASCII; anything else would make the constant-time
        # comparison raise TypeError instead of answering "no match".
        raise WebhookRejected("invalid_signature", "The Stripe-Signature header is not ASCII.")
    secrets = app_settings.WEBHOOK_SECRETS
    tolerance = app_settings.TOLERANCE_SECONDS
    if _signed_by_any(text, header, secrets, tolerance):
        return
    # Only on failure, ask again without the time limit, to tell a replayed
    # (or badly clock-skewed) delivery apart from a forged one.
    if _signed_by_any(text, header, secrets, None):
        raise WebhookRejected(
            "timestamp_outside_tolerance",
            f"The signature's timestamp is more than {tolerance} seconds old.",
        )
    raise WebhookRejected("invalid_signature", "No configured secret matches the signature.")


def _signed_by_any(text: str, header: str, secrets: list[str], tolerance: int | None) -> bool:
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        return True
    return False
