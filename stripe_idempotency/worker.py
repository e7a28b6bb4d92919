"""The events table as the queue: workers that take accepted events, retries and due effects
from the database itself, with no broker.

Every accepted event is already a durable row with a lease column, and the claim is the hard
part of a queue done right (a lease on the database clock, a fencing token, a backoff, dead
rows). A worker :func:`work`\\ s through three kinds of work, each a :class:`Source`, in this
order in every round so that none starves another:

1. pending events (accepted, never claimed), oldest first;
2. stale events (a lease ran out) and failed ones past their backoff, not dead;
3. due effects (:mod:`stripe_idempotency.effects`).

Each round takes a batch of each kind with :func:`~stripe_idempotency.leases.take_batch`
(``FOR UPDATE SKIP LOCKED``: workers on any number of hosts take disjoint batches, none
waiting for another) and runs every row through the one path: an event through
:func:`~stripe_idempotency.processing.run_taken` (the receivers in a transaction, fenced by the
claim), an effect through :func:`~stripe_idempotency.effects.run_taken`. A batch's leases all
start when it is taken: what the worker would reach after half a lease, and what a stop
request leaves unstarted, is given back at once rather than left to expire.

``manage.py process_stripe_events`` is this loop and its printing; ``reap_stale_claims
--reprocess`` is the same loop limited to stale and failed work
(:func:`stripe_idempotency.reaper.reap`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from django.db import DatabaseError, close_old_connections, connections
from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from stripe_idempotency import effects, leases, outcomes, processing, wakeup
from stripe_idempotency.conf import app_settings
from stripe_idempotency.leases import Claimed
from stripe_idempotency.log import fields, logger
from stripe_idempotency.models import EventEffect, EventState, StripeEvent
from stripe_idempotency.outcomes import Busy
from stripe_idempotency.status import Waiting

__all__ = [
    "Done",
    "Source",
    "Worked",
    "failed_again",
    "pending_events",
    "retries",
    "work",
    "worker_sources",
]

Kind = Literal["event", "effect"]


@dataclass(frozen=True, slots=True)
class Done:
    """One row a worker ran: an event (``outcome`` an :mod:`~stripe_idempotency.outcomes` value)
    or an effect (``outcome`` a :data:`~stripe_idempotency.effects.RunOutcome`)."""

    kind: Kind
    row: StripeEvent | EventEffect
    outcome: Any
    #: What the row counts as in the tallies: ``processed``, ``failed``, ``skipped`` for events
    #: (:data:`outcomes.REPORTS`), the run's outcome for effects.
    tally: str


@dataclass(frozen=True)
class Source:
    """One kind of work: the claimable rows to take, oldest first (a query built for a database
    alias), and whether they are events or effects. ``limit`` caps the rows taken from it in
    one :func:`work` (``None``: no cap)."""

    name: str
    kind: Kind
    rows: Callable[[str], QuerySet[Any]]
    limit: int | None = None
    #: How the rows taken are read back (their annotations), if not plainly.
    read: Callable[[str], QuerySet[Any]] | None = None


def pending_events(using: str) -> QuerySet[StripeEvent]:
    """Accepted, never claimed: the events ``"ENQUEUE": None`` leaves to the workers."""
    return StripeEvent.objects.using(using).in_state(EventState.PENDING)


def retries(using: str) -> QuerySet[StripeEvent]:
    """Stale events (their lease ran out) and failed ones whose backoff is over; never dead ones
    (a replay runs those)."""
    return (
        StripeEvent.objects.using(using)
        .in_state(EventState.STALE, EventState.FAILED)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now()))
    )


def worker_sources() -> list[Source]:
    """What ``process_stripe_events`` works on, in this order each round."""
    return [
        Source("pending", "event", pending_events),
        Source("retries", "event", retries),
        Source("effects", "effect", effects.due),
    ]


@dataclass
class Worked:
    """What one :func:`work` did."""

    #: Events run, by tally (``processed``, ``failed``, ``skipped``).
    events: Counter[str] = field(default_factory=Counter)
    #: Effects run, by :data:`~stripe_idempotency.effects.RunOutcome`.
    effects: Counter[str] = field(default_factory=Counter)
    #: Whether a stop request (SIGTERM, SIGINT) ended it.
    stopped: bool = False

    @property
    def handled(self) -> int:
        return self.events.total() + self.effects.total()

    def count(self, done: Done) -> None:
        (self.events if done.kind == "event" else self.effects)[done.tally] += 1


def failed_again(events: Counter[str], effects: Counter[str], left: Waiting) -> bool:
    """Whether a run of the worker or the reaper should exit non-zero: an event or an effect
    failed (again), or an event is dead (``left``, read after the run)."""
    return bool(events["failed"] or left.dead or effects["failed"] or effects["dead"])


def work(
    *,
    using: str,
    sources: Sequence[Source] | None = None,
    batch_size: int = 10,
    max_items: int | None = None,
    max_seconds: float | None = None,
    follow: bool = False,
    interval: float = 1.0,
    stop: threading.Event | None = None,
    step: Callable[[Done], None] | None = None,
    waiting: Callable[[wakeup.Wakeup], None] | None = None,
) -> Worked:
    """Take and run work from ``sources`` (default :func:`worker_sources`) on database ``using``
    until none is left, or, with ``follow``, until ``stop`` is set or a budget is spent.

    ``batch_size`` rows of each source are taken at a time. ``max_items`` caps the rows run
    (events and effects), ``max_seconds`` the time to start new ones; the row in hand always
    finishes. Idle, a following worker waits for a notification (PostgreSQL) or ``interval``
    seconds; ``waiting`` is told how, once, before the first wait. ``step`` is called after
    each row is run. Effects committed by the events run here run in this thread, before the
    next event.
    """
    stop = stop or threading.Event()
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    run = _Run(using=using, sources=list(sources or worker_sources()), batch_size=batch_size, stop=stop)
    run.budget = max_items
    # Listening before the first look: what is announced from here on wakes the first wait.
    waiter = wakeup.for_database(using, stop) if follow else None
    told = False
    try:
        if waiter is not None:
            waiter.prepare()
        with effects.run_in_this_thread():
            while not run.over(deadline):
                if _round(run, step, follow):
                    continue
                if waiter is None:
                    break
                if not told and waiting is not None:
                    waiting(waiter)
                told = True
                left = interval if deadline is None else min(interval, deadline - time.monotonic())
                if left > 0:
                    waiter.wait(left)
    finally:
        if waiter is not None:
            waiter.close()
    run.worked.stopped = stop.is_set()
    return run.worked


def _round(run: _Run, step: Callable[[Done], None] | None, follow: bool) -> bool:
    """One round of ``run``. A following worker outlives its database: an error on the way
    (a restart, a failover, a dropped connection) is logged, the connection closed so that the
    next round opens a new one, and the round counts as idle; what it held is released or
    runs out its lease, as when a worker dies."""
    if not follow:
        return run.round(step)
    close_old_connections()  # past CONN_MAX_AGE, or broken: replaced, as between requests
    try:
        return run.round(step)
    except DatabaseError as exc:
        logger.warning(
            "The worker lost its database %r (%s); it tries again in a moment.",
            run.using,
            exc,
            extra=fields(code="database_error"),
        )
        connections[run.using].close()
        return False


@dataclass
class _Run:
    using: str
    sources: list[Source]
    batch_size: int
    stop: threading.Event
    budget: int | None = None
    worked: Worked = field(default_factory=Worked)
    taken: Counter[str] = field(default_factory=Counter)

    def over(self, deadline: float | None) -> bool:
        return (
            self.stop.is_set()
            or (self.budget is not None and self.budget <= 0)
            or (deadline is not None and time.monotonic() >= deadline)
        )

    def round(self, step: Callable[[Done], None] | None) -> bool:
        """Take a batch of each source in turn and run it; whether anything was run (an event
        that only gave way to another about its object was not)."""
        progressed = False
        for source in self.sources:
            if self.stop.is_set() or (self.budget is not None and self.budget <= 0):
                break
            for done in self._batch(source):
                self.worked.count(done)
                progressed = progressed or not isinstance(done.outcome, Busy)
                if step is not None:
                    step(done)
        return progressed

    def _batch(self, source: Source) -> Iterator[Done]:
        size = self.batch_size
        for cap in (self.budget, None if source.limit is None else source.limit - self.taken[source.name]):
            if cap is not None:
                size = min(size, cap)
        if size <= 0:
            return
        picked = source.rows(self.using).order_by("pk")[:size]
        read = source.read(self.using) if source.read is not None else None
        token, rows = leases.take_batch(picked, using=self.using, read=read)
        self.taken[source.name] += len(rows)
        taken_at = time.monotonic()
        for position, row in enumerate(rows):
            late = time.monotonic() - taken_at > app_settings.CLAIM_TTL_SECONDS / 2
            if self.stop.is_set() or late:
                # Not started: back to the queue now, for this worker's next round or another's.
                leases.give_back(type(row), [r.pk for r in rows[position:]], token, using=self.using)
                self.taken[source.name] -= len(rows) - position
                return
            if self.budget is not None:
                self.budget -= 1
            yield self._run(source.kind, row, token)

    def _run(self, kind: Kind, row: Any, token: Any) -> Done:
        if kind == "effect":
            outcome: Any = effects.run_taken(row, token, using=self.using)
            return Done(kind, row, outcome, outcome)
        outcome = processing.run_taken(Claimed(event=row, token=token, using=self.using))
        return Done(kind, row, outcome, outcomes.report(outcome).tally)
