"""The event to process: what every way in (a delivery, the reaper, a replay) hands to the claim.

It knows nothing of HTTP or of signatures: :mod:`stripe_idempotency.verification`
makes one from an authenticated request body, :meth:`IncomingEvent.from_row` from
a stored row.

Two families of payload are events. A *snapshot* event (``"object": "event"``, the v1
webhooks) carries the object as it was in ``data.object``. A *thin* event notification
(``"object": "v2.core.event"``, event destinations) carries only a reference to the object
that changed, ``related_object``, to be fetched from the API. Both are stored, claimed and
dispatched alike, by their ``type`` (``invoice.paid``, ``v1.customer.updated``...).
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


#: ``object`` of each family of event payload.
SNAPSHOT = "event"
THIN = "v2.core.event"


def is_thin(payload: object) -> bool:
    """Whether ``payload`` is a thin event notification (``"object": "v2.core.event"``)."""
    return isinstance(payload, dict) and payload.get("object") == THIN


@dataclass(frozen=True, slots=True)
class IncomingEvent:
    """A well-formed Stripe event, ready to be claimed and processed.

    ``id`` is the id the event is stored and deduplicated under: the event's own, but for a
    thin event that names its ``snapshot_event``, that snapshot event's id (so that the two
    notifications of one change are processed once together).
    """

    id: str
    type: str
    livemode: bool
    api_version: str | None
    created: datetime | None
    payload: dict[str, Any]
    #: The endpoint that received it (``""``: the default one).
    endpoint: str = ""
    #: The connected account (Connect), or ``None``.
    account: str | None = None
    #: The id of the object the event is about, or ``None``.
    object_id: str | None = None

    @property
    def thin(self) -> bool:
        """Whether this is a thin event notification (``"object": "v2.core.event"``)."""
        return self.payload.get("object") == THIN

    @classmethod
    def from_payload(cls, payload: Any, *, endpoint: str = "") -> IncomingEvent:
        """Validate the decoded JSON of an event; raise :class:`WebhookRejected` if it is not one."""
        if isinstance(payload, dict) and payload.get("object") == THIN:
            return cls._from_thin(payload, endpoint)
        if not isinstance(payload, dict) or payload.get("object") != SNAPSHOT:
            raise WebhookRejected(
                "not_an_event",
                'The body is not a JSON object with "object": "event" or "object": "v2.core.event".',
            )
        event_id, event_type, livemode = _identity(payload)
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
            endpoint=endpoint,
            account=_token(payload.get("account")),
            object_id=_object_id(payload.get("data")),
        )

    @classmethod
    def _from_thin(cls, payload: dict[str, Any], endpoint: str) -> IncomingEvent:
        event_id, event_type, livemode = _identity(payload)
        snapshot_event = payload.get("snapshot_event")
        if snapshot_event is not None and not _token(snapshot_event):
            raise WebhookRejected(
                "invalid_id", "The event's snapshot_event is not a valid event id.", event_id=event_id
            )
        context = payload.get("context")
        if context is not None and not _token(context):
            # The connected account the event happened on: an id, or absent (the platform's own).
            raise WebhookRejected(
                "invalid_context",
                "The thin event's context is not a connected account id.",
                event_id=event_id,
            )
        related = payload.get("related_object")
        return cls(
            id=snapshot_event or event_id,
            type=event_type,
            livemode=livemode,
            api_version=None,  # thin events are unversioned
            created=_iso_timestamp(payload.get("created")),
            payload=payload,
            endpoint=endpoint,
            account=context,
            object_id=_token(related.get("id")) if isinstance(related, dict) else None,
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
            endpoint=event.endpoint,
            account=event.account,
            object_id=event.object_id,
        )


def _identity(payload: dict[str, Any]) -> tuple[str, str, bool]:
    """The id, type and livemode every event has, validated."""
    event_id = payload.get("id")
    if not isinstance(event_id, str) or not _TOKEN.fullmatch(event_id):
        raise WebhookRejected("invalid_id", "The event has no valid string id.")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not _TOKEN.fullmatch(event_type):
        raise WebhookRejected("invalid_type", "The event has no valid string type.", event_id=event_id)
    livemode = payload.get("livemode", False)
    if not isinstance(livemode, bool):
        raise WebhookRejected("invalid_livemode", "The event's livemode is not a boolean.", event_id=event_id)
    return event_id, event_type, livemode


def _token(value: Any) -> str | None:
    """An id-like string (an account, an object id), or ``None`` for anything else."""
    return value if isinstance(value, str) and _TOKEN.fullmatch(value) else None


def _object_id(data: Any) -> str | None:
    obj = data.get("object") if isinstance(data, dict) else None
    return _token(obj.get("id")) if isinstance(obj, dict) else None


def _iso_timestamp(value: Any) -> datetime | None:
    """A thin event's ``created``: an RFC 3339 date-time such as ``2025-01-31T12:00:00.000Z``."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _timestamp(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
