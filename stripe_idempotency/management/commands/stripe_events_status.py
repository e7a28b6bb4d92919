"""Say how the pipeline stands: events by state, the oldest unprocessed one, the lag; alert past limits.

For cron, a Kubernetes probe or a monitor: ``--json`` for machines, and an exit status of 1
when a figure is past a limit given on the command line (each named on stderr), 0 otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from django.core.management.base import BaseCommand, CommandError, CommandParser

from stripe_idempotency.durations import format_duration, parse_duration
from stripe_idempotency.management.options import add_database_option, events_database
from stripe_idempotency.models import EventState
from stripe_idempotency.status import Lag, Limits, Status, status

T = TypeVar("T")


def _option(name: str, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except ValueError as error:
        raise CommandError(f"--{name}: {error}") from error


class Command(BaseCommand):
    help = (
        "Count Stripe events by state, give the age of the oldest unprocessed one and the lag from "
        "receipt to processed (and from Stripe's 'created'); exit with status 1 when a figure passes "
        "a --max-* limit."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", dest="as_json", help="One JSON object on stdout.")
        parser.add_argument(
            "--window", default="1h", help="The lag is over events processed this recently (default 1h)."
        )
        parser.add_argument(
            "--max-oldest-unprocessed",
            default=None,
            help="Alert when an event has waited longer than this (e.g. 15m) to be processed.",
        )
        parser.add_argument("--max-dead", default=None, help="Alert past this many dead events.")
        parser.add_argument("--max-failed", default=None, help="Alert past this many failed events.")
        parser.add_argument(
            "--max-lag-p99", default=None, help="Alert when the window's p99 lag is longer (e.g. 5m)."
        )
        parser.add_argument("--max-dead-effects", default=None, help="Alert past this many dead effects.")
        parser.add_argument(
            "--max-oldest-pending-effect",
            default=None,
            help="Alert when an effect still to run was scheduled longer ago than this (e.g. 15m).",
        )
        add_database_option(parser)

    def handle(self, *, as_json: bool, window: str, database: str | None, **options: Any) -> None:
        span = _option("window", parse_duration, window)
        report = status(using=events_database(database), window=span)
        alerts = Limits.read(options, _invalid_option).passed(report)
        if as_json:
            self.stdout.write(json.dumps({**report.as_json(), "alerts": alerts}, sort_keys=True))
        else:
            self._write(report)
        if alerts:
            raise CommandError("; ".join(alerts), returncode=1)

    def _write(self, report: Status) -> None:
        width = max(len(state) for state in report.counts)
        for state, count in report.counts.items():
            line = f"{state:<{width}}  {count:>9,}"
            bad = count and state in (EventState.DEAD, EventState.FAILED, EventState.STALE)
            self.stdout.write(self.style.ERROR(line) if bad else line)
        if report.oldest_unprocessed is None:
            self.stdout.write("Nothing unprocessed.")
        else:
            self.stdout.write(
                f"Oldest unprocessed: {report.oldest_unprocessed_id}, received "
                f"{format_duration(report.oldest_unprocessed)} ago."
            )
        window = format_duration(report.window)
        if not report.lag.count:
            self.stdout.write(f"Nothing processed in the last {window}.")
        else:
            self.stdout.write(
                f"Lag from receipt to processed, last {window} ({report.lag.count:,} events): "
                f"{_figures(report.lag)}."
            )
            if report.since_created.count:
                self.stdout.write(
                    f"From Stripe's 'created' to processed (Stripe's retries and resends included): "
                    f"{_figures(report.since_created)}."
                )
        self._write_effects(report)

    def _write_effects(self, report: Status) -> None:
        shown = ", ".join(f"{count:,} {state}" for state, count in report.effects.items() if count)
        line = f"Effects: {shown or 'none'}."
        if report.oldest_pending_effect is not None:
            line += (
                f" Oldest still to run: {report.oldest_pending_effect_key}, scheduled "
                f"{format_duration(report.oldest_pending_effect)} ago."
            )
        bad = any(
            report.effects.get(state) for state in (EventState.DEAD, EventState.FAILED, EventState.STALE)
        )
        self.stdout.write(self.style.ERROR(line) if bad else line)


def _figures(lag: Lag) -> str:
    return ", ".join(
        f"p{p} {format_duration(timedelta(seconds=s), precise=True)}" for p, s in lag.seconds.items()
    )


def _invalid_option(option: str, error: ValueError) -> CommandError:
    return CommandError(f"--{option.replace('_', '-')}: {error}")
