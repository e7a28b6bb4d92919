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
from typing import Literal

from django.db.models import QuerySet

from stripe_idempotency import effects, leases, outcomes, processing, worker
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
    (:func:`stripe_idempotency.effects.run_due`). ``step`` is called for each event as it is
    handled.

    Reads ``batch_size`` events at a time: memory stays flat however many are stale.
    """
    stale = leases.find_stale(using=using, event_type=event_type, min_age=min_age)
    if not reprocess or dry_run:
        stale = stale.defer("payload")  # nothing is run: the payloads are not needed
    found = stale.count()  # through the index, like the query itself
    if limit is not None:
        found = min(found, limit)
    tally: Counter[str] = Counter()
    with effects.run_in_this_thread():  # the effects of the events it runs, before it exits
        for position, event in enumerate(_in_batches(stale, batch_size, found), start=1):
            tally[_reap_one(event, position, found, reprocess, dry_run, step)] += 1
    ran: Counter[str] = Counter()
    if reprocess and not dry_run:
        ran.update(effects.run_due(using=using, min_age=min_age, limit=limit))
    return Reaped(found=found, tally=tally, waiting=waiting(using=using, event_type=event_type), effects=ran)


def _reap_one(
    event: StripeEvent,
    position: int,
    found: int,
    reprocess: bool,
    dry_run: bool,
    step: Callable[[Step], None] | None,
) -> str:
    """Do what the run asks with one stale event; what it counts as in the tally."""
    outcome = None
    if event.state == EventState.DEAD:  # type: ignore[attr-defined]
        action: Action = "dead"
    elif not reprocess:
        action = "listed"
    elif dry_run:
        action = "would"
    else:
        action = "ran"
        outcome = processing.reprocess(event)
    if step is not None:
        step(Step(event, position, found, action, outcome))
    return outcomes.report(outcome).tally if outcome is not None else action


def describe(event: StripeEvent) -> str:
    """One line for a stale event: its id, type, age, attempts and why it is stale."""
    if event.last_error:
        why = error_summary(event.last_error)
    elif event.claimed_at is None:
        why = "accepted, never claimed (no task ran it)"
    else:
        why = "no error recorded (lease expired)"
    return (
        f"{event.event_id} {event.type} age {format_duration(event.age)} "  # type: ignore[attr-defined]
        f"attempts {event.attempts}: {why}"
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
