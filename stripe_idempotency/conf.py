"""The ``STRIPE_IDEMPOTENCY`` settings, with their defaults in one place.

Every value is read from ``django.conf.settings`` when it is asked for, never
frozen at import time, so ``override_settings`` works in tests and a settings
change needs no restart of anything but the process.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from django.conf import settings

SETTINGS_NAME = "STRIPE_IDEMPOTENCY"

#: Every key the app reads, with its default. ``INSTANCE_ID`` defaults to
#: ``"<hostname>:<pid>"``, computed per process (see :attr:`AppSettings.INSTANCE_ID`).
DEFAULTS: dict[str, Any] = {
    "WEBHOOK_SECRETS": [],
    "TOLERANCE_SECONDS": 300,
    "CLAIM_TTL_SECONDS": 300,
    "RETRY_AFTER_MAX_SECONDS": 60,
    "MAX_BODY_BYTES": 1024 * 1024,
    "LIVEMODE": None,
    "INSTANCE_ID": None,
    "MAX_ATTEMPTS": 20,
    "RETRY_HORIZON_SECONDS": 3 * 24 * 3600,
    "PROCESSING": "inline",
    "PENDING_GRACE_SECONDS": 60,
    "ENQUEUE": "stripe_idempotency.tasks.enqueue_django_task",
    "ENQUEUE_TIMEOUT_SECONDS": 5,
    "HEALTH_TOKENS": [],
    "PAYLOAD": "any",
    "ENDPOINTS": {},
    "API_KEY": None,
    "API_BASE": None,
    "ORDERING": {},
    "EXTRA_EVENT_TYPES": [],
}

#: The values of ``PROCESSING``.
PROCESSING_MODES = ("inline", "deferred")

# The host name does not change while a process runs; the pid does change
# across fork (gunicorn preloads, then forks its workers), so it is read per call.
_HOSTNAME = socket.gethostname()


class AppSettings:
    """Typed accessors for the ``STRIPE_IDEMPOTENCY`` dict.

    System checks (:mod:`stripe_idempotency.checks`) report values of the wrong
    type or range; the accessors return what is configured as it is.
    """

    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, SETTINGS_NAME, {})
        return value if isinstance(value, dict) else {}

    def get(self, key: str) -> Any:
        return self.user_settings().get(key, DEFAULTS[key])

    @property
    def WEBHOOK_SECRETS(self) -> list[str]:
        """Signing secrets (``whsec_...``); an event signed with any of them is accepted.

        Several secrets let an endpoint's secret be rolled without losing events.
        """
        value = self.get("WEBHOOK_SECRETS")
        # A lone string is a common slip; never iterate it character by character.
        return [value] if isinstance(value, str) else list(value)

    @property
    def TOLERANCE_SECONDS(self) -> int:
        """How old a signature's timestamp may be (replay protection)."""
        return int(self.get("TOLERANCE_SECONDS"))

    @property
    def CLAIM_TTL_SECONDS(self) -> float:
        """The lease: how long one instance owns an event it is processing."""
        return float(self.get("CLAIM_TTL_SECONDS"))

    @property
    def RETRY_AFTER_MAX_SECONDS(self) -> int:
        """The cap on the ``Retry-After`` header of a 503 answer."""
        return int(self.get("RETRY_AFTER_MAX_SECONDS"))

    @property
    def MAX_BODY_BYTES(self) -> int:
        """Larger request bodies are answered 413 without being read in full."""
        return int(self.get("MAX_BODY_BYTES"))

    @property
    def LIVEMODE(self) -> bool | None:
        """``True`` or ``False`` accepts only live or only test events; ``None`` both."""
        value = self.get("LIVEMODE")
        return None if value is None else bool(value)

    @property
    def MAX_ATTEMPTS(self) -> int:
        """Dispatches after which the reaper stops reprocessing an event and reports it dead."""
        return int(self.get("MAX_ATTEMPTS"))

    @property
    def RETRY_HORIZON_SECONDS(self) -> float:
        """The span of the reaper's retries of a failing event, its delays doubling (default 3 days,
        Stripe's own retry window)."""
        return float(self.get("RETRY_HORIZON_SECONDS"))

    @property
    def PROCESSING(self) -> str:
        """``"inline"``: receivers run inside Stripe's request. ``"deferred"``: the event is stored,
        acknowledged, and processed by a task (:mod:`stripe_idempotency.tasks`)."""
        return str(self.get("PROCESSING"))

    @property
    def PENDING_GRACE_SECONDS(self) -> float:
        """How long the reaper leaves an accepted, never-claimed event to its task before it
        takes the event itself (the task may be queued still, or lost)."""
        return float(self.get("PENDING_GRACE_SECONDS"))

    @property
    def ENQUEUE(self) -> str:
        """The dotted path of the callable ``(event_id, database)`` that queues an accepted
        event's task: Django's Tasks framework by default, Celery through
        ``"stripe_idempotency.contrib.celery.enqueue"``."""
        return str(self.get("ENQUEUE"))

    @property
    def PAYLOAD(self) -> str:
        """Which event payloads the default endpoint takes: ``"snapshot"`` (``"object": "event"``),
        ``"thin"`` (``"object": "v2.core.event"``) or ``"any"``."""
        return str(self.get("PAYLOAD"))

    @property
    def ENDPOINTS(self) -> dict[str, Any]:
        """Named endpoints, each served at ``webhook/<name>/``: name -> a dict with its own
        ``WEBHOOK_SECRETS`` and, defaulting to the top-level ones, ``LIVEMODE``, ``PAYLOAD`` and
        ``PROCESSING`` (:mod:`stripe_idempotency.endpoints`)."""
        value = self.get("ENDPOINTS")
        return value if isinstance(value, dict) else {}

    @property
    def API_KEY(self) -> str | None:
        """A secret or restricted API key, for fetching from Stripe only (a thin event's event
        and object); never needed to receive events."""
        value = self.get("API_KEY")
        return str(value) if value else None

    @property
    def API_BASE(self) -> str | None:
        """Where the API is, for fetching: ``None`` is Stripe's; a local fake Stripe (stripe-mock,
        localstripe) in development and tests."""
        value = self.get("API_BASE")
        return str(value) if value else None

    @property
    def ORDERING(self) -> dict[str, Any]:
        """Event type (or ``fnmatch`` pattern such as ``"customer.subscription.*"``) ->
        ``"serialize"`` or ``"skip_superseded"``: per-object ordering
        (:mod:`stripe_idempotency.ordering`)."""
        value = self.get("ORDERING")
        return value if isinstance(value, dict) else {}

    @property
    def ENQUEUE_TIMEOUT_SECONDS(self) -> float:
        """How long a deferred delivery waits for its queue (``ENQUEUE``) to take the event: past
        it the delivery is answered ``accepted`` anyway (the row is committed; the reaper takes
        it), so a broker that hangs never holds a web worker."""
        return float(self.get("ENQUEUE_TIMEOUT_SECONDS"))

    @property
    def EXTRA_EVENT_TYPES(self) -> list[str]:
        """Event types the project receives that the installed ``stripe`` does not list (newer
        than it, or the project's own): receivers may connect to them without warning W008."""
        value = self.get("EXTRA_EVENT_TYPES")
        return [value] if isinstance(value, str) else list(value)

    @property
    def HEALTH_TOKENS(self) -> list[str]:
        """Bearer tokens that may read :class:`~stripe_idempotency.health.HealthView` (monitors);
        staff with the permission to view events may read it logged in."""
        value = self.get("HEALTH_TOKENS")
        return [value] if isinstance(value, str) else [str(token) for token in value]

    @property
    def INSTANCE_ID(self) -> str:
        """Written to ``claimed_by``: which process holds a claim."""
        value = self.get("INSTANCE_ID")
        return str(value) if value else f"{_HOSTNAME}:{os.getpid()}"


app_settings = AppSettings()
