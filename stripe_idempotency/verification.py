"""From request bytes to an :class:`~stripe_idempotency.events.IncomingEvent`, or a typed rejection.

The signature is checked with the ``stripe`` library's own verification,
against every configured secret, before the body is parsed: nothing an
unauthenticated sender writes is ever decoded as JSON.
"""

from __future__ import annotations

import re
import time
from typing import Any

import stripe

from stripe_idempotency import endpoints, fetching, storable
from stripe_idempotency.conf import app_settings
from stripe_idempotency.endpoints import Endpoint
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import EventIgnored, WebhookRejected


def verify(body: bytes, signature_header: str | None, endpoint: Endpoint | None = None) -> IncomingEvent:
    """Authenticate ``body`` with its ``Stripe-Signature`` header and validate the event.

    ``endpoint`` (default: the default endpoint) gives the secrets that may have signed it,
    and its policy (:func:`admit`) the rest. Raises :class:`EventIgnored` for an event of the
    live mode the endpoint is not for, and :class:`WebhookRejected` with one of the
    codes ``missing_signature``, ``invalid_encoding``, ``invalid_signature``,
    ``timestamp_outside_tolerance``, ``invalid_json``, ``unstorable_payload``,
    ``not_an_event``, ``invalid_id``, ``invalid_type``, ``invalid_livemode``,
    ``invalid_api_version``, ``invalid_context`` or ``payload_not_accepted``.
    """
    endpoint = endpoint or endpoints.endpoint()
    if not signature_header:
        raise WebhookRejected("missing_signature", "The Stripe-Signature header is missing.")
    try:
        # Stripe signs the text of the body, so a body that is not UTF-8
        # cannot carry a valid signature.
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookRejected("invalid_encoding", "The body is not UTF-8.") from None
    _verify_signature(text, signature_header, endpoint.secrets)
    return validate(text, endpoint)


def validate(text: str, endpoint: Endpoint) -> IncomingEvent:
    """Validate an authentic event's JSON ``text`` for ``endpoint``: every check of :func:`verify`
    after the signature's (an event read from Stripe's API is authentic by its transport)."""
    payload = _decode(text)
    event = IncomingEvent.from_payload(payload, endpoint=endpoint.name)
    if event.thin:
        _parse_with_stripe(text, event.id)
    return admit(event, endpoint)


def admit(event: IncomingEvent, endpoint: Endpoint) -> IncomingEvent:
    """``event``, if ``endpoint``'s policy takes it: the whole policy, in one place, for a
    delivery and for the catch-up alike. Another payload family is refused
    (:class:`WebhookRejected` ``payload_not_accepted``: Stripe is sending it somewhere it should
    not); the other live mode is ignored (:class:`EventIgnored`: a live Connect endpoint receives
    its accounts' test events too, and refusing them would have Stripe disable the endpoint)."""
    if not endpoint.accepts_family(thin=event.thin):
        raise WebhookRejected(
            "payload_not_accepted",
            f"This endpoint takes {endpoint.payload} events only; this is a "
            f"{'thin event notification' if event.thin else 'snapshot event'}.",
            event_id=event.id,
        )
    if not endpoint.accepts_livemode(event.livemode):
        raise EventIgnored(event, "livemode_mismatch")
    return event


def _parse_with_stripe(text: str, event_id: str) -> None:
    """Read a thin event notification with the ``stripe`` library's own parser, where the
    installed ``stripe`` has one: what it cannot read is not an event notification."""
    try:
        fetching.parse_notification(text)
    except Exception as error:
        # The library's parser trusts Stripe's shapes: on a body it was not written for it may
        # raise anything (AttributeError, IndexError...). Whatever it is, it cannot read this.
        raise WebhookRejected(
            "not_an_event",
            f"The stripe library cannot read this thin event notification ({error!r}).",
            event_id=event_id,
        ) from None


def _verify_signature(text: str, header: str, secrets: tuple[str, ...]) -> None:
    timestamp, signatures = _parse_header(header)
    # The library is given the header as read here, so it verifies the very timestamp checked
    # below: two parses of one header could disagree on which "t" counts.
    canonical = ",".join([f"t={timestamp}", *(f"{SCHEME}={signature}" for signature in signatures)])
    tolerance = app_settings.TOLERANCE_SECONDS
    if _signed_by_any(text, canonical, secrets, tolerance):
        # Stripe's check bounds only the past; a signature from the future is
        # as suspect as an old one (a clock far off, or a body signed ahead to
        # be replayed later), so the same tolerance applies both ways.
        if timestamp > time.time() + tolerance:
            raise WebhookRejected(
                "timestamp_outside_tolerance",
                f"The signature's timestamp is more than {tolerance} seconds in the future.",
            )
        return
    # Only on failure, ask again without the time limit, to tell a replayed
    # (or badly clock-skewed) delivery apart from a forged one.
    if _signed_by_any(text, canonical, secrets, None):
        raise WebhookRejected(
            "timestamp_outside_tolerance",
            f"The signature's timestamp is more than {tolerance} seconds old.",
        )
    raise WebhookRejected("invalid_signature", "No configured secret matches the signature.")


#: The signature scheme Stripe signs with (``v1=``: HMAC-SHA256).
SCHEME = stripe.WebhookSignature.EXPECTED_SCHEME
_TIMESTAMP = re.compile(r"[0-9]{1,12}", re.ASCII)


def _parse_header(header: str) -> tuple[int, list[str]]:
    """The one timestamp and the ``v1`` signatures of a ``Stripe-Signature`` header.

    Stripe sends ``t=<unix time>,v1=<hex>[,v1=<hex>...]`` (and other schemes, ignored). A header
    with no timestamp, or more than one, is refused rather than read one way here and another
    way by whatever reads it next.
    """
    if not header.isascii():
        # Stripe's headers are ASCII; anything else would make the constant-time
        # comparison raise TypeError instead of answering "no match".
        raise WebhookRejected("invalid_signature", "The Stripe-Signature header is not ASCII.")
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, _, value = item.partition("=")
        if key == "t":
            timestamps.append(value)
        elif key == SCHEME and value:
            signatures.append(value)
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise WebhookRejected(
            "invalid_signature", "The Stripe-Signature header must hold exactly one timestamp, t=<seconds>."
        )
    if not signatures:
        raise WebhookRejected(
            "invalid_signature", f"The Stripe-Signature header holds no {SCHEME} signature."
        )
    return int(timestamps[0]), signatures


def _signed_by_any(text: str, header: str, secrets: tuple[str, ...], tolerance: int | None) -> bool:
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, header, secret, tolerance)
        except stripe.SignatureVerificationError:
            continue
        return True
    return False


def _decode(text: str) -> Any:
    """The body's JSON, if every backend can store it (:mod:`stripe_idempotency.storable`);
    otherwise a rejection naming why. A verified body must be stored as it is processed, or be
    refused with a reason: a 500 would have Stripe retry for three days and then drop the event,
    seen by nobody."""
    try:
        return storable.decode(text)
    except storable.Unstorable as unstorable:
        raise _unstorable(text, unstorable.reason, unstorable.value) from None
    except ValueError:
        raise WebhookRejected("invalid_json", "The body is not valid JSON.") from None


_EVENT_ID_TEXT = re.compile(r"[\x21-\x7e]{1,255}")
_EVENT_ID = re.compile(r'"id"\s*:\s*"([\x21-\x7e]{1,255}?)"')


def _unstorable(text: str, reason: str, payload: Any = None) -> WebhookRejected:
    event_id: str | None
    if isinstance(payload, dict):
        # Only an id of the characters ids are made of reaches a log line (no CR/LF).
        candidate = payload.get("id")
        valid = isinstance(candidate, str) and _EVENT_ID_TEXT.fullmatch(candidate)
        event_id = candidate if valid else None
    else:
        # Not decoded: the first id in the text is the event's (Stripe writes it first).
        match = _EVENT_ID.search(text)
        event_id = match.group(1) if match else None
    return WebhookRejected(
        "unstorable_payload",
        f"The event cannot be stored as sent: {reason}.",
        event_id=event_id,
    )
