"""Deferred processing through Celery, for projects whose workers are Celery's.

Set ``"ENQUEUE": "stripe_idempotency.contrib.celery.enqueue"`` beside
``"PROCESSING": "deferred"``; the project's Celery app (created when Django starts,
Celery's own convention) sends :data:`process_stripe_event` to its broker, and any
worker of that app runs it.

The task acknowledges its message only once it has run (``acks_late``), and a worker
killed mid-task hands the message back (``reject_on_worker_lost``), so a task is never
dropped by a dying worker; the event's claim makes the redelivered task, or any
duplicate, harmless. Nothing depends on it either way: the reaper takes an event no
task finished.
"""

from __future__ import annotations

from celery import shared_task

from stripe_idempotency import tasks

__all__ = ["enqueue", "process_stripe_event"]


@shared_task(
    name="stripe_idempotency.process_stripe_event",
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
)
def process_stripe_event(event_id: str, database: str) -> str:
    """Process the stored event ``event_id`` in ``database`` (:func:`stripe_idempotency.tasks.process`)."""
    return tasks.process(event_id, database)


def enqueue(event_id: str, database: str) -> None:
    """An ``ENQUEUE`` callable: send :data:`process_stripe_event` to the Celery broker."""
    process_stripe_event.delay(event_id, database)
