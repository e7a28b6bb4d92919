"""A task backend for the tests: Django's dummy backend (queued tasks kept in memory, run by
nobody), with one list of results for every thread.

The dummy backend keeps its results per thread, and a delivery hands its task to the queue
from a thread of its own (so that a hung broker cannot hold the request past
``ENQUEUE_TIMEOUT_SECONDS``): the tests read what was queued from theirs.
"""

from __future__ import annotations

import threading
from typing import Any

try:
    from django.tasks.backends.dummy import DummyBackend
except ImportError:  # Django 5.2: the backport
    from django_tasks.backends.dummy import DummyBackend  # type: ignore[no-redef]

_shared: list[Any] = []
_lock = threading.Lock()


class SharedDummyBackend(DummyBackend):  # type: ignore[misc, valid-type]
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.results = _shared

    def enqueue(self, *args: Any, **kwargs: Any) -> Any:
        with _lock:
            return super().enqueue(*args, **kwargs)
