"""Find events nobody is processing any more, and (with --reprocess) process them.

An event is stale when it is not processed and not under a live lease: its
process died mid-dispatch (the lease expired), or a receiver raised (the
claim was released) and Stripe may have given up. Run this from cron or a
scheduler; it is safe from several hosts at once, because each event is
taken with the same single-statement claim as a delivery: one reaper wins,
the others are told the event is busy and move on, without waiting.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stripe_idempotency import outcomes
from stripe_idempotency.conf import app_settings
from stripe_idempotency.management.options import add_database_option, events_database
from stripe_idempotency.management.summaries import effects_run, left_behind
from stripe_idempotency.outcomes import Failed, Superseded, error_summary
from stripe_idempotency.reaper import Reaped, Step, describe, reap


class Command(BaseCommand):
    help = (
        "List Stripe events that are not processed and not under a live claim; with --reprocess, "
        "claim and process each one, then run the effects due. Exits with status 1 when an event "
        "or an effect failed again, or an event is dead (MAX_ATTEMPTS reached)."
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
        add_database_option(parser)

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
        self.verbosity = verbosity
        report = reap(
            using=events_database(database),
            reprocess=reprocess,
            dry_run=dry_run,
            limit=limit,
            min_age=min_age,
            event_type=event_type,
            batch_size=batch_size,
            step=self._say,
        )
        summary = _summary(report, reprocess, dry_run) + effects_run(report.effects)
        if report.failed_again:
            raise CommandError(summary, returncode=1)
        if verbosity >= 1:
            self.stdout.write(summary)

    def _say(self, step: Step) -> None:
        """One line per stale event: dead and failed ones always, the others unless -v 0."""
        line = f"[{step.position}/{step.found}] " if step.found > 1 else ""
        line += describe(step.event, taken=step.taken)
        if step.action == "dead":
            limit, event_id = app_settings.MAX_ATTEMPTS, step.event.event_id
            self.stdout.write(
                self.style.ERROR(
                    f"{line}: DEAD after {step.event.attempts} attempts (MAX_ATTEMPTS {limit}); "
                    f"run `manage.py replay_stripe_event {event_id}` once it is fixed"
                )
            )
            return
        if step.outcome is None:
            if self.verbosity >= 1:
                self.stdout.write(f"Would reprocess {line}" if step.action == "would" else line)
            return
        report = outcomes.report(step.outcome)
        text = f"{report.reaper_verb} {line}: {report.reaper_result}"
        if isinstance(step.outcome, Superseded):
            text += f" ({step.outcome.by})"
        if isinstance(step.outcome, Failed):
            self.stdout.write(self.style.ERROR(f"{text}: {error_summary(step.outcome.error)}"))
        elif self.verbosity >= 1:
            style = self.style.SUCCESS if report.status == "processed" else str
            self.stdout.write(style(text))


def _summary(report: Reaped, reprocess: bool, dry_run: bool) -> str:
    left = report.waiting
    if not report.found:  # what waits, if anything, is the news
        if left.dead:
            return f"No stale events due; {left_behind(left)}."
        return f"No stale events; {left_behind(left)}." if left.failed else "No stale events."
    head = f"{report.found} stale event{'s' if report.found != 1 else ''}"
    parts = []
    if reprocess and dry_run:
        parts.append(f"would reprocess {report.tally['would']}")
    elif reprocess:
        tally = report.tally
        parts.append(
            f"{tally['processed']} processed, {tally['failed']} failed again, {tally['skipped']} skipped"
        )
    return f"{head}: {', '.join([*parts, left_behind(left)])}."
