"""The event to process: what every way in (a delivery, the reaper, a replay) hands to the claim.

It knows nothing of HTTP or of signatures: :mod:`stripe_idempotency.verification`
makes one from an authenticated request body, :meth:`IncomingEvent.from_row` from
a stored row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from stripe_idempotency.exceptions import WebhookRejected

if TYPE_CHECKING:
    from stripe_idempotency.models import StripeEvent

# Printable ASCII without spaces: what Stripe's ids and type names are made of.
# Anything else (control characters, CR/LF) never reaches the database or a log line.
_TOKEN = re.compile(r"[\x21-\x7e]{1,255}")
#: The longest ``api_version`` stored (Stripe's are like ``2025-03-31.basil``).
API_VERSION_MAX_LENGTH = 64


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A well-formed Stripe event, ready to be claimed and processed."""

    id: str
    type: str
    livemode: bool
    api_version: str | None
    created: datetime | None
    payload: dict[str, Any]

    @classmethod
    def from_payload(cls, payload: Any) -> IncomingEvent:
        """Validate the decoded JSON of an event; raise :class:`WebhookRejected` if it is not one."""
        if not isinstance(payload, dict) or payload.get("object") != "event":
            raise WebhookRejected("not_an_event", 'The body is not a JSON object with "object": "event".')
        event_id = payload.get("id")
        if not isinstance(event_id, str) or not _TOKEN.fullmatch(event_id):
            raise WebhookRejected("invalid_id", "The event has no valid string id.")
        event_type = payload.get("type")
        if not isinstance(event_type, str) or not _TOKEN.fullmatch(event_type):
            raise WebhookRejected("invalid_type", "The event has no valid string type.", event_id=event_id)
        livemode = payload.get("livemode", False)
        if not isinstance(livemode, bool):
            raise WebhookRejected(
                "invalid_livemode", "The event's livemode is not a boolean.", event_id=event_id
            )
        api_version = payload.get("api_version")
        if isinstance(api_version, str) and len(api_version) > API_VERSION_MAX_LENGTH:
            raise WebhookRejected(
                "invalid_api_version",
                f"The event's api_version is longer than {API_VERSION_MAX_LENGTH} characters.",
                event_id=event_id,
            )
        return cls(
            id=event_id,
            type=event_type,
            livemode=livemode,
            api_version=api_version if isinstance(api_version, str) else None,
            created=_timestamp(payload.get("created")),
            payload=payload,
        )

    @classmethod
    def from_row(cls, event: StripeEvent) -> IncomingEvent:
        """The event of a stored row: it was verified when it was first received."""
        return cls(
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
