"""Keeping the events table small: deleting processed events past a horizon, in short batches.

What is never deleted: an event that is not processed (pending, claimed, stale, failed, dead:
each still has work or an operator's attention coming), an event with an effect not completed
(its row is the effect's only record; completed effects go with their event), and an event a
ledger entry refers to
(the money trail outlives any clean-up; the foreign key protects it too). What a deleted
event costs: its id is forgotten, so a delivery of it that arrives after the deletion is a new
event and is processed again. Hence the horizon's floor, Stripe's own window of retries; and
the cutoff is remembered (:class:`~stripe_idempotency.models.PruneWatermark`), so that
``sync_stripe_events`` never lists from Stripe's Events API an event it would run again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from django.db import transaction
from django.db.models import Exists, Max, OuterRef, Q, QuerySet, signals
from django.utils import timezone

from stripe_idempotency.durations import format_duration
from stripe_idempotency.models import EventEffect, LedgerEntry, PruneWatermark, StripeEvent

__all__ = ["STRIPE_RETRY_WINDOW", "Pruned", "cutoff", "prunable", "prune", "pruned_before"]

#: How long Stripe goes on delivering an event it was not answered 2xx for (live mode).
STRIPE_RETRY_WINDOW = timedelta(days=3)


@dataclass(frozen=True)
class Pruned:
    deleted: int
    batches: int
    #: Processed before the cutoff but kept: ledger entries refer to them.
    kept_for_the_ledger: int


def prunable(*, using: str, before: datetime) -> QuerySet[StripeEvent]:
    """Processed before ``before``, every effect it scheduled completed, and no ledger entry
    refers to it."""
    unfinished = _effects_of_event(using).filter(completed_at__isnull=True)
    return (
        StripeEvent.objects.using(using)
        .filter(processed_at__lt=before)
        .filter(~_in_the_ledger(using))
        .filter(~Exists(unfinished))
    )


def cutoff(older_than: timedelta) -> datetime:
    """The instant before which processed events may go; ``ValueError`` for a horizon shorter
    than Stripe's retries (a delivery retried after its event is deleted is processed again)."""
    if older_than < STRIPE_RETRY_WINDOW:
        raise ValueError(
            f"{format_duration(older_than)} is shorter than Stripe's {STRIPE_RETRY_WINDOW.days} days "
            "of retries: a delivery Stripe retries after its event is deleted would be processed again."
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
    # Asked once: an event processed before the cutoff gains no effect meanwhile (only a forced
    # replay schedules on a processed event, and it makes the event unprocessed first).
    with_effects = EventEffect.objects.using(using).filter(event__processed_at__lt=before).exists()
    for keys in _batches(using, before, batch_size):
        with transaction.atomic(using=using):
            # The conditions again, in the DELETE: a range read a moment ago is not trusted.
            count = _delete(prunable(using=using, before=before).filter(keys), with_effects=with_effects)
        deleted += count
        batches += 1
        if progress is not None:
            progress(deleted, batches)
    if deleted:
        _remember(before, using)
    kept = StripeEvent.objects.using(using).filter(processed_at__lt=before).filter(_in_the_ledger(using))
    return Pruned(deleted=deleted, batches=batches, kept_for_the_ledger=kept.count())


def pruned_before(*, using: str) -> datetime | None:
    """The latest cutoff events were pruned before (``None`` if never): events Stripe created
    before it may be forgotten here, so the sync never lists them (:mod:`stripe_idempotency.sync`)."""
    latest: datetime | None = PruneWatermark.objects.using(using).aggregate(latest=Max("pruned_before"))[
        "latest"
    ]
    return latest


def _remember(before: datetime, using: str) -> None:
    mark = PruneWatermark.objects.using(using).first()
    if mark is None:
        PruneWatermark.objects.using(using).create(pruned_before=before)
    elif mark.pruned_before < before:
        PruneWatermark.objects.using(using).filter(pk=mark.pk).update(
            pruned_before=before, updated_at=timezone.now()
        )


def _delete(batch: QuerySet[StripeEvent], *, with_effects: bool) -> int:
    """Delete ``batch``; the number deleted.

    The ledger's reference is in the batch's own ``WHERE`` (:func:`prunable`), so while the
    ledger and the effects are all that refer to events and nothing listens for their deletion,
    the batch is one ``DELETE`` statement (``with_effects``: after a read of which of its events
    have effects, and their deletion). Django's collector would read every row back and ask the
    ledger again: a third of the rows per second, each batch's locks held about three times as
    long (BENCHMARKS.md, "Pruning"). A project whose own models refer to events, or that
    listens for their deletion, gets the collector, and its ``on_delete`` rules and signals.
    """
    if _only_the_app_refers_to_events():
        # The batch's effects first (all completed: prunable says so), in the same transaction.
        # By the keys of the events that have some: MySQL refuses a DELETE whose subquery reads
        # the table it deletes from, and the batch's conditions do.
        if with_effects:
            having = batch.filter(Exists(_effects_of_event(batch.db))).values_list("pk", flat=True)
            effects = EventEffect.objects.using(batch.db).filter(event_id__in=list(having))
            effects._raw_delete(effects.db)
        return batch._raw_delete(batch.db)
    count, _ = batch.only("pk").delete()  # the key only: never the payloads
    return count


def _only_the_app_refers_to_events() -> bool:
    relations = [
        relation
        for relation in StripeEvent._meta.get_fields(include_hidden=True)
        if relation.auto_created and not relation.concrete and (relation.one_to_many or relation.one_to_one)
    ]
    listened = any(signal.has_listeners(StripeEvent) for signal in (signals.pre_delete, signals.post_delete))
    return not listened and all(
        relation.related_model in (LedgerEntry, EventEffect) for relation in relations
    )


def _effects_of_event(using: str) -> QuerySet[EventEffect]:
    return EventEffect.objects.using(using).filter(event=OuterRef("pk"))


def _in_the_ledger(using: str) -> Exists:
    return Exists(LedgerEntry.objects.using(using).filter(event=OuterRef("pk")))


def _batches(using: str, before: datetime, size: int) -> Iterator[Q]:
    """The events to delete, as ranges of about ``size`` keys each, oldest first.

    A keyset walk over ``(processed_at, pk)`` through the events' index. Each step reads two
    rows, the ``size``-th key from where the last range ended and the one after it, rather
    than all the range's keys: the range is then the DELETE's own ``WHERE``, so no key list
    travels to the database and back, and no read re-walks what the ranges before it deleted
    (on PostgreSQL, their dead index entries). The ledger is asked once, by the DELETE.
    """
    after = Q()  # the walk's start: everything
    while True:
        rows = StripeEvent.objects.using(using).filter(processed_at__lt=before).filter(after)
        # The filter on processed_at leaves out NULL, so every key read has its time.
        keys = cast("QuerySet[StripeEvent, tuple[datetime, int]]", rows.values_list("processed_at", "pk"))
        ends = list(keys.order_by("processed_at", "pk")[size - 1 : size + 1])
        if not ends:  # fewer than ``size`` left (perhaps none): the rest is the last range
            yield after
            return
        last = ends[0]
        yield after & _up_to(last)
        if len(ends) == 1:  # ``last`` was the last key of all
            return
        after = _after(last)


# A key of the walk is (processed_at, pk). Each bound repeats its processed_at alone, for the
# index to bound its scan by: the key's tie-break is an OR, which it cannot.


def _after(key: tuple[datetime, int]) -> Q:
    at, pk = key
    return Q(processed_at__gte=at) & (Q(processed_at__gt=at) | Q(processed_at=at, pk__gt=pk))


def _up_to(key: tuple[datetime, int]) -> Q:
    at, pk = key
    return Q(processed_at__lte=at) & (Q(processed_at__lt=at) | Q(processed_at=at, pk__lte=pk))
