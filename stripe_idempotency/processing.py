"""Run an event's receivers once, under its claim, and record the outcome.

This is the one path every event takes, whoever asks: the webhook view, the
reaper, a replay, the admin's action. It is the supported way for a project's
own code to feed events in:

* :func:`receive` takes an :class:`~stripe_idempotency.events.IncomingEvent` as a
  delivery does: it claims the event and, if the claim is ours, processes it, or in
  deferred mode hands it to :func:`accept`;
* :func:`accept` stores an event for a task to process (deferred mode);
* :func:`reprocess` claims and processes a stored row, from its stored payload (the
  task, the reaper, a replay);
* :func:`process` runs a claim it is given (a forced replay's).

Each returns an :mod:`outcome <stripe_idempotency.outcomes>`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from django.db import DatabaseError, connections, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from stripe_idempotency import effects, leases, ordering, outcomes, queueing, telemetry, wakeup
from stripe_idempotency.backends import for_connection
from stripe_idempotency.conf import app_settings
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import ClaimInsideTransaction, LeaseLost
from stripe_idempotency.leases import Claimed
from stripe_idempotency.log import fields, logger
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.outcomes import (
    Accepted,
    Busy,
    Duplicate,
    Failed,
    Fenced,
    Outcome,
    Processed,
    Superseded,
    error_text,
    truncated,
)
from stripe_idempotency.signals import (
    announce,
    event_dead,
    event_failed,
    event_processed,
    event_received,
    registered_signal,
)

__all__ = [
    "accept",
    "dispatch",
    "process",
    "receive",
    "replay",
    "reprocess",
    "run_taken",
]


def receive(
    event: IncomingEvent, *, using: str | None = None, mode: Literal["inline", "deferred"] | None = None
) -> Outcome:
    """Take ``event`` as a delivery: ``"inline"`` claims it and, if the claim is ours, processes
    it; ``"deferred"`` stores it for a task (:func:`accept`, outcome ``Accepted``). ``mode``
    defaults to the ``PROCESSING`` setting."""
    if (mode or app_settings.PROCESSING) == "deferred":
        return accept(event, using=using)
    with telemetry.span("claim"):
        result = leases.claim(event, using=using)
    if isinstance(result, Claimed):
        return process(result)
    return result


def accept(event: IncomingEvent, *, using: str | None = None) -> Accepted | Duplicate:
    """Store ``event`` unclaimed and queue a task to process it (``"PROCESSING": "deferred"``);
    with ``"ENQUEUE": None`` the row waits for ``process_stripe_events`` (:mod:`~stripe_idempotency.worker`).

    The row is committed when this returns (autocommit: one statement on
    PostgreSQL and SQLite), so an acknowledgement never outruns it. An event
    stored before and not yet processed is queued again: a delivery Stripe
    retries is another chance for a lost task, and a task that finds the
    event done or taken does nothing. A processed event is a ``Duplicate``.
    """
    using = using or router.db_for_write(StripeEvent)
    connection = connections[using]
    if connection.in_atomic_block:
        raise ClaimInsideTransaction(
            "Events must be accepted outside transaction.atomic(): the row has to commit before the answer."
        )
    queued = app_settings.ENQUEUE is not None
    with telemetry.span("accept"):
        # No queue: the events table is one, and the insert wakes its workers (NOTIFY).
        notify = None if queued else wakeup.CHANNEL
        if not for_connection(connection).insert_unclaimed(StripeEvent, event, notify=notify):
            processed = StripeEvent.objects.using(using).filter(event_id=event.id, processed_at__isnull=False)
            if processed.exists():
                return Duplicate(event_id=event.id)
    if queued:
        with telemetry.span("enqueue"):
            queueing.enqueue(event.id, using)
    return Accepted(event_id=event.id)


def reprocess(event: StripeEvent, *, using: str | None = None) -> Outcome:
    """Claim a stored event and process it again from its stored payload.

    For the reaper, a replay, an admin action: the same claim and the same
    processing as a delivery, so a live lease is respected (``Busy``), a
    processed event is left alone (``Duplicate``) and failures are recorded.
    """
    attributes = {telemetry.EVENT_ID: event.event_id, telemetry.EVENT_TYPE: event.type}
    with telemetry.span("reprocess", **attributes) as current:
        outcome = receive(IncomingEvent.from_row(event), using=using or event._state.db, mode="inline")
        current.set_attribute(telemetry.OUTCOME, outcomes.report(outcome).status)
    return outcome


def run_taken(claimed: Claimed) -> Outcome:
    """Process an event a worker took in a batch (:func:`~stripe_idempotency.leases.take_batch`),
    as :func:`reprocess` processes one it claims: an event ``ORDERING`` serialises gives way to
    another about the same object that holds a live lease (``Busy``, the claim given back)."""
    attributes = {telemetry.EVENT_ID: claimed.event.event_id, telemetry.EVENT_TYPE: claimed.event.type}
    with telemetry.span("reprocess", **attributes) as current:
        outcome: Outcome = leases.give_way(claimed) or process(claimed)
        current.set_attribute(telemetry.OUTCOME, outcomes.report(outcome).status)
    return outcome


def replay(event: StripeEvent, *, force: bool = False, using: str | None = None) -> Outcome:
    """Run a stored event again from its stored payload: an unprocessed one as the reaper does
    (:func:`reprocess`), a processed one only with ``force``.

    A forced replay takes a fresh claim on the processed event, which makes it unprocessed
    until its receivers commit again: their effects happen a second time (idempotent ledger
    references excepted). Without ``force`` a processed event is a ``Duplicate``; a forced
    replay that meets another claim on the event is ``Busy``.
    """
    using = using or event._state.db
    if event.processed_at is None or not force:
        return reprocess(event, using=using)
    claimed = leases.reclaim_processed(event, using=using)
    if claimed is None:
        return Busy(event_id=event.event_id, retry_after=1)
    return process(claimed)


def process(claimed: Claimed) -> Processed | Superseded | Failed | Fenced:
    """Dispatch the claimed event's receivers in one transaction, fenced by the claim.

    ``event_received`` receivers run first, then those of the event's type.
    The same transaction marks the event processed, only if the claim is
    still ours. Every way out of here either completes the claim or gives it
    up: a receiver's exception releases it (recording the error), and so does
    anything that interrupts the process short of killing it.
    """
    event = claimed.event
    with telemetry.processing_timer(event) as timing:
        outcome = _process(claimed)
        timing["result"] = type(outcome).__name__.lower()
    if isinstance(outcome, Processed | Superseded):
        telemetry.record_lag(event)
    return outcome


def _process(claimed: Claimed) -> Processed | Superseded | Failed | Fenced:
    event = claimed.event
    callback_failures: list[str] = []
    try:
        with transaction.atomic(using=claimed.using):
            later = _superseding(event)
            with effects.dispatching(event, claimed.using) as current:
                if later is None:
                    dispatch(event)
            leases.complete(claimed)
            if later != event.superseded_by:  # a forced replay that ran the receivers clears it
                _record_superseded(claimed, later)
            _guard_commit_callbacks(connections[claimed.using], event, callback_failures)
    except LeaseLost:
        logger.warning(
            "Lease on Stripe event %s was lost while its receivers ran; their work was rolled back.",
            event.event_id,
            extra=fields(event_id=event.event_id, event_type=event.type, outcome="fenced"),
        )
        return Fenced(event=event, retry_after=leases.busy_retry_after(event.event_id, using=claimed.using))
    except Exception as exc:
        logger.exception(
            "A receiver failed for Stripe event %s (%s).",
            event.event_id,
            event.type,
            extra=fields(
                event_id=event.event_id, event_type=event.type, outcome="failed", attempts=event.attempts
            ),
        )
        error = error_text(exc)
        if leases.release(claimed, error):
            announce(event_failed, StripeEvent, event=event, error=error)
            if event.attempts >= app_settings.MAX_ATTEMPTS:
                announce(event_dead, StripeEvent, event=event)
        return Failed(event=event, error=error)
    except BaseException as exc:
        # SystemExit from a worker timeout, KeyboardInterrupt: give the event
        # back now rather than make it wait out its lease, then go on dying.
        try:
            leases.release(claimed, error_text(exc))
        except Exception:
            logger.exception(
                "Could not release the claim on %s; its lease will expire.",
                event.event_id,
                extra=fields(event_id=event.event_id, event_type=event.type),
            )
        raise
    if callback_failures:
        _record_callback_failures(claimed, callback_failures)
    announce(event_processed, StripeEvent, event=event)
    effects.start(current.stored)  # committed with the receivers' work: now they may run
    if later is not None:
        return Superseded(event=event, by=later)
    return Processed(event=event)


def _superseding(event: StripeEvent) -> str | None:
    """For a type ``ORDERING`` says ``"skip_superseded"``: the id of a later event about the same
    object that is processed already, if any (its receivers saw a newer state than this one
    carries). Asked under the claim, inside the transaction that completes it."""
    if ordering.mode_for(event.type) != "skip_superseded":
        return None
    later = StripeEvent.objects.using(event._state.db).processed_later_than(event)
    return later.values_list("event_id", flat=True).first()


def _record_superseded(claimed: Claimed, later: str | None) -> None:
    StripeEvent.objects.using(claimed.using).filter(pk=claimed.event.pk).update(superseded_by=later)
    claimed.event.superseded_by = later
    if later is None:
        return
    logger.info(
        "Stripe event %s was completed without running its receivers: %s, a later event about %s, "
        "was processed first.",
        claimed.event.event_id,
        later,
        claimed.event.object_id,
        extra=fields(event_id=claimed.event.event_id, event_type=claimed.event.type, outcome="superseded"),
    )


def dispatch(event: StripeEvent) -> None:
    """Send ``event_received``, then the signal of the event's type. Exceptions propagate."""
    with telemetry.span("dispatch"):
        event_received.send(sender=StripeEvent, event=event)
        typed = registered_signal(event.type)
        if typed is not None:
            typed.send(sender=StripeEvent, event=event)


def _guard_commit_callbacks(connection: BaseDatabaseWrapper, event: StripeEvent, failures: list[str]) -> None:
    """Make the receivers' ``transaction.on_commit`` callbacks unable to undo the answer.

    They run after the COMMIT: the event is processed by then. Left alone, the
    first one to raise (the receipt email, SMTP down) would escape as if the
    receivers had failed, the later ones would never run, and Stripe's retry
    would be answered ``duplicate``: the side effect lost, silently. Guarded,
    each one runs; a failure is logged with the event id and recorded on the row.
    """
    if not connection.run_on_commit:
        return

    def guarded(callback: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            try:
                callback()
            except Exception as exc:
                logger.exception(
                    "An on_commit callback failed after Stripe event %s was processed; "
                    "the event's work is committed and the callback is not retried.",
                    event.event_id,
                    extra=fields(event_id=event.event_id, event_type=event.type, outcome="callback_failed"),
                )
                failures.append(error_text(exc))

        return run

    # Django keeps (savepoint ids, callback, robust) per registered callback
    # (django-stubs still says pairs: they predate ``robust``).
    registered: list[tuple[Any, Callable[[], object], bool]] = connection.run_on_commit  # type: ignore[assignment]
    guarded_callbacks: Any = [(ids, guarded(callback), robust) for ids, callback, robust in registered]
    connection.run_on_commit = guarded_callbacks


def _record_callback_failures(claimed: Claimed, failures: list[str]) -> None:
    """Put the failed callbacks where an operator sees them: the processed row's last error."""
    text = truncated(
        "The event was processed; then an on_commit callback failed (not retried):\n\n" + "\n".join(failures)
    )
    try:
        StripeEvent.objects.using(claimed.using).filter(pk=claimed.event.pk).update(last_error=text)
    except DatabaseError:
        logger.exception(
            "Could not record the failed callback of %s; it is in the log.",
            claimed.event.event_id,
            extra=fields(event_id=claimed.event.event_id, event_type=claimed.event.type),
        )
