"""Catching up from Stripe's Events API: events Stripe gave up delivering, or never delivered.

Stripe retries a delivery for three days, then stops; a disabled endpoint gets nothing at all.
Its Events API keeps the last 30 days of events. :func:`sync` lists them through the ``stripe``
library and feeds each one that is missing here, or stored and not processed, into
:func:`stripe_idempotency.processing.receive`: the claim and dispatch of a delivery, so a
delivery running at the same moment and a sync never both run an event.

The listing goes window by window (an hour of Stripe's ``created`` at a time), and each
window's events are fed oldest first: Stripe lists newest first, and receivers, like
:mod:`ordering <stripe_idempotency.ordering>`, are better served in Stripe's order. Only the
events to feed are held, never a whole window's payloads. After each window the endpoint's
:class:`~stripe_idempotency.models.EventSyncWatermark` moves to its end, so a scheduled run
without ``since`` starts where the last one finished (a few minutes earlier: see
:data:`OVERLAP`), and an interrupted run keeps what it did.

The watermark says that every event Stripe created before it was listed and stored, so it
moves only past what a run listed in full: never in a run filtered by type, and never past a
window with an event that could not be stored (``refused``), which the next run lists again.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db import router
from django.utils import timezone

from stripe_idempotency import effects, fetching, outcomes, processing, retention, verification
from stripe_idempotency.endpoints import Endpoint
from stripe_idempotency.exceptions import EventIgnored, EventsListingInvalid, WebhookRejected
from stripe_idempotency.log import fields, logger
from stripe_idempotency.models import EventState, EventSyncWatermark, StripeEvent

__all__ = ["OVERLAP", "RETENTION", "WINDOW", "Feed", "SyncReport", "listing_start", "resume_from", "sync"]

#: How long Stripe's Events API keeps an event.
RETENTION = timedelta(days=30)
#: Each listing covers this much of Stripe's ``created``.
WINDOW = timedelta(hours=1)
#: A run that resumes from the watermark starts this much before it: an event Stripe created
#: just before the last run's end may have been listed only after it (clocks differ by a little).
#: Listing it again costs a lookup; it is already stored.
OVERLAP = timedelta(minutes=5)
#: Events per page of the listing (Stripe's maximum).
PAGE_SIZE = 100


@dataclass
class Feed:
    """One event to feed in: not stored here, or stored and not processed."""

    id: str
    type: str
    created: datetime
    #: ``"missing"``, or the stored event's state (``"failed"``, ``"stale"``...).
    standing: str
    payload: dict[str, Any]


@dataclass
class SyncReport:
    """What a run found and did."""

    since: datetime
    until: datetime
    listed: int = 0
    #: Stored and processed already: nothing to do.
    already_processed: int = 0
    #: Each fed event's outcome: ``processed``, ``superseded``, ``error``, ``busy``,
    #: ``duplicate``, ``accepted`` (an :mod:`outcome's <stripe_idempotency.outcomes>` status),
    #: ``ignored`` (the endpoint's ``LIVEMODE`` refuses its mode) or ``refused`` (not a valid
    #: event for the endpoint).
    fed: Counter[str] = field(default_factory=Counter)

    #: Where the endpoint's watermark stands after the run (``None``: never moved).
    watermark: datetime | None = None

    @property
    def failed(self) -> int:
        return self.fed["error"]

    @property
    def refused(self) -> int:
        """Listed, and not stored: these are lost unless a later run lists them again."""
        return self.fed["refused"]


def resume_from(endpoint: str, *, using: str | None = None) -> datetime | None:
    """Where a run without ``since`` starts for ``endpoint``: its watermark less :data:`OVERLAP`
    (``None`` before the first run)."""
    using = using or router.db_for_read(EventSyncWatermark)
    mark = EventSyncWatermark.objects.using(using).filter(endpoint=endpoint).first()
    return None if mark is None else mark.synced_until - OVERLAP


def listing_start(since: datetime, *, using: str) -> datetime:
    """``since``, or the last prune's cutoff if that is later. Events processed before the
    cutoff are forgotten here: listed, they would run again. Stripe created each before it was
    processed here, so none listed from the cutoff on is gone."""
    forgotten = retention.pruned_before(using=using)
    return forgotten if forgotten is not None and since < forgotten else since


def sync(
    endpoint: Endpoint,
    *,
    since: datetime,
    until: datetime | None = None,
    types: Sequence[str] = (),
    dry_run: bool = False,
    using: str | None = None,
    api_key: str | None = None,
    progress: Callable[[SyncReport, datetime], None] | None = None,
    fed: Callable[[Feed, str], None] | None = None,
) -> SyncReport:
    """List the events Stripe created from ``since`` (or the last prune's cutoff, if later: the
    report's ``since`` says which) to ``until`` (default: now), of ``types`` (default: all), and
    feed each missing or unprocessed one to ``endpoint`` as a delivery would (its ``LIVEMODE``,
    ``PAYLOAD`` and ``PROCESSING``); with ``dry_run``, only find them.

    ``fed(feed, status)`` is called for each event fed (``"would process"`` in a dry run),
    ``progress(report, window_end)`` after each window. The watermark moves after each window
    of a real run that lists every type, only forward, and never past a window in which an
    event was refused. Raises :class:`EventsListingInvalid` for a listing it cannot follow.
    """
    using = using or router.db_for_write(StripeEvent)
    until = until or timezone.now()
    since = listing_start(since, using=using)
    report = SyncReport(since=since, until=until)
    stripe_client = fetching.client(api_key=api_key)
    # A listing of some types only says nothing of the others: it leaves the watermark alone.
    may_advance = not dry_run and not types
    for start, end in _windows(since, until):
        feeds = _to_feed(_listed(stripe_client, start, end, types), report, using)
        for feed in feeds:
            status = "would process" if dry_run else _feed(feed, endpoint, using)
            if not dry_run:
                report.fed[status] += 1
            if fed is not None:
                fed(feed, status)
        # Past an event that could not be stored, the watermark would hide it from every later
        # run: it stays before this window for the rest of the run.
        may_advance = may_advance and not report.refused
        if may_advance:
            _advance(endpoint.name, end, using)
        if progress is not None:
            progress(report, end)
    mark = EventSyncWatermark.objects.using(using).filter(endpoint=endpoint.name).first()
    report.watermark = None if mark is None else mark.synced_until
    return report


def _windows(since: datetime, until: datetime) -> Iterator[tuple[datetime, datetime]]:
    """``[since, until]`` as consecutive windows of :data:`WINDOW`, on whole seconds (Stripe's
    ``created`` has no fraction), the second ``until`` falls in included."""
    start = since.replace(microsecond=0)
    last = until.replace(microsecond=0) + timedelta(seconds=1)
    while start < last:
        end = min(start + WINDOW, last)
        yield start, end
        start = end


def _listed(
    stripe_client: Any, start: datetime, end: datetime, types: Sequence[str]
) -> Iterator[dict[str, Any]]:
    """Every event Stripe created in ``[start, end)``, as the API sent it (decoded JSON), in the
    API's order (newest first)."""
    params: dict[str, Any] = {
        "created": {"gte": int(start.timestamp()), "lt": int(end.timestamp())},
        "limit": PAGE_SIZE,
    }
    if len(types) == 1:
        params["type"] = types[0]
    elif types:
        params["types"] = list(types)
    events = getattr(stripe_client, "v1", stripe_client).events
    seen: set[str] = set()
    for number in itertools.count(1):
        page = events.list(params=params)
        # The response as Stripe sent it: the stored payload is the event's JSON, not the
        # library's object model of it.
        body = page.last_response.data
        entries = body.get("data") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise EventsListingInvalid(
                f"Page {number} of the listing {_span(start, end)} has no list of events."
            )
        for position, entry in enumerate(entries, start=1):
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                raise EventsListingInvalid(
                    f"Entry {position} of page {number} of the listing {_span(start, end)} is not an "
                    f"event object with an id: {json.dumps(entry)[:80]}"
                )
        new = {entry["id"] for entry in entries} - seen
        if body.get("has_more") and entries and not new:
            # The same page again (a cursor the API ignored): following it would never end.
            raise EventsListingInvalid(
                f"Page {number} of the listing {_span(start, end)} repeats events already listed "
                "and says there are more: the listing makes no progress."
            )
        seen |= new
        yield from entries
        if not body.get("has_more") or not entries:
            return
        params["starting_after"] = entries[-1]["id"]


def _span(start: datetime, end: datetime) -> str:
    return f"of events created {start:%Y-%m-%d %H:%M:%S} to {end:%H:%M:%S} UTC"


def _to_feed(listed: Iterator[dict[str, Any]], report: SyncReport, using: str) -> list[Feed]:
    """The listed events that are missing or unprocessed here, oldest first; the rest counted."""
    feeds: list[Feed] = []
    page: list[dict[str, Any]] = []

    def settle() -> None:
        ids = [event["id"] for event in page if isinstance(event.get("id"), str)]
        stored = StripeEvent.objects.using(using).filter(event_id__in=ids).with_state()
        states = {event.event_id: event.state for event in stored.only("event_id")}  # type: ignore[attr-defined]
        for event in page:
            state = states.get(str(event.get("id")))
            if state == EventState.PROCESSED:
                report.already_processed += 1
            else:
                feeds.append(
                    Feed(
                        str(event.get("id")),
                        str(event.get("type")),
                        _created(event),
                        state or "missing",
                        event,
                    )
                )
        page.clear()

    for event in listed:
        report.listed += 1
        page.append(event)
        if len(page) == PAGE_SIZE:
            settle()
    settle()
    # Stripe lists newest first: oldest first is by created and, within a second (a stable
    # sort), the listing reversed.
    feeds.reverse()
    return sorted(feeds, key=lambda feed: feed.created)


def _created(event: dict[str, Any]) -> datetime:
    created = event.get("created")
    return datetime.fromtimestamp(created if isinstance(created, int) else 0, tz=UTC)


def _feed(feed: Feed, endpoint: Endpoint, using: str) -> str:
    """Hand one event to the delivery's path; the outcome's status, as a delivery is answered."""
    try:
        event = verification.validate(json.dumps(feed.payload), endpoint)
    except WebhookRejected as rejection:
        logger.warning(
            "sync_stripe_events: %s from the Events API is not an event the endpoint takes: %s (%s).",
            feed.id,
            rejection.code,
            rejection,
            extra=fields(event_id=feed.id, outcome="rejected", code=rejection.code),
        )
        return "refused"
    except EventIgnored:
        return "ignored"
    with effects.run_in_this_thread():  # a command: nobody waits on its effects, it runs them
        outcome = processing.receive(event, using=using, mode=endpoint.processing)
    return outcomes.report(outcome).status


def _advance(endpoint: str, to: datetime, using: str) -> None:
    """Move the watermark to ``to`` unless it is there or past it already (runs overlap)."""
    mark, created = EventSyncWatermark.objects.using(using).get_or_create(
        endpoint=endpoint, defaults={"synced_until": to}
    )
    if not created and mark.synced_until < to:
        EventSyncWatermark.objects.using(using).filter(pk=mark.pk, synced_until__lt=to).update(
            synced_until=to, updated_at=timezone.now()
        )
