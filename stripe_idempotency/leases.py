"""Claims on events: who may process an event, and when. The only writer of the claim columns.

A claim is a lease: ``claim_token`` names its holder, ``claim_expires_at`` its
end. Every time comes from the database's clock, never from the instance's
own, so instances with skewed clocks still agree on who holds what.

A claim is committed on its own before any receiver runs (:func:`claim`
refuses to run inside a transaction): an instance that dies after claiming
leaves a lease that simply expires, and nobody ever waits on an uncommitted
row. The statements are each database's own (:mod:`stripe_idempotency.backends`);
the decisions are here.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from django.db import connections, router
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    Q,
    QuerySet,
    Value,
    When,
)
from django.db.models.functions import Now

from stripe_idempotency import ordering, telemetry
from stripe_idempotency.backends import for_connection
from stripe_idempotency.conf import app_settings
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import ClaimInsideTransaction, LeaseLost
from stripe_idempotency.log import fields, logger
from stripe_idempotency.models import EventEffect, EventState, StripeEvent
from stripe_idempotency.outcomes import Busy, Duplicate

__all__ = [
    "ClaimResult",
    "Claimed",
    "claim",
    "complete",
    "complete_row",
    "find_stale",
    "give_back",
    "give_way",
    "reclaim_processed",
    "release",
    "release_row",
    "retry_after",
    "retry_delay",
    "take",
    "take_batch",
    "with_age",
]


@dataclass(frozen=True, slots=True)
class Claimed:
    """This process holds the lease on ``event`` under ``token`` until it completes or releases it."""

    event: StripeEvent
    token: uuid.UUID
    using: str


ClaimResult = Claimed | Duplicate | Busy

_Leased = TypeVar("_Leased", StripeEvent, EventEffect)
_Events = TypeVar("_Events", bound=QuerySet[StripeEvent])

# A refused claim whose row looks claimable means the holder finished or
# released between the claim and the read; try again this many times before
# answering busy.
_CLAIM_ROUNDS = 3


def claim(event: IncomingEvent, *, using: str | None = None) -> ClaimResult:
    """Claim ``event`` for this process: store it if it is new, or take over its row.

    A row is taken over when it is not processed and its lease is absent
    (released after a failure) or expired (its holder died or is too slow);
    taking it over writes the delivered body, so the row always holds the
    payload its receivers last acted on (the reaper and the admin replay that).
    Must be called in autocommit mode: the claim is committed when this returns.
    """
    using = using or router.db_for_write(StripeEvent)
    connection = connections[using]
    if connection.in_atomic_block:
        raise ClaimInsideTransaction(
            "Claims must be made outside transaction.atomic(): the claim has to commit "
            "before any receiver runs."
        )
    backend = for_connection(connection)
    token = uuid.uuid4()
    for _ in range(_CLAIM_ROUNDS):
        row = backend.claim(
            StripeEvent, event, token, claimed_by=app_settings.INSTANCE_ID, ttl=app_settings.CLAIM_TTL_SECONDS
        )
        if row.event.type != event.type:
            _another_type(row.event, event, token, using)
        if row.event.claim_token == token:
            claimed = Claimed(event=row.event, token=token, using=using)
            return give_way(claimed) or claimed
        if row.event.processed_at is not None:
            return Duplicate(event_id=event.id)
        if row.lease_left is not None and row.lease_left > 0:
            return Busy(event_id=event.id, retry_after=retry_after(row.lease_left))
    return Busy(event_id=event.id, retry_after=1)


def give_way(claimed: Claimed) -> Busy | None:
    """For an event type ``ORDERING`` serialises: if another event about the same object holds a
    live lease, give this claim back as if it had never been made, and answer busy.

    The check runs after the claim has committed, so of two claims on one object the later to
    commit always sees the earlier: they never both run. Both may see each other and both
    give way; each is then retried (Stripe's next delivery, a task, the reaper). Events claimed
    under the same token (a worker's batch, run one after another) do not count as holders.
    """
    event = claimed.event
    if event.object_id is None or ordering.mode_for(event.type) is None:
        return None
    holder = (
        StripeEvent.objects.using(claimed.using)
        .about_same_object(event)
        .in_state(EventState.CLAIMED)
        .exclude(claim_token=claimed.token)
        .order_by("claim_expires_at")
        .leases_left()
        .first()
    )
    if holder is None:
        return None
    give_back(StripeEvent, [event.pk], claimed.token, using=claimed.using)
    logger.info(
        "Stripe event %s waits: another event about %s is being processed (ORDERING).",
        event.event_id,
        event.object_id,
        extra=fields(event_id=event.event_id, event_type=event.type, outcome="busy"),
    )
    return Busy(event_id=event.event_id, retry_after=retry_after(holder.total_seconds()))


def _another_type(stored: StripeEvent, event: IncomingEvent, token: uuid.UUID, using: str) -> None:
    """An id delivered again with another type: not something Stripe does, so say so, unless
    it is the same change in the other family (``customer.updated`` and the thin
    ``v1.customer.updated`` naming it: both destinations on, during a migration).

    A takeover writes the delivered body (the row holds what the receivers act
    on); the claim statement leaves ``type`` alone so that this can be seen,
    and it is written here, under the new claim, in that rare case only.
    """
    if not _same_change(stored.type, event.type):
        logger.warning(
            "Stripe event %s was delivered again with another type: stored %s, delivered %s.",
            event.id,
            stored.type,
            event.type,
            extra=fields(event_id=event.id, event_type=event.type),
        )
    if stored.claim_token == token:
        StripeEvent.objects.using(using).filter(pk=stored.pk, claim_token=token).update(type=event.type)
        stored.type = event.type


def _same_change(one: str, other: str) -> bool:
    return one.removeprefix("v1.") == other.removeprefix("v1.")


def complete(claimed: Claimed) -> None:
    """Mark the event processed, if and only if ``claimed`` still holds its lease.

    This is the fence: call it last, inside the transaction that holds the
    receivers' work. When another instance has taken the event over, nothing
    is updated and :class:`LeaseLost` is raised, so that work rolls back.
    """
    with telemetry.span("complete"):
        completed = complete_row(StripeEvent, claimed.event.pk, claimed.token, using=claimed.using)
    if not completed:
        raise LeaseLost(f"Another instance took over the lease on {claimed.event.event_id}.")


def release(claimed: Claimed, error: str) -> bool:
    """Give the lease up at once after a failure, recording ``error``.

    The next delivery can claim the event immediately rather than wait for the
    lease to run out; the reaper waits for :func:`retry_delay` first. Returns
    ``False`` when the lease was no longer ours, in which case nothing is changed.
    """
    return release_row(
        StripeEvent,
        claimed.event.pk,
        claimed.token,
        error,
        using=claimed.using,
        retry_in=retry_delay(claimed.event.attempts),
    )


# -- any table worked under leases (events, effects) ------------------------------------------


def take(model: type[EventEffect], pk: int, *, using: str, dead_too: bool = False) -> uuid.UUID | None:
    """Claim the stored row ``pk`` for this process, if it is claimable (not done, under no live
    lease) and, unless ``dead_too``, not dead: one ``UPDATE`` whose ``WHERE`` is the state's own
    definition, on the database clock (the backend's statement, built once). Returns the claim's
    token, or ``None`` if another process holds the row or nothing is left to do. Counts an
    attempt."""
    if connections[using].in_atomic_block:
        raise ClaimInsideTransaction("Claims must be made outside transaction.atomic().")
    token = uuid.uuid4()
    backend = for_connection(connections[using])
    ttl = app_settings.CLAIM_TTL_SECONDS
    claimed = backend.take(model, pk, token, claimed_by=app_settings.INSTANCE_ID, ttl=ttl, dead_too=dead_too)
    return token if claimed else None


def take_batch(
    picked: QuerySet[_Leased], *, using: str, read: QuerySet[_Leased] | None = None
) -> tuple[uuid.UUID, list[_Leased]]:
    """Claim the rows ``picked`` selects (claimable ones, oldest first, limited) for this process,
    skipping rows another worker is taking at the same moment, and read them back, in order,
    through ``read`` if given (a queryset with the annotations the caller wants).

    One token holds the batch; each row is completed or released on its own (``pk`` and the
    token). The lease of each starts now: a worker runs the batch in turn and gives back
    (:func:`give_back`) what it will not reach in time.
    """
    if connections[using].in_atomic_block:
        raise ClaimInsideTransaction("Claims must be made outside transaction.atomic().")
    token = uuid.uuid4()
    backend = for_connection(connections[using])
    ttl = app_settings.CLAIM_TTL_SECONDS
    pks = backend.take_batch(picked.using(using), token, claimed_by=app_settings.INSTANCE_ID, ttl=ttl)
    if not pks:
        return token, []
    rows = read if read is not None else picked.model._default_manager.all()
    return token, list(rows.using(using).filter(pk__in=pks, claim_token=token).order_by("pk"))


def give_back(model: type[StripeEvent | EventEffect], pks: list[int], token: uuid.UUID, *, using: str) -> int:
    """Undo ``token``'s claim on rows it never started: no lease, the attempt it counted taken
    back, and a row claimed for the first time pending again. Returns how many were ours."""
    first_claim = Q(attempts=1)
    return (
        model._default_manager.using(using)
        .filter(pk__in=pks, claim_token=token)
        .update(
            # Before ``attempts``: MySQL's SET reads the columns assigned before it, updated.
            claimed_at=Case(
                When(first_claim, then=None), default=F("claimed_at"), output_field=DateTimeField()
            ),
            claimed_by=Case(
                When(first_claim, then=Value("")), default=F("claimed_by"), output_field=CharField()
            ),
            claim_token=None,
            claim_expires_at=None,
            attempts=F("attempts") - 1,
        )
    )


def complete_row(model: type[StripeEvent | EventEffect], pk: int, token: uuid.UUID, *, using: str) -> bool:
    """Mark row ``pk`` done if ``token`` still holds it: the fence; ``False`` if it does not."""
    return for_connection(connections[using]).complete(model, pk, token)


def release_row(
    model: type[StripeEvent | EventEffect],
    pk: int,
    token: uuid.UUID,
    error: str,
    *,
    using: str,
    retry_in: float,
) -> bool:
    """Clear ``token``'s claim on row ``pk``, recording ``error`` and the next attempt ``retry_in``
    seconds from now; ``False`` if the claim was no longer ours (nothing changed)."""
    return for_connection(connections[using]).release(model, pk, token, error, retry_in=retry_in)


def retry_delay(attempts: int, *, max_attempts: int | None = None) -> float:
    """Seconds the reaper waits before its next attempt at an event (an effect) that failed
    ``attempts`` times.

    The delays double, and all of them together (``max_attempts - 1`` retries, by default
    ``MAX_ATTEMPTS - 1``) span ``RETRY_HORIZON_SECONDS``: by default Stripe's own three days
    of retries, so that an event is not declared dead while Stripe may still deliver it.
    Stripe's deliveries never wait for this: a delivery claims a failed (or dead) event at once.
    """
    retries = (app_settings.MAX_ATTEMPTS if max_attempts is None else max_attempts) - 1
    if retries < 1 or attempts < 1:
        return 0.0
    share: float = 2 ** (min(attempts, retries) - 1) / (2**retries - 1)
    return app_settings.RETRY_HORIZON_SECONDS * share


def find_stale(
    *,
    using: str | None = None,
    event_type: str | None = None,
    min_age: float = 0,
    limit: int | None = None,
) -> QuerySet[StripeEvent]:
    """Events that are not processed, not under a live lease, not waiting out a failure's
    backoff (:func:`retry_delay`; dead events are listed whatever their backoff) and not
    accepted less than ``PENDING_GRACE_SECONDS`` ago (deferred mode: their task may still
    come), oldest first, with their ``state``.

    ``min_age`` leaves alone events whose last claim is more recent than that
    many seconds (a failure Stripe will retry soon). Each row carries ``age``,
    the time since it was first received, on the database clock. Served by the
    ``stripe_event_unprocessed_idx`` index: the cost follows the number of
    unprocessed rows, not the size of the table.
    """
    # An accepted event (pending: stored, never claimed) is its task's for a grace period.
    grace = timedelta(seconds=app_settings.PENDING_GRACE_SECONDS)
    events = (
        StripeEvent.objects.using(using or router.db_for_read(StripeEvent))
        .claimable()
        # A failed event waits out its backoff (Stripe's own retries do not); a dead one is
        # listed whenever it is asked for: it is reported, never run, so its backoff is moot.
        .filter(
            Q(next_attempt_at__isnull=True)
            | Q(next_attempt_at__lte=Now())
            | Q(attempts__gte=app_settings.MAX_ATTEMPTS)
        )
        .exclude(claimed_at__isnull=True, received_at__gt=Now() - grace)
        .with_state()
    )
    if event_type is not None:
        events = events.filter(type=event_type)
    if min_age > 0:
        # Since the last claim; since arrival for an event never claimed.
        since = Now() - timedelta(seconds=min_age)
        events = events.filter(Q(claimed_at__lte=since) | Q(claimed_at__isnull=True, received_at__lte=since))
    events = with_age(events).order_by("id")
    return events[:limit] if limit is not None else events


def with_age(events: _Events) -> _Events:
    """``events``, each with ``age``: the time since it was first received, on the database clock."""
    age = ExpressionWrapper(Now() - F("received_at"), output_field=DurationField())
    return events.annotate(age=age)


def reclaim_processed(event: StripeEvent, *, using: str | None = None) -> Claimed | None:
    """Take a fresh claim on a *processed* event, making it unprocessed again (a forced replay).

    Returns ``None`` if the event is not processed, or is under a live lease.
    """
    using = using or router.db_for_write(StripeEvent)
    if connections[using].in_atomic_block:
        raise ClaimInsideTransaction("A forced replay must claim outside transaction.atomic().")
    token = uuid.uuid4()
    updated = (
        StripeEvent.objects.using(using)
        .filter(pk=event.pk, processed_at__isnull=False)
        .without_live_lease()
        .update(
            processed_at=None,
            claim_token=token,
            claimed_at=Now(),
            claimed_by=app_settings.INSTANCE_ID,
            claim_expires_at=Now() + timedelta(seconds=app_settings.CLAIM_TTL_SECONDS),
            attempts=F("attempts") + 1,
        )
    )
    if updated != 1:
        return None
    event = StripeEvent.objects.using(using).get(pk=event.pk)
    return Claimed(event=event, token=token, using=using)


def busy_retry_after(event_id: str, *, using: str) -> int:
    """The ``Retry-After`` for an event whose lease someone else holds (1 if nobody does)."""
    left = (
        StripeEvent.objects.using(using)
        .filter(event_id=event_id, processed_at__isnull=True)
        .leases_left()
        .first()
    )
    return retry_after(left.total_seconds() if left is not None else None)


def retry_after(lease_left: float | None) -> int:
    """Whole seconds to wait: the lease left rounded up, at least 1, at most the configured cap."""
    if lease_left is None or lease_left <= 0:
        return 1
    return max(1, min(app_settings.RETRY_AFTER_MAX_SECONDS, math.ceil(lease_left)))
