"""Process accepted Stripe events from the events table: the worker of ``"ENQUEUE": None``.

Takes pending events (oldest first), then stale or failed ones past their backoff, then due
effects, in batches that workers on any number of hosts share without overlap, and runs each
through the one path (:mod:`stripe_idempotency.worker`). Exits when no work is left; with
``--follow`` it waits for more (woken by NOTIFY on PostgreSQL, polling elsewhere). SIGTERM or
SIGINT finishes the row in hand, gives back what was taken and not started, and exits 0.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper

from stripe_idempotency import worker
from stripe_idempotency.durations import format_duration
from stripe_idempotency.management.options import add_database_option, events_database
from stripe_idempotency.management.summaries import effects_run, left_behind
from stripe_idempotency.status import waiting
from stripe_idempotency.wakeup import Wakeup
from stripe_idempotency.worker import Done, Worked

# The signals that ask a worker to stop: systemd's and Kubernetes' SIGTERM, a terminal's Ctrl-C.
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Command(BaseCommand):
    help = (
        "Process accepted Stripe events from the events table (pending ones first, then stale or "
        "failed ones past their backoff, then due effects) and exit when none is left; with "
        "--follow, keep waiting for more. Any number of workers may run on any number of hosts. "
        "Exits with status 1 when an event or an effect failed, or an event is dead; 0 after "
        "SIGTERM or SIGINT."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--follow",
            action="store_true",
            help="Keep running: on PostgreSQL woken by NOTIFY as an event is accepted, elsewhere "
            "looking again every --interval seconds.",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            metavar="SECONDS",
            help="With --follow, the longest wait before looking for work again (default 1).",
        )
        parser.add_argument(
            "--max-events",
            type=int,
            default=None,
            metavar="N",
            help="Exit after running N events and effects (a worker recycled by its supervisor).",
        )
        parser.add_argument(
            "--max-seconds",
            type=float,
            default=None,
            metavar="SECONDS",
            help="Start nothing new after SECONDS; the row in hand finishes.",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=10,
            help="Rows of each kind taken at a time (default 10); each batch's leases start when "
            "it is taken, so keep batch-size x the slowest receiver well under CLAIM_TTL_SECONDS.",
        )
        add_database_option(parser)

    def handle(
        self,
        *,
        follow: bool,
        interval: float,
        max_events: int | None,
        max_seconds: float | None,
        batch_size: int,
        database: str | None,
        verbosity: int,
        **options: Any,
    ) -> None:
        if interval <= 0:
            raise CommandError("--interval must be greater than 0.")
        if max_events is not None and max_events < 1:
            raise CommandError("--max-events must be at least 1.")
        if max_seconds is not None and max_seconds <= 0:
            raise CommandError("--max-seconds must be greater than 0.")
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1.")
        using = events_database(database)
        self.verbosity = verbosity
        self.progress = _Progress(self.stdout if verbosity >= 1 else None)
        stop = threading.Event()
        with _stopped_by_signals(stop, self.stderr.write):
            worked = worker.work(
                using=using,
                batch_size=batch_size,
                max_items=max_events,
                max_seconds=max_seconds,
                follow=follow,
                interval=interval,
                stop=stop,
                step=self.progress.step,
                waiting=lambda how: self._say_waiting(using, how, interval),
            )
        self.progress.finish()
        left = waiting(using=using)
        summary = _summary(worked) + f" Left: {left_behind(left)}." + effects_run(worked.effects)
        if not worked.stopped and worker.failed_again(worked.events, worked.effects, left):
            raise CommandError(summary, returncode=1)
        if verbosity >= 1:
            self.stdout.write(summary)

    def _say_waiting(self, using: str, how: Wakeup, interval: float) -> None:
        if self.verbosity >= 1:
            self.progress.clear()
            self.stdout.write(
                f"Waiting for work on database {using!r}: {how.how}, looking again every "
                f"{interval:g} s. SIGTERM or Ctrl-C stops after the row in hand."
            )


def _summary(worked: Worked) -> str:
    events = worked.events
    head = "Stopped" if worked.stopped else "Done"
    return (
        f"{head}: {events.total()} event{'s' if events.total() != 1 else ''} run "
        f"({events['processed']} processed, {events['failed']} failed, {events['skipped']} skipped)."
    )


class _Progress:
    """On a terminal, one line rewritten as rows are run; elsewhere (a log, a pipe) nothing but
    the summary the command ends with."""

    def __init__(self, stream: OutputWrapper | None) -> None:
        self.stream = stream if stream is not None and stream.isatty() else None
        self.worked = Worked()
        self.started = time.monotonic()
        self.shown = 0.0

    def step(self, done: Done) -> None:
        self.worked.count(done)
        now = time.monotonic()
        if self.stream is None or now - self.shown < 0.2:
            return
        self.shown = now
        events, effects = self.worked.events, self.worked.effects
        self.stream.write(
            f"\r{events['processed']} processed, {events['failed']} failed, {events['skipped']} skipped; "
            f"{effects.total()} effects; {format_duration(timedelta(seconds=now - self.started))}\x1b[K",
            ending="",
        )
        self.stream.flush()

    def clear(self) -> None:
        if self.stream is not None and self.shown:
            self.stream.write("\r\x1b[K", ending="")
            self.shown = 0.0

    def finish(self) -> None:
        self.clear()


@contextmanager
def _stopped_by_signals(stop: threading.Event, say: Callable[[str], None]) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` (the worker finishes the row in hand) instead of killing
    the process mid-receiver; a second one kills it as usual. In the main thread only (a test
    calling the command from another thread keeps the process's handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def asked_to_stop(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # asked twice: the operator means it
            raise KeyboardInterrupt
        stop.set()
        say(f"{signal.Signals(signum).name}: stopping after the row in hand.")

    previous = {number: signal.signal(number, asked_to_stop) for number in _STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
