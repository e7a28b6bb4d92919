"""Handing a deferred event to its queue (the ``ENQUEUE`` callable), with a deadline.

The row is committed before this runs, so the queue is only a wake-up: a publish that fails or
hangs loses nothing (the reaper takes the event after ``PENDING_GRACE_SECONDS``), it only must
not hold the delivery. What the queued task does is :mod:`stripe_idempotency.tasks`; which
Django Tasks framework is installed is :func:`tasks_framework`, asked here without importing the
task (defining it validates the ``TASKS`` backend, which the system checks judge first).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

from django.db import close_old_connections
from django.utils.module_loading import import_string

from stripe_idempotency import telemetry
from stripe_idempotency.conf import app_settings
from stripe_idempotency.log import fields, logger
from stripe_idempotency.threads import DaemonThreads

__all__ = ["Enqueue", "enqueue", "tasks_framework"]

#: The signature of an ``ENQUEUE`` callable: queue the processing of one stored event.
Enqueue = Callable[[str, str], object]


def tasks_framework() -> ModuleType | None:
    """``django.tasks`` (Django 6) or the ``django_tasks`` backport; ``None`` if neither is there."""
    for name in ("django.tasks", "django_tasks"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


@functools.cache
def _enqueue_callable(path: str) -> Enqueue:
    return import_string(path)  # type: ignore[no-any-return]


def enqueue(event_id: str, database: str) -> bool:
    """Queue the processing of a stored event with ``ENQUEUE``; ``False`` if the queue refused it
    or did not take it within ``ENQUEUE_TIMEOUT_SECONDS``.

    Neither loses anything: the row is committed, and the reaper takes it after
    ``PENDING_GRACE_SECONDS``. Each is logged and counted (``stripe_idempotency.enqueue.failures``).
    """
    submitted = _queuers.submit(functools.partial(_enqueue_and_close, event_id, database))
    timeout = app_settings.ENQUEUE_TIMEOUT_SECONDS
    try:
        submitted.result(timeout=timeout)
    except TimeoutError:
        # A broker that accepts connections and never answers (stopped, black-holed) would hold
        # this web worker until the server killed it. The publish goes on in its thread, and
        # if it lands, the task finds the event as the reaper may: the claim decides.
        submitted.cancel()  # not started yet: every queuer is held by a hung publish
        logger.warning(
            "The queue did not take Stripe event %s within %s s; answered accepted, the reaper will take it.",
            event_id,
            f"{timeout:g}",
            extra=fields(event_id=event_id, outcome="not_queued", code="enqueue_timeout"),
        )
        telemetry.count_not_queued("timeout")
        return False
    except Exception:
        logger.exception(
            "Could not queue Stripe event %s for processing; the reaper will take it.",
            event_id,
            extra=fields(event_id=event_id, outcome="not_queued", code="enqueue_error"),
        )
        telemetry.count_not_queued("error")
        return False
    return True


def _enqueue_and_close(event_id: str, database: str) -> None:
    try:
        _enqueue_callable(app_settings.ENQUEUE)(event_id, database)
    finally:
        # A queue that writes to the database (django-tasks' database backend) did so on this
        # thread's own connection: closed as at the end of a request, so none is left open.
        close_old_connections()


# A few suffice: a publish takes milliseconds, and when all of them hang on a dead broker, further
# deliveries wait their deadline and are answered, never piling up threads.
_queuers = DaemonThreads("stripe_idempotency.enqueue", size=4)
