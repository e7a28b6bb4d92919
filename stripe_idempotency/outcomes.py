"""What became of an event, and how each outcome is told: to Stripe, in the admin, by the reaper.

Every way in (the webhook view, the reaper, a replay, the admin's action) ends
with one of these values, and :data:`REPORTS` is the one table that says what
each means to an HTTP client, to an operator reading the admin and to one
reading the reaper's output.
"""

from __future__ import annotations

import traceback
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


# -- answers that are not a processing outcome: nothing of the event was processed -------------


@dataclass(frozen=True, slots=True)
class Ignored:
    """Verified, and not for this endpoint (a test event on a live-mode endpoint): nothing is
    stored, and the answer is a 200, so that Stripe neither retries nor disables the endpoint."""

    event_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """Refused before anything was stored: not signed by Stripe, not an event, too large, or
    (the health view) a caller without access. ``code`` names the reason; ``detail`` says more
    where it helps the caller fix the request."""

    code: str
    http_status: int
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The database could not be reached or refused the work: nothing was processed, and the
    caller must come back (after ``retry_after`` seconds, when given)."""

    event_id: str | None = None
    retry_after: int | None = None


#: Everything an HTTP answer of this app's can say: a processing outcome, or one of the answers
#: given before (or instead of) processing.
Reply = Outcome | Ignored | Rejected | Unavailable


@dataclass(frozen=True, slots=True)
class Report:
    """How one kind of outcome is told."""

    #: The ``status`` of the JSON answer, and its HTTP status.
    status: str
    http_status: int
    #: Whether the answer carries ``Retry-After`` (the request may succeed later).
    retry: bool
    #: The reaper's column of its summary line.
    tally: str = ""
    #: The reaper's verb for the event's line ("Reprocessed", "Skipped") and what it adds after it.
    reaper_verb: str = ""
    reaper_result: str = ""
    #: The admin action's message (``%(ids)s`` the event ids) and its level. The answers given
    #: before processing (ignored, rejected, unavailable) reach neither the reaper nor the admin.
    admin_message: str = ""
    admin_level: int = levels.INFO


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

REPORTS: dict[type[Reply], Report] = {
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
    # A 200: a 4xx would be retried for three days, then have the endpoint disabled.
    Ignored: Report(status="ignored", http_status=200, retry=False),
    # The HTTP status is the rejection's own (400, 403, 405, 413...); 400 unless it says.
    Rejected: Report(status="rejected", http_status=400, retry=False),
    Unavailable: Report(status="unavailable", http_status=503, retry=True),
}


def report(outcome: Reply) -> Report:
    """The row of :data:`REPORTS` for ``outcome``."""
    return REPORTS[type(outcome)]


def event_id(outcome: Outcome) -> str:
    """The Stripe event id an outcome is about."""
    if isinstance(outcome, Duplicate | Busy | Accepted):
        return outcome.event_id
    return outcome.event.event_id


def retry_after(outcome: Reply) -> int | None:
    """Seconds after which asking again may succeed, for the answers that have them."""
    return outcome.retry_after if isinstance(outcome, Busy | Fenced | Unavailable) else None


def http_status(reply: Reply) -> int:
    """The HTTP status of ``reply``'s answer: its row's, or a rejection's own."""
    return reply.http_status if isinstance(reply, Rejected) else report(reply).http_status


def body(reply: Reply) -> dict[str, str]:
    """The JSON body of ``reply``'s answer: ``status`` (its row's), and what names the event or
    the reason."""
    said = {"status": report(reply).status}
    if isinstance(reply, Rejected):
        said["error"] = reply.code
        if reply.detail is not None:
            said["detail"] = reply.detail
    elif isinstance(reply, Ignored):
        said["reason"] = reply.reason
    elif isinstance(reply, Unavailable):
        if reply.event_id is not None:
            said["event_id"] = reply.event_id
    else:
        said["event_id"] = event_id(reply)
    return said


def headers(reply: Reply) -> dict[str, str]:
    """The headers of ``reply``'s answer: ``Retry-After`` (whole seconds) where its row retries."""
    seconds = retry_after(reply) if report(reply).retry else None
    return {} if seconds is None else {"Retry-After": str(seconds)}


#: The most of a traceback a row keeps (``last_error``): enough to find the failing receiver or
#: effect, without letting one runaway error message grow the row without bound.
LAST_ERROR_MAX_CHARS = 8000


def error_text(exc: BaseException) -> str:
    """``exc``'s traceback as a row records it: its end (where the exception's type and message
    are) when it is longer than :data:`LAST_ERROR_MAX_CHARS`."""
    return truncated("".join(traceback.format_exception(exc)))


def truncated(text: str) -> str:
    """``text`` cut to :data:`LAST_ERROR_MAX_CHARS` from its start, keeping its end."""
    if len(text) <= LAST_ERROR_MAX_CHARS:
        return text
    return "…" + text[-(LAST_ERROR_MAX_CHARS - 1) :]


def error_summary(error: str) -> str:
    """The line of a recorded traceback that names the exception: its last non-blank line
    (what the admin's list, the reaper and a replay show of ``Failed.error``/``last_error``)."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""
