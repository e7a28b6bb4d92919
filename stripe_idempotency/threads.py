"""A few daemon threads per process that take work off a request's thread.

The work handed to them is never the only record of itself (a queued task's event row, an
effect's row), so a process that dies with jobs in hand loses nothing: the reaper takes the
rows. That is why the threads are daemon threads (a ``ThreadPoolExecutor``'s are joined at
exit): a job hung on a dead broker or a slow mail server never holds a process at exit, a cron
command or a server worker's shutdown. Started in each process on its first use, so a server
that forks after loading the app gets threads in every worker.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

__all__ = ["DaemonThreads"]

_Job = tuple[Future[None], Callable[[], None]]


class DaemonThreads:
    """``size`` daemon threads named ``name_0``... that run the jobs :meth:`submit` hands them."""

    def __init__(self, name: str, size: int) -> None:
        self._name = name
        self._size = size
        self._lock = threading.Lock()
        self._pid = 0
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._unfinished = 0
        self._idle = threading.Condition(self._lock)

    def submit(self, job: Callable[[], None]) -> Future[None]:
        """Run ``job`` on one of the threads; its future holds what it raised."""
        with self._lock:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._jobs = queue.SimpleQueue()
                self._unfinished = 0
                for n in range(self._size):
                    thread = threading.Thread(
                        target=self._work, args=(self._jobs,), name=f"{self._name}_{n}", daemon=True
                    )
                    thread.start()
            self._unfinished += 1
        future: Future[None] = Future()
        self._jobs.put((future, job))
        return future

    def has_waiting(self) -> bool:
        """Whether jobs are queued that no thread has taken yet."""
        return not self._jobs.empty()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every job submitted so far has ended; ``False`` if ``timeout`` seconds ran out first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout=timeout)

    def _work(self, jobs: queue.SimpleQueue[_Job]) -> None:
        while True:
            future, job = jobs.get()
            try:
                if not future.set_running_or_notify_cancel():
                    continue  # whoever waited for it stopped waiting before a thread was free
                try:
                    job()
                except BaseException as error:  # handed to the future: whoever waits on it reports it
                    future.set_exception(error)
                else:
                    future.set_result(None)
            finally:
                with self._idle:
                    self._unfinished -= 1
                    self._idle.notify_all()
