"""Effects: work outside the database (an email, a call to an API), run once past an event's commit.

A receiver's rows commit once; an email cannot be rolled back, and ``transaction.on_commit``
loses it when the process dies after the COMMIT. An effect is a row of the app's outbox
(:class:`~stripe_idempotency.models.EventEffect`), written in the receivers' own transaction::

    @effect
    def send_receipt(*, order_id: int, idempotency_key: str) -> None: ...

    send_receipt.schedule(event, order_id=order.pk)     # inside a receiver of ``event``

so it exists exactly when their work committed. After the COMMIT the process that committed
runs it, on a few threads of its own (the answer to Stripe never waits for it); a worker (the
deferred task, the reaper, ``process_stripe_events``) runs it in its own thread. Each run
claims the row as a delivery claims an event (a lease on the database clock, a fencing
token, :mod:`stripe_idempotency.leases`), calls the function with the row's arguments and
``idempotency_key``, and records success fenced by the claim. A run that raises releases the
effect with its error and a backoff; ``max_attempts`` failures make it dead. A process that
dies leaves a pending effect or an expiring lease, and the reaper runs it.

The one repeat no lease prevents: a run that did the work and died (or outlived its lease)
before recording it. The idempotency key, the same on every run, is what closes that window
for a target that honours keys (Stripe's API, most mail and payment APIs).
"""

from __future__ import annotations

import functools
import inspect
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, overload

from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections, connections, router
from django.db.models import Q, QuerySet
from django.db.models.functions import Now

from stripe_idempotency import leases, storable, telemetry
from stripe_idempotency.conf import app_settings
from stripe_idempotency.exceptions import EffectOutsideDispatch, InvalidEffect
from stripe_idempotency.log import fields, logger
from stripe_idempotency.models import EventEffect, StripeEvent
from stripe_idempotency.outcomes import error_text
from stripe_idempotency.signals import announce, effect_dead, effect_failed
from stripe_idempotency.threads import DaemonThreads

__all__ = [
    "Effect",
    "EffectOutsideDispatch",
    "InvalidEffect",
    "RunOutcome",
    "due",
    "effect",
    "registered",
    "run",
    "run_due",
    "run_in_this_thread",
    "run_taken",
    "wait_for_runs",
]

#: How a run of an effect ended: it succeeded and was recorded (``processed``); it raised and
#: will be retried (``failed``) or not (``dead``); it did its work but another run had taken
#: the effect over meanwhile (``fenced``: not recorded by this run); or it never started,
#: because another process holds the effect or nothing is left to do (``busy``).
RunOutcome = Literal["processed", "failed", "dead", "fenced", "busy"]

# The columns that name an effect, and Stripe's limit on an idempotency key.
_NAME_MAX = EventEffect._meta.get_field("name").max_length or 200
_KEY_MAX = EventEffect._meta.get_field("key").max_length or 100
_IDEMPOTENCY_KEY_MAX = EventEffect._meta.get_field("idempotency_key").max_length or 255

_registry: dict[str, Effect] = {}


class Effect:
    """A function registered as an effect (made by :func:`effect`): call it as the function,
    or :meth:`schedule` it from a receiver."""

    def __init__(self, function: Callable[..., object], *, name: str, max_attempts: int | None) -> None:
        if not name or len(name) > _NAME_MAX or ":" in name:
            raise ImproperlyConfigured(
                f"An effect's name is 1 to {_NAME_MAX} characters without ':'; got {name!r}."
            )
        if max_attempts is not None and max_attempts < 1:
            raise ImproperlyConfigured(f"Effect {name}: max_attempts must be at least 1, not {max_attempts}.")
        self.function = function
        self.name = name
        self._max_attempts = max_attempts
        self._signature = inspect.signature(function)
        try:
            self._signature.bind_partial(idempotency_key="")
        except TypeError:
            raise ImproperlyConfigured(
                f"Effect {name}: {function.__qualname__}() must take the keyword argument "
                "idempotency_key (pass it on to the target, so that a repeated run is applied once)."
            ) from None
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any, **kwargs: Any) -> object:
        return self.function(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<Effect {self.name}>"

    @property
    def max_attempts(self) -> int:
        """Failed runs after which the effect is dead: its own, or ``MAX_ATTEMPTS``."""
        return self._max_attempts or app_settings.MAX_ATTEMPTS

    def schedule(self, event: StripeEvent, *, key: str | int | None = None, **arguments: Any) -> EventEffect:
        """Store a run of this effect with ``arguments``, in the transaction of ``event``'s
        receivers, and return its row; it runs once that transaction commits.

        ``key`` tells several of one event's runs of this effect apart; it defaults to the
        order of ``schedule`` calls for this effect in the dispatch (``"0"``, ``"1"``...), the
        same on every attempt, so the ``idempotency_key`` (``"<event id>:<name>:<key>"``) is
        too. Raises :class:`EffectOutsideDispatch` outside ``event``'s dispatch, and
        :class:`InvalidEffect` for arguments the function cannot be run with or that are not
        JSON every supported database stores.
        """
        dispatch = _dispatch_of(event)
        key_text = dispatch.next_key(self.name) if key is None else _checked_key(key)
        self._check(arguments)
        idempotency_key = f"{event.event_id}:{self.name}:{key_text}"
        if len(idempotency_key) > _IDEMPOTENCY_KEY_MAX:
            raise InvalidEffect(
                f"The idempotency key {idempotency_key!r} is longer than {_IDEMPOTENCY_KEY_MAX} "
                "characters: give the effect a shorter name or key."
            )
        return dispatch.store(self, key_text, idempotency_key, arguments)

    def _check(self, arguments: dict[str, Any]) -> None:
        if "idempotency_key" in arguments:
            raise InvalidEffect(f"Effect {self.name}: idempotency_key is given by the app, not scheduled.")
        try:
            self._signature.bind(idempotency_key="", **arguments)
        except TypeError as error:
            raise InvalidEffect(f"Effect {self.name} cannot be run with these arguments: {error}.") from None
        reason = storable.problem(arguments)
        if reason is not None:
            raise InvalidEffect(
                f"Effect {self.name}'s arguments must be JSON values every database stores: {reason}."
            )


@overload
def effect(function: Callable[..., object], /) -> Effect: ...
@overload
def effect(
    *, name: str | None = None, max_attempts: int | None = None
) -> Callable[[Callable[..., object]], Effect]: ...
def effect(
    function: Callable[..., object] | None = None,
    /,
    *,
    name: str | None = None,
    max_attempts: int | None = None,
) -> Effect | Callable[[Callable[..., object]], Effect]:
    """Register ``function`` as an effect, by ``name`` (default ``"<module>.<qualname>"``).

    The function takes keyword arguments only (JSON values) and ``idempotency_key``. Define
    effects in modules every process imports at start (beside the receivers), so that the
    reaper and the workers can run what the web processes scheduled. ``max_attempts``
    overrides ``MAX_ATTEMPTS`` for this effect.
    """

    def register(function: Callable[..., object]) -> Effect:
        registered_as = name or f"{function.__module__}.{function.__qualname__}"
        made = Effect(function, name=registered_as, max_attempts=max_attempts)
        existing = _registry.get(registered_as)
        if existing is not None and _origin(existing.function) != _origin(function):
            raise ImproperlyConfigured(
                f"Two effects are named {registered_as!r}: "
                f"{_origin(existing.function)} and {_origin(function)}."
            )
        _registry[registered_as] = made
        return made

    return register if function is None else register(function)


def registered(name: str) -> Effect | None:
    """The effect registered as ``name`` in this process, if any."""
    return _registry.get(name)


def _origin(function: Callable[..., object]) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def _checked_key(key: str | int) -> str:
    text = str(key)
    if not text or len(text) > _KEY_MAX or storable.problem(text) is not None:
        raise InvalidEffect(
            f"An effect's key is 1 to {_KEY_MAX} characters of text without NUL; got {key!r}."
        )
    return text


# -- the dispatch an effect is scheduled in -----------------------------------------------------


@dataclass
class Dispatch:
    """The event whose receivers are running in this context, and the effects they stored."""

    event: StripeEvent
    using: str
    stored: list[EventEffect] = field(default_factory=list)
    _counters: Counter[str] = field(default_factory=Counter)
    _keys: set[str] = field(default_factory=set)
    # A forced replay's event has the effects its earlier, committed run stored.
    _earlier: dict[str, EventEffect] | None = None

    def next_key(self, name: str) -> str:
        key = str(self._counters[name])
        self._counters[name] += 1
        return key

    def store(self, made: Effect, key: str, idempotency_key: str, arguments: dict[str, Any]) -> EventEffect:
        if idempotency_key in self._keys:
            raise InvalidEffect(
                f"{idempotency_key} is scheduled twice in this dispatch: give each its own key."
            )
        self._keys.add(idempotency_key)
        earlier = self._earlier_effects().get(idempotency_key)
        if earlier is not None:  # a forced replay: the same key names the same effect
            return earlier
        row = EventEffect.objects.using(self.using).create(
            event=self.event,
            name=made.name,
            key=key,
            idempotency_key=idempotency_key,
            arguments=arguments,
            max_attempts=made.max_attempts,
        )
        self.stored.append(row)
        return row

    def _earlier_effects(self) -> dict[str, EventEffect]:
        if self._earlier is None:
            # Only an event processed before (a forced replay) can have committed effects: its
            # earlier attempts rolled back with theirs. One read, on such an attempt only.
            self._earlier = {}
            if self.event.attempts > 1:
                rows = EventEffect.objects.using(self.using).filter(event=self.event)
                self._earlier = {row.idempotency_key: row for row in rows}
        return self._earlier


_current: ContextVar[Dispatch | None] = ContextVar("stripe_idempotency_dispatch", default=None)


@contextmanager
def dispatching(event: StripeEvent, using: str) -> Iterator[Dispatch]:
    """Mark ``event``'s receivers as running (inside their transaction), for ``schedule``."""
    dispatch = Dispatch(event=event, using=using)
    token = _current.set(dispatch)
    try:
        yield dispatch
    finally:
        _current.reset(token)


def _dispatch_of(event: StripeEvent) -> Dispatch:
    dispatch = _current.get()
    if dispatch is None:
        raise EffectOutsideDispatch(
            "schedule() is called by a receiver of the event, while it runs: the effect is stored "
            "in the receivers' transaction, so it exists only if their work commits."
        )
    if not isinstance(event, StripeEvent):
        raise TypeError(
            f"schedule() takes the event a receiver is given (a StripeEvent), not {type(event).__name__}."
        )
    if event.pk != dispatch.event.pk:
        raise EffectOutsideDispatch(
            f"schedule() names {event.event_id!r}, but the receivers running are "
            f"{dispatch.event.event_id}'s: an effect belongs to the event being dispatched."
        )
    return dispatch


# -- running them ---------------------------------------------------------------------------------

# A few threads per process run the effects its deliveries committed, after the answer.
_runners = DaemonThreads("stripe_idempotency.effects", size=4)
_run_here: ContextVar[bool] = ContextVar("stripe_idempotency_run_effects_here", default=False)


@contextmanager
def run_in_this_thread() -> Iterator[None]:
    """Inside, effects run in the thread that committed them, right after the COMMIT: for
    workers (a task, the reaper, a command), which nobody waits on."""
    token = _run_here.set(True)
    try:
        yield
    finally:
        _run_here.reset(token)


def start(effects: Sequence[EventEffect]) -> None:
    """Run ``effects``, just committed: here inside :func:`run_in_this_thread`, else on this
    process's effect threads (the delivery's answer does not wait)."""
    if not effects:
        return
    if _run_here.get():
        _run_each(effects)
        return
    _runners.submit(functools.partial(_run_and_close, list(effects)))


def _run_and_close(effects: list[EventEffect]) -> None:
    try:
        _run_each(effects)
    finally:
        if _runners.has_waiting():
            close_old_connections()  # more to run: kept, as at the end of a request
        else:
            # Idle: this thread's connections are closed (opened again by its next job), so a
            # process keeps no idle connection per effect thread, and exits with none open.
            connections.close_all()


def _run_each(effects: Sequence[EventEffect]) -> None:
    """Run each of ``effects``; one the database stops from running (it is down, the connection
    was lost) is logged and left to the reaper, and the others are still tried. The event is
    processed whatever happens here."""
    for row in effects:
        try:
            run(row)
        except Exception:
            logger.exception(
                "Could not run effect %s after its event's commit; it is stored, and the reaper runs it.",
                row.idempotency_key,
                extra=fields(effect=row.idempotency_key, outcome="not_run"),
            )


def wait_for_runs(timeout: float = 30) -> bool:
    """Wait until the effects this process handed to its threads have run; ``False`` if
    ``timeout`` seconds ran out first. For tests, and for a process about to exit."""
    return _runners.wait_idle(timeout)


def run(row: EventEffect, *, dead_too: bool = False) -> RunOutcome:
    """Claim ``row`` and run its effect once, recording the outcome; ``busy`` if another process
    holds it or it is done (or, unless ``dead_too``, dead). Exceptions of the effect are
    recorded, never raised."""
    using = row._state.db or router.db_for_write(EventEffect)
    token = leases.take(EventEffect, row.pk, using=using, dead_too=dead_too)
    if token is None:
        return "busy"
    return run_taken(row, token, using=using)


def run_taken(row: EventEffect, token: uuid.UUID, *, using: str) -> RunOutcome:
    """Run the effect of ``row``, claimed already under ``token`` (a worker's batch,
    :func:`~stripe_idempotency.leases.take_batch`), and record the outcome as :func:`run` does."""
    attributes = {telemetry.EFFECT: row.name, telemetry.EVENT_ID: row.idempotency_key.partition(":")[0]}
    with telemetry.span("effect", **attributes) as current:
        outcome = _run_claimed(row, token, using)
        current.set_attribute(telemetry.OUTCOME, outcome)
    telemetry.count_effect_run(row.name, outcome)
    return outcome


def _run_claimed(row: EventEffect, token: uuid.UUID, using: str) -> RunOutcome:
    try:
        made = _registry.get(row.name)
        if made is None:
            raise LookupError(
                f"No effect named {row.name!r} is registered in this process: is the module that "
                "defines it imported at start?"
            )
        made.function(idempotency_key=row.idempotency_key, **row.arguments)
    except Exception as exc:
        return _failed(row, token, using, exc)
    except BaseException as exc:
        # SystemExit from a worker timeout, KeyboardInterrupt: give the effect back now rather
        # than make it wait out its lease, then go on dying.
        leases.release_row(EventEffect, row.pk, token, error_text(exc), using=using, retry_in=0)
        raise
    if leases.complete_row(EventEffect, row.pk, token, using=using):
        return "processed"
    logger.warning(
        "Effect %s ran past its lease and another run took it over; this run is not recorded.",
        row.idempotency_key,
        extra=fields(effect=row.idempotency_key, outcome="fenced"),
    )
    return "fenced"


def _failed(row: EventEffect, token: Any, using: str, exc: Exception) -> RunOutcome:
    # Read under the claim, so the backoff and the verdict count every run, ours included.
    row.attempts = EventEffect.objects.using(using).filter(pk=row.pk).values_list("attempts", flat=True).get()
    error = error_text(exc)
    retry_in = leases.retry_delay(row.attempts, max_attempts=row.max_attempts)
    if not leases.release_row(EventEffect, row.pk, token, error, using=using, retry_in=retry_in):
        return "fenced"
    row.last_error = error
    dead = row.attempts >= row.max_attempts
    logger.error(
        "Effect %s failed (run %d of %d)%s.",
        row.idempotency_key,
        row.attempts,
        row.max_attempts,
        "; it is dead: nothing runs it again by itself" if dead else "; it will be retried",
        exc_info=exc,
        extra=fields(effect=row.idempotency_key, outcome="dead" if dead else "failed", attempts=row.attempts),
    )
    announce(effect_failed, EventEffect, effect=row, error=error)
    if dead:
        announce(effect_dead, EventEffect, effect=row)
        return "dead"
    return "failed"


def due(using: str, *, min_age: float = 0) -> QuerySet[EventEffect]:
    """The effects to run now (:meth:`~stripe_idempotency.models.EventEffectQuerySet.due`), but a
    pending one scheduled less than ``PENDING_GRACE_SECONDS`` ago (the process that committed it
    runs it first) and, with ``min_age``, one scheduled or last claimed less than that many
    seconds ago. What workers and the reaper take (:mod:`stripe_idempotency.worker`)."""
    grace = timedelta(seconds=app_settings.PENDING_GRACE_SECONDS)
    rows = (
        EventEffect.objects.using(using)
        .due()
        .exclude(claimed_at__isnull=True, scheduled_at__gt=Now() - grace)
    )
    if min_age > 0:
        since = Now() - timedelta(seconds=min_age)
        rows = rows.filter(Q(claimed_at__lte=since) | Q(claimed_at__isnull=True, scheduled_at__lte=since))
    return rows


def run_due(*, using: str, min_age: float = 0, limit: int | None = None) -> Counter[RunOutcome]:
    """Run the effects :func:`due` now, oldest first, in this thread, each claimed on its own;
    a tally of the outcomes."""
    rows = due(using, min_age=min_age).order_by("pk")
    tally: Counter[RunOutcome] = Counter()
    for row in rows[:limit] if limit is not None else rows.iterator():
        tally[run(row)] += 1
    return tally
