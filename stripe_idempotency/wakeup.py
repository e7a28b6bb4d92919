"""How an idle worker waits for work: woken by PostgreSQL's ``NOTIFY`` as an event is accepted,
or looking again every ``interval`` seconds everywhere else.

With ``"ENQUEUE": None`` a deferred delivery's insert sends the event's id on :data:`CHANNEL`
in the same statement (:mod:`stripe_idempotency.backends.postgresql`), so the notification
is sent when the row commits and never for a row that did not. A worker ``LISTEN``\\ s on a
connection of its own, opened from the same ``DATABASES`` entry as its work: Django's
connection is busy with the work itself, and a pooled one may be handed to another thread.

A notification only wakes a worker early: the worker looks again every ``interval`` seconds
whatever happens, so a lost notification (the listening connection dropped, the database
restarted) delays work by at most that, and loses nothing.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Protocol

from django.db import connections

from stripe_idempotency.log import fields, logger

__all__ = ["CHANNEL", "Listening", "Polling", "Wakeup", "for_database"]

#: The channel accepted events are announced on (the payload is the event's id).
CHANNEL = "stripe_idempotency_events"

# The longest a waiting worker goes without looking at its stop request.
_SLICE_SECONDS = 0.5


class Wakeup(Protocol):
    """Waits for work to arrive."""

    #: How this worker learns of new work, for its first line (``"LISTEN on ..."``, ``"polling"``).
    how: str

    def prepare(self) -> None:
        """Start listening, so that work announced from now on wakes the next :meth:`wait`."""
        ...

    def wait(self, timeout: float) -> bool:
        """Return when work may have arrived, ``timeout`` seconds have passed, or the worker is
        stopping; ``True`` if woken by a notification."""
        ...

    def close(self) -> None: ...


class Polling:
    """No notifications: wait ``timeout`` seconds (the worker's ``--interval``), or less if stopped."""

    def __init__(self, stop: threading.Event, why: str = "") -> None:
        self.stop = stop
        self.how = f"polling ({why})" if why else "polling"

    def prepare(self) -> None:
        pass

    def wait(self, timeout: float) -> bool:
        self.stop.wait(timeout)
        return False

    def close(self) -> None:
        pass


class Listening:
    """``LISTEN`` on a connection of its own; reconnects at the next wait when it is lost."""

    def __init__(self, using: str, stop: threading.Event) -> None:
        self.using = using
        self.stop = stop
        self.how = f"LISTEN on {CHANNEL} (database {using!r})"
        self._connection: Any = None

    def prepare(self) -> None:
        import psycopg

        try:
            self._connection or self._connect()
        except psycopg.Error as exc:
            self._lost(exc)  # the first wait tries again

    def wait(self, timeout: float) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        try:
            connection = self._connection or self._connect()
            # Notifications that arrived while the worker was busy are pending here: the first
            # returns at once (the work they announce is found by the worker's query, whatever
            # their number), and the rest are drained so as not to wake it again for nothing.
            # The wait is cut in slices so that a stop request is seen within one.
            while (left := deadline - time.monotonic()) > 0 and not self.stop.is_set():
                if any(True for _ in connection.notifies(timeout=min(left, _SLICE_SECONDS), stop_after=1)):
                    for _ in connection.notifies(timeout=0):
                        pass
                    return True
            return False
        except psycopg.Error as exc:
            self._lost(exc)
            self.stop.wait(max(0.0, deadline - time.monotonic()))
            return False

    def _lost(self, exc: Exception) -> None:
        logger.warning(
            "The worker's LISTEN connection to %r failed (%s); polling until it reconnects.",
            self.using,
            exc,
            extra=fields(code="listen_lost"),
        )
        self.close()

    def _connect(self) -> Any:
        import psycopg

        params = connections[self.using].get_connection_params()
        for django_only in ("cursor_factory", "context"):
            params.pop(django_only, None)
        self._connection = psycopg.connect(**params, autocommit=True)
        self._connection.execute(f"LISTEN {CHANNEL}")
        return self._connection

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()  # psycopg closes a broken connection without raising


def for_database(using: str, stop: threading.Event) -> Wakeup:
    """The way a worker on ``using`` learns of new work: ``LISTEN`` on PostgreSQL, polling elsewhere
    and behind PgBouncer in transaction mode (``DISABLE_SERVER_SIDE_CURSORS``, Django's setting
    for it), where a ``LISTEN`` is lost when its server connection goes back to the pool."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return Polling(stop, f"{connection.display_name} has no LISTEN/NOTIFY")
    if connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS"):
        return Polling(
            stop,
            "DISABLE_SERVER_SIDE_CURSORS says a transaction pooler such as PgBouncer is in front, "
            "and a LISTEN does not survive it",
        )
    return Listening(using, stop)
