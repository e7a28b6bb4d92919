"""Deferred processing (``"PROCESSING": "deferred"``): the task that processes an accepted event.

The task is defined with Django's Tasks framework (``django.tasks`` on Django 6,
the ``django-tasks`` backport on 5.2); which backend runs it is the project's
choice (``TASKS`` in its settings). Celery projects queue the same work through
:mod:`stripe_idempotency.contrib.celery` instead (the ``ENQUEUE`` setting).

A task may run twice (queues deliver at least once), race another worker or die
mid-receiver: it takes the same claim, fenced dispatch and completion as a delivery,
so the event's receivers commit once whatever happens to the task. Nothing depends on
the task arriving: an accepted event no task processed is taken by the reaper after
``PENDING_GRACE_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stripe_idempotency import effects, outcomes, processing
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.queueing import tasks_framework

__all__ = ["enqueue_django_task", "process", "process_stripe_event"]


def process(event_id: str, database: str) -> str:
    """Process the stored event ``event_id`` from its stored payload; the outcome's status.

    ``"processed"``, ``"duplicate"`` (done already: a task delivered twice), ``"busy"``
    (another worker holds it), ``"error"`` (a receiver raised: recorded on the row, retried by
    the reaper after its backoff) or ``"missing"`` (no such row, pruned meanwhile). Every
    queue's task is this function.
    """
    event = StripeEvent.objects.using(database).filter(event_id=event_id).first()
    if event is None:
        return "missing"
    with effects.run_in_this_thread():  # a worker: its event's effects run here, after the commit
        return outcomes.report(processing.reprocess(event, using=database)).status


def _as_task(func: Callable[[str, str], str]) -> Any:
    framework = tasks_framework()
    # Without the framework the function stays importable (system check E016 says what is missing).
    return framework.task()(func) if framework is not None else func


@_as_task
def process_stripe_event(event_id: str, database: str) -> str:
    """The Django task: :func:`process` the stored event ``event_id`` in ``database``."""
    return process(event_id, database)


def enqueue_django_task(event_id: str, database: str) -> None:
    """The default ``ENQUEUE``: :func:`process_stripe_event` through the ``TASKS`` backend."""
    process_stripe_event.enqueue(event_id, database)
