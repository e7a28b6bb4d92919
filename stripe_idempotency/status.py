"""The state of the pipeline in figures: what ``stripe_events_status`` prints and alerts on.

Every figure is read through the events' ``(processed_at, claim_expires_at)`` index: the
unprocessed rows (few, whatever the size of the table), the processed ones counted from
the index alone, and the lag over the rows processed within the window.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, QuerySet, Window
from django.db.models.functions import Now, RowNumber
from django.utils import timezone

from stripe_idempotency.durations import format_duration, parse_count, parse_duration
from stripe_idempotency.models import EventEffect, EventState, StripeEvent

__all__ = [
    "LIMIT_OPTIONS",
    "Lag",
    "Limits",
    "Status",
    "Waiting",
    "counts",
    "effect_counts",
    "format_duration",
    "oldest_pending_effect",
    "oldest_unprocessed",
    "parse_duration",
    "processed_since",
    "status",
    "unprocessed_counts",
    "waiting",
]

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Lag:
    """From Stripe's ``created`` to ``processed_at``, over the events processed in a window."""

    count: int
    seconds: dict[int, float] = field(default_factory=dict)  # percentile -> seconds

    def as_json(self) -> dict[str, object]:
        return {"count": self.count, **{f"p{p}": s for p, s in self.seconds.items()}}


@dataclass(frozen=True)
class Status:
    counts: dict[str, int]  # every state, zeros included
    oldest_unprocessed: timedelta | None  # since the oldest unprocessed event was received
    oldest_unprocessed_id: str | None
    window: timedelta
    #: From receipt here to processed: what the app and its receivers control.
    lag: Lag
    #: From Stripe's ``created`` to processed: the lag and Stripe's own delays (its retries, a
    #: resend from the Dashboard of an event weeks old), for reading beside ``lag``.
    since_created: Lag = field(default_factory=lambda: Lag(0))
    #: Effects by state, every state included.
    effects: dict[str, int] = field(default_factory=dict)
    #: Since the oldest effect still to run (not completed, not dead) was scheduled, and its key.
    oldest_pending_effect: timedelta | None = None
    oldest_pending_effect_key: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "counts": self.counts,
            "oldest_unprocessed_seconds": _seconds(self.oldest_unprocessed),
            "oldest_unprocessed_event_id": self.oldest_unprocessed_id,
            "window_seconds": self.window.total_seconds(),
            "lag_seconds": self.lag.as_json(),
            "since_created_seconds": self.since_created.as_json(),
            "effects": {
                "counts": self.effects,
                "oldest_pending_seconds": _seconds(self.oldest_pending_effect),
                "oldest_pending_idempotency_key": self.oldest_pending_effect_key,
            },
        }


@dataclass(frozen=True)
class Limits:
    """How far each figure may go before it is an alert; ``None`` is no limit."""

    oldest_unprocessed: timedelta | None = None
    dead: int | None = None
    failed: int | None = None
    lag_p99: timedelta | None = None
    dead_effects: int | None = None
    oldest_pending_effect: timedelta | None = None

    @classmethod
    def read(cls, given: Mapping[str, str | None], invalid: Callable[[str, ValueError], Exception]) -> Limits:
        """The limits named in ``given`` by their options (:data:`LIMIT_OPTIONS`); a value its
        parser refuses raises ``invalid(option, error)``."""
        limits: dict[str, Any] = {}
        for option, (name, parse) in LIMIT_OPTIONS.items():
            text = given.get(option)
            if text is None:
                continue
            try:
                limits[name] = parse(text)
            except ValueError as error:
                raise invalid(option, error) from error
        return cls(**limits)

    def passed(self, report: Status) -> list[str]:
        """Each limit ``report`` passes, said in words; empty when all is well."""
        alerts = []
        oldest = report.oldest_unprocessed
        if self.oldest_unprocessed is not None and oldest is not None and oldest > self.oldest_unprocessed:
            alerts.append(
                f"the oldest unprocessed event has waited {format_duration(oldest)} "
                f"(limit {_limit(self.oldest_unprocessed)})"
            )
        for state, limit in ((EventState.DEAD, self.dead), (EventState.FAILED, self.failed)):
            if limit is not None and report.counts[state] > limit:
                alerts.append(f"{report.counts[state]} {state} events (limit {limit})")
        if self.lag_p99 is not None and report.lag.count:
            p99 = timedelta(seconds=report.lag.seconds[99])
            if p99 > self.lag_p99:
                alerts.append(f"p99 lag {format_duration(p99, precise=True)} (limit {_limit(self.lag_p99)})")
        dead_effects = report.effects.get(EventState.DEAD, 0)
        if self.dead_effects is not None and dead_effects > self.dead_effects:
            alerts.append(f"{dead_effects} dead effects (limit {self.dead_effects})")
        waited = report.oldest_pending_effect
        if (
            self.oldest_pending_effect is not None
            and waited is not None
            and waited > self.oldest_pending_effect
        ):
            alerts.append(
                f"the oldest pending effect has waited {format_duration(waited)} "
                f"(limit {_limit(self.oldest_pending_effect)})"
            )
        return alerts


#: Each limit's option (the command's ``--max-...``, the health view's query parameter): the
#: :class:`Limits` field it sets and the parser of its text.
LIMIT_OPTIONS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "max_oldest_unprocessed": ("oldest_unprocessed", parse_duration),
    "max_dead": ("dead", parse_count),
    "max_failed": ("failed", parse_count),
    "max_lag_p99": ("lag_p99", parse_duration),
    "max_dead_effects": ("dead_effects", parse_count),
    "max_oldest_pending_effect": ("oldest_pending_effect", parse_duration),
}


@dataclass(frozen=True)
class Waiting:
    """What a reaper run leaves behind on purpose: failed events waiting out their backoff, and
    dead events (``MAX_ATTEMPTS`` reached), which only a replay runs again."""

    failed: int
    #: When the first of the waiting failed events is due (``None`` when none waits).
    next_due: datetime | None
    dead: int


def waiting(*, using: str, event_type: str | None = None) -> Waiting:
    """The failed events waiting for their backoff and the dead events (of ``event_type``, if
    given): two queries over the unprocessed rows, through their index."""
    events = StripeEvent.objects.using(using)
    if event_type is not None:
        events = events.filter(type=event_type)
    backing_off = events.failed().filter(next_attempt_at__gt=Now())
    figures = backing_off.aggregate(failed=Count("pk"), next_due=Min("next_attempt_at"))
    return Waiting(failed=figures["failed"], next_due=figures["next_due"], dead=events.dead().count())


def status(*, using: str, window: timedelta) -> Status:
    """Eight queries, whatever the size of the table: the states (two), the oldest unprocessed
    event, the events processed in ``window`` (both lags' counts in one), each lag's
    percentiles (one read each), the effects by state and the oldest effect still to run."""
    in_window = StripeEvent.objects.using(using).filter(processed_at__gte=Now() - window)
    dated = in_window.filter(created__isnull=False)
    sizes = in_window.aggregate(received=Count("pk"), created=Count("pk", filter=Q(created__isnull=False)))
    oldest = oldest_unprocessed(using=using)
    oldest_effect = oldest_pending_effect(using=using)
    return Status(
        counts=counts(using=using),
        oldest_unprocessed=oldest[1] if oldest else None,
        oldest_unprocessed_id=oldest[0] if oldest else None,
        window=window,
        lag=_lag(in_window, sizes["received"], since="received_at"),
        since_created=_lag(dated, sizes["created"], since="created"),
        effects=effect_counts(using=using),
        oldest_pending_effect=oldest_effect[1] if oldest_effect else None,
        oldest_pending_effect_key=oldest_effect[0] if oldest_effect else None,
    )


def effect_counts(*, using: str) -> dict[str, int]:
    """Effects by state, every state included: one query (effects go with their events when
    those are pruned, so the table stays the size of the events kept)."""
    found = {state.value: 0 for state in EventState}
    # "state" is with_state()'s annotation, which the type checker's plugin cannot see.
    by_state = EventEffect.objects.using(using).with_state().values("state")  # type: ignore[misc]
    for row in by_state.annotate(n=Count("pk")).order_by():
        found[row["state"]] = row["n"]
    return found


def oldest_pending_effect(*, using: str) -> tuple[str, timedelta] | None:
    """The effect still to run (pending, claimed, stale or failed: not completed, not dead) that
    was scheduled first: its idempotency key, and how long ago."""
    waiting = EventEffect.objects.using(using).in_state(
        EventState.PENDING, EventState.CLAIMED, EventState.STALE, EventState.FAILED
    )
    oldest = waiting.order_by("scheduled_at", "pk").values_list("idempotency_key", "scheduled_at").first()
    return (oldest[0], timezone.now() - oldest[1]) if oldest else None


def counts(*, using: str) -> dict[str, int]:
    """Events by state, every state included (two queries). The processed count reads every
    processed row (the index's, or the table's): the one figure that grows with the table."""
    found = unprocessed_counts(using=using)
    found[EventState.PROCESSED] = StripeEvent.objects.using(using).filter(processed_at__isnull=False).count()
    return found


def unprocessed_counts(*, using: str) -> dict[str, int]:
    """The unprocessed events by state, every unprocessed state included; one query over the
    unprocessed rows only, through the index, whatever the size of the table."""
    found = {state.value: 0 for state in EventState if state is not EventState.PROCESSED}
    # "state" is with_state()'s annotation, which the type checker's plugin cannot see.
    unprocessed = StripeEvent.objects.using(using).filter(processed_at__isnull=True).with_state()
    for row in unprocessed.values("state").annotate(n=Count("pk")).order_by():  # type: ignore[misc]
        found[row["state"]] = row["n"]
    return found


def processed_since(*, using: str, since: timedelta) -> int:
    """How many events were processed in the last ``since``: a range of the index."""
    return StripeEvent.objects.using(using).filter(processed_at__gte=Now() - since).count()


def oldest_unprocessed(*, using: str) -> tuple[str, timedelta] | None:
    """The event id that has waited longest to be processed, and how long since it was received."""
    unprocessed = StripeEvent.objects.using(using).filter(processed_at__isnull=True)
    oldest = unprocessed.order_by("received_at", "pk").values_list("event_id", "received_at").first()
    return (oldest[0], timezone.now() - oldest[1]) if oldest else None


def _lag(processed: QuerySet[StripeEvent], count: int, *, since: str) -> Lag:
    """The nearest-rank percentiles of ``processed_at - since`` over ``count`` rows, read in one
    query: the rows numbered in the order of their lag, and only the ranks wanted returned."""
    if not count:
        return Lag(0)
    ranks = {p: max(1, min(count, -(-p * count // 100))) for p in PERCENTILES}
    lag = ExpressionWrapper(F("processed_at") - F(since), output_field=DurationField())
    numbered = processed.annotate(lag=lag, rank=Window(RowNumber(), order_by=[lag.asc(), F("pk").asc()]))
    found = dict(numbered.filter(rank__in=set(ranks.values())).values_list("rank", "lag"))
    if not found:  # every row of the window pruned since it was counted
        return Lag(0)
    # A rank past the rows there now (some pruned in between) reads the last one there.
    last = found[max(found)]
    return Lag(count, {p: found.get(rank, last).total_seconds() for p, rank in ranks.items()})


def _limit(value: timedelta) -> str:
    # A limit is a round figure: "15m", not "15m00s".
    return re.sub(r"(?<=[dhm])00[hms]$", "", format_duration(value, precise=True))


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)
