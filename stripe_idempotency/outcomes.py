"""What became of an event, and how each outcome is told: to Stripe, in the admin, by the reaper.

Every way in (the webhook view, the reaper, a replay, the admin's action) ends
with one of these values, and :data:`REPORTS` is the one table that says what
each means to an HTTP client, to an operator reading the admin and to one
reading the reaper's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.contrib.messages import constants as levels

if TYPE_CHECKING:
    from stripe_idempotency.models import StripeEvent


@dataclass(frozen=True, slots=True)
class Processed:
    """Every receiver ran and their work committed with ``processed_at``."""

    event: StripeEvent


@dataclass(frozen=True, slots=True)
class Superseded:
    """Completed without running the receivers: ``by``, a later event about the same object,
    was processed first (``ORDERING``'s ``"skip_superseded"``)."""

    event: StripeEvent
    by: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A receiver raised: all receivers' work rolled back, the claim was released."""

    event: StripeEvent
    error: str


@dataclass(frozen=True, slots=True)
class Fenced:
    """The lease ran out and another instance took the event over: this run's work rolled back."""

    event: StripeEvent
    retry_after: int


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The event was processed already; nothing is to be done."""

    event_id: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another instance holds a live lease on the event; ask again in ``retry_after`` seconds."""

    event_id: str
    retry_after: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """Deferred processing: the event is stored (committed) and a task will process it."""

    event_id: str


Outcome = Processed | Superseded | Failed | Fenced | Duplicate | Busy | Accepted


@dataclass(frozen=True, slots=True)
class Report:
    """How one kind of outcome is told."""

    #: The ``status`` of the JSON answer, and its HTTP status.
    status: str
    http_status: int
    #: Whether the answer carries ``Retry-After`` (the request may succeed later).
    retry: bool
    #: The reaper's column of its summary line.
    tally: str
    #: The reaper's verb for the event's line ("Reprocessed", "Skipped") and what it adds after it.
    reaper_verb: str
    reaper_result: str
    #: The admin action's message (``%(ids)s`` the event ids) and its level.
    admin_message: str
    admin_level: int


# Fenced and busy are one answer: someone else has the event now.
_TAKEN = Report(
    status="busy",
    http_status=503,
    retry=True,
    tally="skipped",
    reaper_verb="Skipped",
    reaper_result="taken by another process",
    admin_message="Skipped, being processed by another process: %(ids)s.",
    admin_level=levels.WARNING,
)

REPORTS: dict[type[Outcome], Report] = {
    Processed: Report(
        status="processed",
        http_status=200,
        retry=False,
        tally="processed",
        reaper_verb="Reprocessed",
        reaper_result="processed",
        admin_message="Processed: %(ids)s.",
        admin_level=levels.SUCCESS,
    ),
    Superseded: Report(
        status="superseded",
        http_status=200,
        retry=False,
        tally="processed",
        reaper_verb="Reprocessed",
        reaper_result="superseded by a later event, receivers not run",
        admin_message="Completed without running receivers, a later event was processed first: %(ids)s.",
        admin_level=levels.SUCCESS,
    ),
    # No error text to the caller: it lands in Stripe's dashboard. It is in the
    # row's last_error and the logs.
    Failed: Report(
        status="error",
        http_status=500,
        retry=False,
        tally="failed",
        reaper_verb="Reprocessed",
        reaper_result="failed again",
        admin_message="Failed again (see each event's last error): %(ids)s.",
        admin_level=levels.ERROR,
    ),
    Busy: _TAKEN,
    Fenced: _TAKEN,
    Accepted: Report(
        status="accepted",
        http_status=200,
        retry=False,
        tally="skipped",
        reaper_verb="Skipped",
        reaper_result="accepted for a task",
        admin_message="Accepted, a task will process them: %(ids)s.",
        admin_level=levels.INFO,
    ),
    Duplicate: Report(
        status="duplicate",
        http_status=200,
        retry=False,
        tally="skipped",
        reaper_verb="Skipped",
        reaper_result="processed meanwhile",
        admin_message="Skipped, already processed: %(ids)s.",
        admin_level=levels.INFO,
    ),
}


def report(outcome: Outcome) -> Report:
    """The row of :data:`REPORTS` for ``outcome``."""
    return REPORTS[type(outcome)]


def event_id(outcome: Outcome) -> str:
    """The Stripe event id an outcome is about."""
    if isinstance(outcome, Duplicate | Busy | Accepted):
        return outcome.event_id
    return outcome.event.event_id


def retry_after(outcome: Outcome) -> int | None:
    """Seconds after which asking again may succeed, for the outcomes that have them."""
    return outcome.retry_after if isinstance(outcome, Busy | Fenced) else None


def error_summary(error: str) -> str:
    """The line of a recorded traceback that names the exception: its last non-blank line
    (what the admin's list, the reaper and a replay show of ``Failed.error``/``last_error``)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
