"""Delete processed events past a horizon, in short batches, to keep the events table small.

Never an unprocessed, claimed, failed or dead event, never one a ledger entry refers to, and
never with a horizon shorter than Stripe's three days of retries. Schedule it daily.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stripe_idempotency.durations import format_duration, parse_duration
from stripe_idempotency.management.options import add_database_option, events_database
from stripe_idempotency.retention import cutoff, prunable, prune

# A progress line at most this often, however small the batches.
PROGRESS_SECONDS = 5.0


class Command(BaseCommand):
    help = (
        "Delete Stripe events processed longer ago than --older-than (at least 3 days), in batches; "
        "unprocessed events and those ledger entries refer to are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            required=True,
            help="Events processed longer ago than this (e.g. 30d, 720h) are deleted; at least 3d.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Delete nothing; say how many would go.")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=1000,
            help="Events deleted per transaction (default 1000): each batch holds its locks briefly.",
        )
        add_database_option(parser)

    def handle(
        self,
        *,
        older_than: str,
        dry_run: bool,
        batch_size: int,
        database: str | None,
        verbosity: int,
        **options: Any,
    ) -> None:
        try:
            horizon = parse_duration(older_than)
        except ValueError as error:
            raise CommandError(f"--older-than: {error}") from error
        try:
            before = cutoff(horizon)
        except ValueError as error:
            raise CommandError(f"--older-than: {error}") from error
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        using = events_database(database)
        when = f"processed before {before:%Y-%m-%d %H:%M} UTC (older than {format_duration(horizon)})"
        if dry_run:
            count = prunable(using=using, before=before).count()
            self.stdout.write(f"Would delete {count:,} events {when}; nothing deleted (dry run).")
            return
        if verbosity >= 1:
            self.stdout.write(f"Deleting events {when}, {batch_size:,} at a time.")
        last_report = time.monotonic()

        def progress(deleted: int, batches: int) -> None:
            nonlocal last_report
            if verbosity >= 1 and time.monotonic() - last_report >= PROGRESS_SECONDS:
                self.stdout.write(f"  {deleted:,} deleted so far ({batches:,} batches)")
                last_report = time.monotonic()

        done = prune(using=using, before=before, batch_size=batch_size, progress=progress)
        self.stdout.write(f"Deleted {done.deleted:,} events {when}, in {done.batches:,} batches.")
        if done.kept_for_the_ledger:
            self.stdout.write(f"Kept {done.kept_for_the_ledger:,} of them that ledger entries refer to.")
