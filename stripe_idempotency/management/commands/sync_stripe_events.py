"""Catch up from Stripe's Events API: process every event Stripe created since a date (or since
the last run) that is missing here or not processed, through the delivery's own claim.

Schedule it (hourly, say) beside the reaper: the reaper finishes what was received; this
finds what never was (an endpoint down past Stripe's three days of retries, or disabled).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import stripe
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from stripe_idempotency import endpoints, sync
from stripe_idempotency.durations import MAX_DURATION, InvalidValue, format_duration, parse_duration
from stripe_idempotency.exceptions import EventsListingInvalid
from stripe_idempotency.management.options import add_database_option, events_database

# A progress line at most this often.
PROGRESS_SECONDS = 5.0


class Command(BaseCommand):
    help = (
        "Process the events Stripe's Events API lists since --since (or since the last run) that "
        "are missing here or not processed, through the same claim as a delivery."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--since",
            help="A date or time (2026-12-01, 2026-12-01T08:00Z) or a duration back from now (3d, 12h). "
            "Default: where the last run for the endpoint ended. Stripe keeps 30 days.",
        )
        parser.add_argument(
            "--type",
            action="append",
            default=[],
            dest="types",
            help="Only events of this type (Stripe's patterns, such as invoice.*, allowed); repeatable.",
        )
        parser.add_argument(
            "--endpoint",
            default=endpoints.DEFAULT,
            help="Feed the events to this endpoint of ENDPOINTS (its LIVEMODE and PROCESSING apply, "
            "and its rows name it). Default: the default endpoint.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="List what would be processed; process nothing."
        )
        add_database_option(parser)

    def handle(
        self,
        *,
        since: str | None,
        types: list[str],
        endpoint: str,
        dry_run: bool,
        database: str | None,
        verbosity: int,
        **options: Any,
    ) -> None:
        using = events_database(database)
        target = self._endpoint(endpoint)
        now = timezone.now()
        start = self._window(since, endpoint, using, now)
        span = f"created {start:%Y-%m-%d %H:%M:%S} to {now:%Y-%m-%d %H:%M:%S} UTC"
        if verbosity >= 1:
            kinds = f" of type {', '.join(types)}" if types else ""
            self.stdout.write(f"Listing Stripe events{kinds} {span} ({format_duration(now - start)}).")
        report = self._run(target, start, now, types, dry_run, using, verbosity)
        summary = self._summary(report, span, dry_run)
        if report.refused:
            raise CommandError(
                f"{summary} {report.refused:,} listed event{'s' if report.refused != 1 else ''} could "
                f"not be stored (logged, with the reason): {self._held(report)}",
                returncode=1,
            )
        if report.failed:
            raise CommandError(summary, returncode=1)
        if verbosity >= 1:
            self.stdout.write(summary)
            if types and not dry_run:
                self.stdout.write(
                    "The watermark is not moved by a run of some types only: the next run without "
                    "--since lists every type from where it stands."
                )

    def _endpoint(self, name: str) -> endpoints.Endpoint:
        try:
            target = endpoints.endpoint(name)
        except endpoints.UnknownEndpoint:
            raise CommandError(f"--endpoint {name!r}: no such endpoint in ENDPOINTS.") from None
        if not target.accepts_family(thin=False):
            raise CommandError(
                f"--endpoint {name!r} takes thin events only; the Events API lists snapshot events."
            )
        return target

    def _window(self, since: str | None, endpoint: str, using: str, now: datetime) -> datetime:
        """Where the listing starts: ``--since``, or where the last run left off; never before
        the last prune's cutoff, and said when Stripe keeps nothing that old."""
        asked = self._start(since, endpoint, using)
        start = sync.listing_start(asked, using=using)
        if start > asked:
            self.stderr.write(
                self.style.WARNING(
                    f"Events processed here before {start:%Y-%m-%d %H:%M:%S} UTC were pruned "
                    "(prune_stripe_events): the listing starts there, so that none of them runs again."
                )
            )
        if start >= now:
            raise CommandError(f"--since {since}: that is not in the past.")
        if now - start > sync.RETENTION:
            self.stderr.write(
                self.style.WARNING(
                    f"Stripe keeps events for {sync.RETENTION.days} days: nothing older than "
                    f"{now - sync.RETENTION:%Y-%m-%d %H:%M} UTC will be listed."
                )
            )
        return start

    def _run(
        self,
        target: endpoints.Endpoint,
        start: datetime,
        now: datetime,
        types: list[str],
        dry_run: bool,
        using: str,
        verbosity: int,
    ) -> sync.SyncReport:
        last_report = time.monotonic()

        def progress(report: sync.SyncReport, window_end: datetime) -> None:
            nonlocal last_report
            if verbosity >= 1 and time.monotonic() - last_report >= PROGRESS_SECONDS:
                self.stdout.write(
                    f"  up to {window_end:%Y-%m-%d %H:%M} UTC: {report.listed:,} listed, "
                    f"{sum(report.fed.values()):,} fed"
                )
                last_report = time.monotonic()

        def fed(feed: sync.Feed, status: str) -> None:
            line = f"{feed.id} {feed.type} created {feed.created:%Y-%m-%d %H:%M:%S} ({feed.standing})"
            if dry_run:
                self.stdout.write(f"Would process {line}")
            elif status == "error":
                self.stdout.write(
                    self.style.ERROR(f"{line}: failed (left to the reaper; see its last error)")
                )
            elif verbosity >= 1:
                self.stdout.write(f"{line}: {status}")

        try:
            return sync.sync(
                target,
                since=start,
                until=now,
                types=types,
                dry_run=dry_run,
                using=using,
                progress=progress,
                fed=fed,
            )
        except ImproperlyConfigured as error:
            raise CommandError(str(error)) from error
        except EventsListingInvalid as error:
            raise CommandError(
                f"Stripe's Events API answered a listing that cannot be followed: {error} Nothing "
                "after it was fed; without --since, the next run lists it again."
            ) from error
        except stripe.StripeError as error:
            # Every window before the failing one is done, and the watermark says so.
            raise CommandError(
                f"Stripe's Events API failed: {error.user_message or error!r}. Nothing is lost: "
                "run again (without --since, it resumes after the last hour it finished)."
            ) from error

    def _held(self, report: sync.SyncReport) -> str:
        if report.watermark is None:
            return "there is no watermark yet; the next run needs --since again."
        return (
            f"the watermark stays at {report.watermark:%Y-%m-%d %H:%M:%S} UTC, before the first of "
            "them, so the next run lists them again."
        )

    def _start(self, since: str | None, endpoint: str, using: str) -> datetime:
        if since is None:
            resumed = sync.resume_from(endpoint, using=using)
            if resumed is None:
                raise CommandError(
                    f"No earlier run for the {endpoint or 'default'} endpoint to resume from: "
                    "give --since for the first one (e.g. --since 3d)."
                )
            return resumed
        return parse_since(since)

    def _summary(self, report: sync.SyncReport, span: str, dry_run: bool) -> str:
        head = f"{report.listed:,} events listed ({span}): {report.already_processed:,} processed already"
        if dry_run:
            would = report.listed - report.already_processed
            return f"{head}, {would:,} would be processed; nothing changed (dry run)."
        outcomes = ", ".join(f"{count:,} {status}" for status, count in sorted(report.fed.items()))
        return f"{head}; fed {sum(report.fed.values()):,}: {outcomes or 'none'}."


def parse_since(text: str) -> datetime:
    """A date, a date and time (UTC unless it says otherwise) or a duration back from now."""
    try:
        return timezone.now() - parse_duration(text)
    except InvalidValue:
        pass
    try:
        moment = parse_datetime(text)
        day = parse_date(text) if moment is None else None
    except ValueError:  # well formed, not a real date (a 13th month)
        moment = day = None
    if moment is None and day is not None:
        moment = datetime(day.year, day.month, day.day)
    if moment is None:
        raise CommandError(
            f"--since {text!r}: give a date (2026-12-01), a time (2026-12-01T08:00Z) "
            f"or a duration (3d, 12h; at most {MAX_DURATION.days}d)."
        )
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)
