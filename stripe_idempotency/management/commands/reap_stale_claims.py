"""Find events nobody is processing any more, and (with --reprocess) process them.

An event is stale when it is not processed and not under a live lease: its
process died mid-dispatch (the lease expired), or a receiver raised (the
claim was released) and Stripe may have given up. Run this from cron or a
scheduler; it is safe from several hosts at once, because each event is
taken with the same single-statement claim as a delivery: one reaper wins,
the others are told the event is busy and move on, without waiting.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import router
from django.db.models import QuerySet
from django.utils import timezone

from stripe_idempotency import leases, outcomes, processing
from stripe_idempotency.conf import app_settings
from stripe_idempotency.durations import format_duration
from stripe_idempotency.models import EventState, StripeEvent
from stripe_idempotency.outcomes import Failed, Superseded
from stripe_idempotency.status import Waiting, waiting


class Command(BaseCommand):
    help = (
        "List Stripe events that are not processed and not under a live claim; with --reprocess, "
        "claim and process each one. Exits with status 1 when an event failed again or is dead "
        "(MAX_ATTEMPTS reached)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--reprocess", action="store_true", help="Claim and process each stale event.")
        parser.add_argument("--dry-run", action="store_true", help="Change nothing; say what would be done.")
        parser.add_argument(
            "--limit", type=int, default=None, help="At most this many events (oldest first)."
        )
        parser.add_argument(
            "--min-age",
            type=float,
            default=0,
            metavar="SECONDS",
            help="Skip events claimed less than SECONDS ago (leave fresh failures to Stripe's retries).",
        )
        parser.add_argument("--type", dest="event_type", default=None, help="Only events of this type.")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=500,
            help="Events read from the database at a time (memory stays flat however many are stale).",
        )
        parser.add_argument(
            "--database",
            default=None,
            help="Database alias (default: the one the database routers choose for events).",
        )

    def handle(
        self,
        *,
        reprocess: bool,
        dry_run: bool,
        limit: int | None,
        min_age: float,
        event_type: str | None,
        batch_size: int,
        database: str | None,
        verbosity: int,
        **options: Any,
    ) -> None:
        if limit is not None and limit < 1:
            raise CommandError("--limit must be at least 1.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        if min_age < 0:
            raise CommandError("--min-age cannot be negative.")
        max_attempts = app_settings.MAX_ATTEMPTS
        # Where events are written: reading them from a replica could list some already done.
        database = database or router.db_for_write(StripeEvent)
        stale = leases.find_stale(using=database, event_type=event_type, min_age=min_age)
        if not reprocess or dry_run:
            # Nothing is run: the payloads are not needed.
            stale = stale.defer("payload")
        found = stale.count()  # through the index, like the query itself
        if limit is not None:
            found = min(found, limit)
        if not found:
            left = waiting(using=database, event_type=event_type)
            if left.dead:
                raise CommandError(f"No stale events due; {_left_behind(left)}.", returncode=1)
            if verbosity >= 1:
                self.stdout.write(
                    f"No stale events; {_left_behind(left)}." if left.failed else "No stale events."
                )
            return

        tally = {"processed": 0, "failed": 0, "skipped": 0, "dead": 0, "would": 0}
        events = _in_batches(stale, batch_size, found)
        for position, event in enumerate(events, start=1):
            progress = f"[{position}/{found}] " if found > 1 else ""
            line = f"{progress}{_describe(event)}"
            if event.state == EventState.DEAD:  # type: ignore[attr-defined]
                tally["dead"] += 1
                self.stdout.write(
                    self.style.ERROR(
                        f"{line}: DEAD after {event.attempts} attempts (MAX_ATTEMPTS {max_attempts}); "
                        f"run `manage.py replay_stripe_event {event.event_id}` once it is fixed"
                    )
                )
            elif not reprocess:
                if verbosity >= 1:
                    self.stdout.write(line)
            elif dry_run:
                tally["would"] += 1
                if verbosity >= 1:
                    self.stdout.write(f"Would reprocess {line}")
            else:
                self._reprocess(event, line, tally, verbosity)

        left = waiting(using=database, event_type=event_type)
        summary = _summary(found, tally, reprocess, dry_run, left)
        if tally["failed"] or left.dead:
            raise CommandError(summary, returncode=1)
        if verbosity >= 1:
            self.stdout.write(summary)

    def _reprocess(self, event: StripeEvent, line: str, tally: dict[str, int], verbosity: int) -> None:
        outcome = processing.reprocess(event)
        report = outcomes.report(outcome)
        tally[report.tally] += 1
        text = f"{report.reaper_verb} {line}: {report.reaper_result}"
        if isinstance(outcome, Superseded):
            text += f" ({outcome.by})"
        if isinstance(outcome, Failed):
            self.stdout.write(self.style.ERROR(f"{text}: {_last_line(outcome.error)}"))
        elif verbosity >= 1:
            style = self.style.SUCCESS if report.status == "processed" else str
            self.stdout.write(style(text))


def _in_batches(events: QuerySet[StripeEvent], size: int, limit: int) -> Iterator[StripeEvent]:
    """``events`` (ordered by id), at most ``limit`` of them, read ``size`` at a time.

    Keyset pagination (``id > the last one seen``): each batch is one indexed
    query, and an event that changes state meanwhile is neither read twice nor
    skipped, so memory stays flat in the number of stale events.
    """
    last = 0
    while limit > 0:
        batch = list(events.filter(id__gt=last)[: min(size, limit)])
        yield from batch
        if len(batch) < min(size, limit):
            return
        last = batch[-1].pk
        limit -= len(batch)


def _describe(event: StripeEvent) -> str:
    if event.last_error:
        error = _last_line(event.last_error)
    elif event.claimed_at is None:
        error = "accepted, never claimed (no task ran it)"
    else:
        error = "no error recorded (lease expired)"
    return (
        f"{event.event_id} {event.type} age {format_duration(event.age)} "  # type: ignore[attr-defined]
        f"attempts {event.attempts}: {error}"
    )


def _summary(found: int, tally: dict[str, int], reprocess: bool, dry_run: bool, left: Waiting) -> str:
    head = f"{found} stale event{'s' if found != 1 else ''}"
    parts = []
    if reprocess and dry_run:
        parts.append(f"would reprocess {tally['would']}")
    elif reprocess:
        parts.append(
            f"{tally['processed']} processed, {tally['failed']} failed again, {tally['skipped']} skipped"
        )
    return f"{head}: {', '.join([*parts, _left_behind(left)])}."


def _left_behind(left: Waiting) -> str:
    """The dead events (all of them, listed or not) and the failed ones waiting out a backoff."""
    text = f"{left.dead} dead"
    if left.failed and left.next_due is not None:
        due = format_duration(left.next_due - timezone.now())
        text += (
            f", {left.failed} failed waiting for {'its' if left.failed == 1 else 'their'} backoff "
            f"(the next due in {due}, {left.next_due:%Y-%m-%d %H:%M} UTC)"
        )
    return text


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
