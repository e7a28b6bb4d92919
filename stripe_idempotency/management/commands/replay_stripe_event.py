"""Run one stored event's receivers on purpose, from its stored payload."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stripe_idempotency import effects, outcomes, processing
from stripe_idempotency.management.options import add_database_option, events_database
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.outcomes import (
    Busy,
    Duplicate,
    Failed,
    Fenced,
    Outcome,
    Processed,
    Superseded,
    error_summary,
)


class Command(BaseCommand):
    help = (
        "Process one stored Stripe event now, through the same claim as a delivery (dead events "
        "included). A processed event is run again only with --force."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event_id", help="The Stripe event id, evt_...")
        parser.add_argument(
            "--force",
            action="store_true",
            help="Run a processed event's receivers again, under a fresh claim. Their effects happen twice.",
        )
        add_database_option(parser)

    def handle(self, *, event_id: str, force: bool, database: str | None, **options: Any) -> None:
        database = events_database(database)
        try:
            event = StripeEvent.objects.using(database).get(event_id=event_id)
        except StripeEvent.DoesNotExist:
            raise CommandError(f"No stored Stripe event {event_id}.") from None
        forced = event.processed_at is not None
        if forced and not force:
            raise CommandError(
                f"{event_id} was processed at {event.processed_at:%Y-%m-%d %H:%M:%S %Z}; "
                "pass --force to run its receivers again."
            )
        with effects.run_in_this_thread():  # before the command exits, not on its daemon threads
            outcome = processing.replay(event, force=force, using=database)
        if forced and not isinstance(outcome, Busy):  # busy: it never got the event to run
            self.stderr.write(
                self.style.WARNING(
                    f"FORCED: {event_id} ({event.type}) was already processed; its receivers ran again "
                    "and their effects happened a second time (idempotent ledger references excepted)."
                )
            )
        self.stdout.write(self.style.SUCCESS(_said(event, outcome)))


def _said(event: StripeEvent, outcome: Outcome) -> str:
    """What a replay that went through says; a ``CommandError`` for one that did not."""
    event_id = event.event_id
    match outcome:
        case Processed():
            return f"Processed {event_id} ({event.type})."
        case Superseded(by=later):
            return (
                f"Completed {event_id} ({event.type}) without running its receivers: "
                f"{later}, a later event about the same object, was processed first."
            )
        case Failed(error=error):
            raise CommandError(f"{event_id} failed again: {error_summary(error)}", returncode=1)
        case Busy(retry_after=retry_after):
            raise CommandError(
                f"{event_id} is being processed by {event.claimed_by or 'another process'} right now; "
                f"try again in {retry_after} s."
            )
        case Fenced():
            raise CommandError(f"{event_id} was taken over by another process while it ran; nothing kept.")
        case Duplicate():
            raise CommandError(f"{event_id} was processed meanwhile; pass --force to run it again.")
        case _:
            raise CommandError(f"{event_id}: {outcomes.report(outcome).status}.")
