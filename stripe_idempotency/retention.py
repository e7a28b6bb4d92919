"""Keeping the events table small: deleting processed events past a horizon, in short batches.

What is never deleted: an event that is not processed (pending, claimed, stale, failed, dead:
each still has work or an operator's attention coming), and an event a ledger entry refers to
(the money trail outlives any clean-up; the foreign key protects it too). What a deleted
event costs: its id is forgotten, so a delivery of it that arrives after the deletion is a new
event and is processed again. Hence the horizon's floor, Stripe's own window of retries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from stripe_idempotency.models import LedgerEntry, StripeEvent

__all__ = ["STRIPE_RETRY_WINDOW", "Pruned", "cutoff", "prunable", "prune"]

#: How long Stripe goes on delivering an event it was not answered 2xx for (live mode).
STRIPE_RETRY_WINDOW = timedelta(days=3)


@dataclass(frozen=True)
class Pruned:
    deleted: int
    batches: int
    #: Processed before the cutoff but kept: ledger entries refer to them.
    kept_for_the_ledger: int


def prunable(*, using: str, before: datetime) -> QuerySet[StripeEvent]:
    """Processed before ``before``, and no ledger entry refers to it."""
    return StripeEvent.objects.using(using).filter(processed_at__lt=before).filter(~_in_the_ledger(using))


def cutoff(older_than: timedelta) -> datetime:
    """The instant before which processed events may go; ``ValueError`` for a horizon shorter
    than Stripe's retries (a delivery retried after its event is deleted is processed again)."""
    if older_than < STRIPE_RETRY_WINDOW:
        raise ValueError(
            f"{older_than} is shorter than Stripe's {STRIPE_RETRY_WINDOW.days} days of retries: "
            "a delivery Stripe retries after its event is deleted would be processed again."
        )
    return timezone.now() - older_than


def prune(
    *,
    using: str,
    before: datetime,
    batch_size: int = 1000,
    progress: Callable[[int, int], None] | None = None,
) -> Pruned:
    """Delete the :func:`prunable` events processed before ``before`` (see :func:`cutoff`),
    ``batch_size`` at a time, each batch in a transaction of its own (a short lock, whatever the
    total). ``progress(deleted so far, batches so far)`` is called after each batch.
    """
    deleted = batches = 0
    for pks in _batches(using, before, batch_size):
        with transaction.atomic(using=using):
            # The conditions again, in the DELETE: a batch read a moment ago is not trusted.
            # Only the key is read back for Django's deletion (never the payloads).
            count, _ = prunable(using=using, before=before).filter(pk__in=pks).only("pk").delete()
        deleted += count
        batches += 1
        if progress is not None:
            progress(deleted, batches)
    kept = StripeEvent.objects.using(using).filter(processed_at__lt=before).filter(_in_the_ledger(using))
    return Pruned(deleted=deleted, batches=batches, kept_for_the_ledger=kept.count())


def _in_the_ledger(using: str) -> Exists:
    return Exists(LedgerEntry.objects.using(using).filter(event=OuterRef("pk")))


def _batches(using: str, before: datetime, size: int) -> Iterator[list[int]]:
    """The primary keys to delete, ``size`` at a time, oldest first.

    A keyset walk over ``(processed_at, pk)`` through the events' index: each read starts
    where the last ended, so no batch re-reads the rows (or, on PostgreSQL, the dead index
    entries) the batches before it deleted.
    """
    after: tuple[datetime | None, int] | None = None  # processed_at is set on every row read
    while True:
        rows = prunable(using=using, before=before)
        if after is not None:
            rows = rows.filter(Q(processed_at__gt=after[0]) | Q(processed_at=after[0], pk__gt=after[1]))
        batch = list(rows.order_by("processed_at", "pk").values_list("processed_at", "pk")[:size])
        if not batch:
            return
        yield [pk for _, pk in batch]
        after = batch[-1]
        if len(batch) < size:
            return
