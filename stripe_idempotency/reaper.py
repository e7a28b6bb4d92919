"""The reaper: find the events nobody is processing any more and, when asked, process them.

An event is stale when it is not processed and not under a live lease: its process died
mid-dispatch (the lease expired), a receiver raised (the claim was released) and Stripe may
have given up, or it was accepted and its task never ran. :func:`reap` is safe from several
hosts at once: each event is taken with the same single-statement claim as a delivery, so one
reaper wins and the others are told the event is busy and move on, without waiting.

``manage.py reap_stale_claims`` is this function and its printing; anything else that wants a
reaper run (a scheduler's task, a health check) calls it the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from typing import Literal

from django.db.models import QuerySet

from stripe_idempotency import effects, leases, worker
from stripe_idempotency.conf import app_settings
from stripe_idempotency.durations import format_duration
from stripe_idempotency.models import EventState, StripeEvent
from stripe_idempotency.outcomes import Outcome, error_summary
from stripe_idempotency.status import Waiting, waiting

__all__ = ["Reaped", "Step", "describe", "reap"]

#: What the reaper did with one stale event: reported it ``dead`` (``MAX_ATTEMPTS`` reached; a
#: replay runs it), ``listed`` it (no ``reprocess``), ``would`` reprocess it (a dry run), or
#: ``ran`` it (its ``outcome`` says how that went).
Action = Literal["dead", "listed", "would", "ran"]


@dataclass(frozen=True, slots=True)
class Step:
    """One stale event, as the reaper met it: the ``position``-th of ``found``."""

    event: StripeEvent
    position: int
    found: int
    action: Action
    outcome: Outcome | None = None
    #: Whether ``event`` is the row as this run's claim left it (an attempt counted).
    taken: bool = False


@dataclass(frozen=True)
class Reaped:
    """A reaper run: how many stale events it found, what it did with them, and what it left
    behind on purpose (failed events waiting out their backoff, dead ones)."""

    found: int
    #: Steps by kind: ``dead``, ``listed``, ``would``, and for the events run, each outcome's
    #: tally (``processed``, ``failed``, ``skipped``; :data:`outcomes.REPORTS`).
    tally: Counter[str]
    #: Read after the run: the dead events (listed or not) and the failed ones backing off.
    waiting: Waiting
    #: The effects run (with ``reprocess``), by :data:`~stripe_idempotency.effects.RunOutcome`.
    effects: Counter[str] = field(default_factory=Counter)

    @property
    def failed_again(self) -> bool:
        """Whether the run should exit non-zero: an event or an effect failed again, or an event is dead."""
        return worker.failed_again(self.tally, self.effects, self.waiting)


def reap(
    *,
    using: str,
    reprocess: bool = False,
    dry_run: bool = False,
    limit: int | None = None,
    min_age: float = 0,
    event_type: str | None = None,
    batch_size: int = 500,
    step: Callable[[Step], None] | None = None,
) -> Reaped:
    """Find the stale events (oldest first, at most ``limit``, claimed at least ``min_age``
    seconds ago, of ``event_type`` if given) and, with ``reprocess``, claim and process each
    one (with ``dry_run``, only say so), then run the effects due
    (:func:`stripe_idempotency.effects.due`). ``step`` is called for each event as it is
    handled.

    Reads ``batch_size`` events at a time: memory stays flat however many are stale.
    """
    stale = leases.find_stale(using=using, event_type=event_type, min_age=min_age)
    if not reprocess or dry_run:
        stale = stale.defer("payload")  # nothing is run: the payloads are not needed
    found = stale.count()  # through the index, like the query itself
    if limit is not None:
        found = min(found, limit)
    if reprocess and not dry_run:
        return _reprocess(stale, found, using, min_age, limit, event_type, batch_size, step)
    tally: Counter[str] = Counter()
    for position, event in enumerate(_in_batches(stale, batch_size, found), start=1):
        action: Action = "dead" if event.state == EventState.DEAD else "would" if reprocess else "listed"  # type: ignore[attr-defined]
        if step is not None:
            step(Step(event, position, found, action))
        tally[action] += 1
    return Reaped(found=found, tally=tally, waiting=waiting(using=using, event_type=event_type))


def _reprocess(
    stale: QuerySet[StripeEvent],
    found: int,
    using: str,
    min_age: float,
    limit: int | None,
    event_type: str | None,
    batch_size: int,
    step: Callable[[Step], None] | None,
) -> Reaped:
    """The worker's loop (:func:`stripe_idempotency.worker.work`) limited to the stale events (and
    the effects due), each taken in a batch no other reaper or worker shares; then the dead
    events, which are reported and never run."""
    numbered = count(1)
    tally: Counter[str] = Counter()

    def ran(done: worker.Done) -> None:
        if done.kind == "event" and step is not None:
            step(Step(done.row, next(numbered), found, "ran", done.outcome, taken=True))  # type: ignore[arg-type]

    not_dead = stale.filter(attempts__lt=app_settings.MAX_ATTEMPTS)
    sources = [
        worker.Source(
            "stale",
            "event",
            lambda _: not_dead,
            limit=limit,
            read=lambda _: leases.with_age(stale.model.objects.all()),
        ),
        worker.Source("effects", "effect", lambda using: effects.due(using, min_age=min_age), limit=limit),
    ]
    worked = worker.work(using=using, sources=sources, batch_size=batch_size, step=ran)
    tally.update(worked.events)
    dead = stale.filter(attempts__gte=app_settings.MAX_ATTEMPTS).defer("payload")  # listed, never run
    left = None if limit is None else max(0, limit - worked.events.total())
    for event in dead[:left] if left is not None else dead.iterator():
        if step is not None:
            step(Step(event, next(numbered), found, "dead"))
        tally["dead"] += 1
    return Reaped(
        found=found, tally=tally, waiting=waiting(using=using, event_type=event_type), effects=worked.effects
    )


def describe(event: StripeEvent, *, taken: bool = False) -> str:
    """One line for a stale event: its id, type, age, attempts and why it is stale. ``taken``:
    as it stood before this process's claim counted an attempt (a reaper's run)."""
    attempts = event.attempts - 1 if taken else event.attempts
    if event.last_error:
        why = error_summary(event.last_error)
    elif attempts == 0:
        why = "accepted, never claimed (no task ran it)"
    else:
        why = "no error recorded (lease expired)"
    return (
        f"{event.event_id} {event.type} age {format_duration(event.age)} "  # type: ignore[attr-defined]
        f"attempts {attempts}: {why}"
    )


def _in_batches(events: QuerySet[StripeEvent], size: int, limit: int) -> Iterator[StripeEvent]:
    """``events`` (ordered by id), at most ``limit`` of them, read ``size`` at a time.

    Keyset pagination (``id > the last one seen``): each batch is one indexed query, and an
    event that changes state meanwhile is neither read twice nor skipped.
    """
    last = 0
    while limit > 0:
        batch = list(events.filter(id__gt=last)[: min(size, limit)])
        yield from batch
        if len(batch) < min(size, limit):
            return
        last = batch[-1].pk
        limit -= len(batch)
