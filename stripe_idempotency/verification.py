"""From request bytes to an :class:`~stripe_idempotency.events.IncomingEvent`, or a typed rejection.

The signature is checked with the ``stripe`` library's own verification,
against every configured secret, before the body is parsed: nothing an
unauthenticated sender writes is ever decoded as JSON.
"""

from __future__ import annotations

import json

import stripe

from stripe_idempotency.conf import app_settings
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import WebhookRejected

#: The event a verified request carries (the neutral type, under its first-release name).
VerifiedEvent = IncomingEvent


def verify(body: bytes, signature_header: str | None) -> IncomingEvent:
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
    event = IncomingEvent.from_payload(payload)
    expected = app_settings.LIVEMODE
    if expected is not None and event.livemode is not expected:
        raise WebhookRejected(
            "livemode_mismatch",
            f"This endpoint accepts only {'live' if expected else 'test'}-mode events.",
        )
    return event


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
