"""Deliver events from many real threads and processes at once, each with its own connection."""

from __future__ import annotations

import json
import multiprocessing
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from django.db import connection, connections
from django.test import Client

from stripe_idempotency.testing import deliver


@dataclass(frozen=True)
class Delivery:
    event_id: str
    http_status: int
    status: str


def _deliver_all(events: Sequence[dict[str, Any]], seed: int, start: Any, results: list[Delivery]) -> None:
    client = Client()
    order = list(events)
    random.Random(seed).shuffle(order)
    start.wait()
    try:
        for event in order:
            try:
                response = deliver(client, event)
            except Exception as exc:  # reported in the results, where the test's assertion shows it
                results.append(Delivery(event["id"], 0, f"raised {exc!r}"))
            else:
                status = json.loads(response.content)["status"]
                results.append(Delivery(event["id"], response.status_code, status))
    finally:
        connections.close_all()


def _run_threads(events: Sequence[dict[str, Any]], threads: int, seed: int, start: Any) -> list[Delivery]:
    results: list[Delivery] = []
    workers = [
        threading.Thread(target=_deliver_all, args=(events, seed * 1000 + n, start, results))
        for n in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    return results


def _process_main(events, threads, seed, start, queue) -> None:
    queue.put(_run_threads(events, threads, seed, start))


def burst(events: Sequence[dict[str, Any]], *, processes: int = 1, threads: int = 4) -> list[Delivery]:
    """Every thread of every process delivers every event once, all starting together.

    With ``processes > 1`` the workers are forked: each process opens its own
    connections to the same test database, as separate app instances would.
    """
    if processes == 1:
        return _run_threads(events, threads, 0, threading.Barrier(threads))
    context = multiprocessing.get_context("fork")
    start = context.Barrier(processes * threads)
    queue = context.Queue()
    close_connections_and_pools()
    children = [
        context.Process(target=_process_main, args=(events, threads, n + 1, start, queue))
        for n in range(processes)
    ]
    for child in children:
        child.start()
    results: list[Delivery] = []
    for _ in children:
        results.extend(queue.get(timeout=180))
    for child in children:
        child.join(timeout=30)
        assert child.exitcode == 0, f"delivery process exited with {child.exitcode}"
    return results


def close_connections_and_pools() -> None:
    """Close every connection and connection pool; call it before forking.

    A forked child must not share the parent's sockets, and a pool's worker
    threads do not survive a fork: each child opens its own pool on first use,
    as each worker of an app server does. Also how a test makes the next
    connection honour changed settings.
    """
    connections.close_all()
    for open_connection in connections.all(initialized_only=True):
        close_pool = getattr(open_connection, "close_pool", None)  # PostgreSQL with OPTIONS["pool"]
        if close_pool is not None:
            close_pool()


def in_thread(func: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``func`` on a new thread (its own database connection); its result lands in the list."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(func())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def in_thread_until_held(func: Callable[[], Any], statement: str) -> tuple[threading.Thread, list[Any]]:
    """Run ``func`` on a new thread (:func:`in_thread`); return once its session is held by a lock
    in a statement matching the LIKE pattern ``statement``."""
    sessions: queue.Queue[int] = queue.Queue()
    ended: list[str] = []

    def run() -> Any:
        sessions.put(session_id())
        try:
            value = func()
        except BaseException as error:
            ended.append(f"raised {error!r}")
            raise
        ended.append(f"returned {value!r}")
        return value

    thread, result = in_thread(run)
    wait_until_held(sessions.get(timeout=30), statement, until_not=lambda: ended[0] if ended else None)
    return thread, result


def session_id() -> int:
    """The server's id for this thread's connection, as its views of the sessions name it."""
    connection = connections["default"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_backend_pid()" if connection.vendor == "postgresql" else "SELECT CONNECTION_ID()"
        )
        return int(cursor.fetchone()[0])


def wait_until_held(
    session: int, statement: str, *, until_not: Callable[[], str | None] = lambda: None
) -> None:
    """Until the session ``session`` (that one, not any on the server) is held by a lock in a
    statement matching the LIKE pattern ``statement``; fails at once if ``until_not`` says
    (what it returns) the work that should be held has ended instead."""
    connection = connections["default"]
    if connection.vendor == "postgresql":
        sql = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE pid = %s AND wait_event_type = 'Lock' AND query LIKE %s"
        )
    else:
        # MariaDB may wait for a row inside the optimizer's lookup of a unique key (state
        # "Statistics"), before InnoDB lists a lock wait: the running statement is what shows.
        sql = "SELECT count(*) FROM information_schema.processlist WHERE id = %s AND info LIKE %s"

    def held() -> bool:
        with connection.cursor() as cursor:
            cursor.execute(sql, [session, statement])
            if cursor.fetchone()[0]:
                return True
        ended = until_not()
        if ended:
            raise AssertionError(f"session {session} was never held in {statement!r}: it {ended}")
        return False

    try:
        wait_for(held, f"session {session} to be held in {statement!r}")
    except AssertionError as waited_in_vain:
        raise AssertionError(f"{waited_in_vain}; the server shows it as {session_view(session)}") from None


def session_view(session: int) -> str:
    """What the server shows of the session ``session`` now: its state and statement, to say
    where a wait that never came went instead."""
    connection = connections["default"]
    if connection.vendor == "postgresql":
        sql = "SELECT state, wait_event_type, wait_event, query FROM pg_stat_activity WHERE pid = %s"
    else:
        sql = "SELECT command, state, time, info FROM information_schema.processlist WHERE id = %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [session])
        row = cursor.fetchone()
    return repr(row) if row else "gone (the connection was closed)"


#: How long a test waits for something that must happen: far past what any machine, however
#: busy, needs, so a test's outcome never depends on its speed; reached, the test fails
#: saying what it was waiting for.
PATIENCE_SECONDS = 120


def wait_for(condition: Callable[[], Any], what: str, *, seconds: float = PATIENCE_SECONDS) -> Any:
    """Poll ``condition`` until it returns something true, and return that; past ``seconds``,
    fail with ``what`` was awaited."""
    deadline = time.monotonic() + seconds
    while True:
        found = condition()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:g} s for {what}, in vain")
        time.sleep(0.02)


@contextmanager
def database_unreachable() -> Iterator[None]:
    """Within the block, the default database cannot be reached (a closed port; for SQLite, a
    directory that does not exist); the real one is back after it."""
    settings_dict = connection.settings_dict
    saved = dict(settings_dict)
    close_connections_and_pools()
    if connection.vendor == "sqlite":
        settings_dict["NAME"] = "/nonexistent-directory/db.sqlite3"
    else:
        settings_dict["HOST"], settings_dict["PORT"] = "127.0.0.1", "1"
    try:
        yield
    finally:
        close_connections_and_pools()
        settings_dict.clear()
        settings_dict.update(saved)
