"""Task workers as a project runs them, for deferred processing: ``process_stripe_events`` (the
events table as the queue), django-tasks-db's ``db_worker`` processes and a Celery worker, each
started with the example project's settings, restarted when killed (as a process supervisor
would), and stopped by process group when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.servers import ROOT, app_environment, children_of, manage

RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


class Workers:
    """``count`` worker processes of one task queue, restarted when one dies."""

    queue = ""

    def __init__(self, db_url: str, count: int, log_dir: Path, **env: str) -> None:
        #: What a web instance queueing to these workers is started with.
        self.web_env = {"STRIPE_PROCESSING": "deferred", "TASK_QUEUE": self.queue, **env}
        self.env = app_environment(db_url, **self.web_env)
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []
        self.restarts = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        for n in range(count):
            self.processes.append(self._start(n))
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    def command(self, n: int) -> list[str]:
        raise NotImplementedError

    def _start(self, n: int) -> subprocess.Popen[bytes]:
        log = (self.log_dir / f"{self.queue}-worker-{n}.log").open("a")
        with log:  # the child writes to its own copy of the descriptor
            return subprocess.Popen(
                self.command(n),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            with self._lock:
                for n, process in enumerate(self.processes):
                    if process.poll() is not None and not self._stopping.is_set():
                        self.processes[n] = self._start(n)
                        self.restarts += 1

    def pids(self) -> list[int]:
        """The processes that run tasks (a Celery worker's pool processes, not its master)."""
        with self._lock:
            return [p.pid for p in self.processes if p.poll() is None]

    def logs(self) -> str:
        return "".join(path.read_text() for path in sorted(self.log_dir.glob(f"{self.queue}-worker-*.log")))

    def stop(self) -> None:
        self._stopping.set()
        self._supervisor.join(5)
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


class TableWorkers(Workers):
    """The events table as the queue: ``manage.py process_stripe_events --follow`` processes, woken
    by NOTIFY on PostgreSQL and polling every 50 ms on MariaDB."""

    queue = "table"

    def command(self, n: int) -> list[str]:
        return [sys.executable, "manage.py", "process_stripe_events", "--follow", "--interval", "0.05"]


class DatabaseWorkers(Workers):
    """django-tasks-db: ``manage.py db_worker`` processes polling the tasks table."""

    queue = "database"

    def __init__(self, db_url: str, count: int, log_dir: Path, **env: str) -> None:
        # The queue's table, migrated as a project enabling it would.
        migrated = manage(db_url, "migrate", "-v", "0", TASK_QUEUE=self.queue)
        assert migrated.returncode == 0, migrated.stderr
        super().__init__(db_url, count, log_dir, **env)

    def command(self, n: int) -> list[str]:
        return [
            *(sys.executable, "manage.py", "db_worker", "--interval", "0.05", "--no-startup-delay"),
            *("--no-reload", "--worker-id", f"worker-{n}-{time.monotonic_ns()}", "-v", "0"),
        ]


class CeleryWorkers(Workers):
    """Celery: one worker per process with a one-process pool, on a queue of the test's own."""

    queue = "celery"

    def __init__(
        self, db_url: str, count: int, log_dir: Path, processes: int = 1, queue_name: str = "", **env: str
    ) -> None:
        # A queue of the test's own, or one given (workers for tasks queued before they started).
        self.queue_name = queue_name or f"stripe-test-{os.getpid()}-{time.monotonic_ns()}"
        # Each worker a pool of ``processes`` processes (one by default: a kill -9 takes one task).
        self.pool_size = processes
        super().__init__(db_url, count, log_dir, CELERY_QUEUE=self.queue_name, **env)
        self.wait_until_consuming(count)

    def send(self, event_id: str, database: str = "default") -> None:
        """Queue a task for ``event_id`` from outside the project, as a stray duplicate would be."""
        from celery import Celery

        app = Celery(broker=RABBITMQ)
        try:
            app.send_task(
                "stripe_idempotency.process_stripe_event", [event_id, database], queue=self.queue_name
            )
        finally:
            app.close()

    def stop(self) -> None:
        super().stop()
        subprocess.run(["rabbitmqctl", "delete_queue", self.queue_name], capture_output=True, check=False)

    def command(self, n: int) -> list[str]:
        return [
            *(sys.executable, "-m", "celery", "-A", "example_project", "worker"),
            *("--pool", "prefork", "--concurrency", str(self.pool_size), "--queues", self.queue_name),
            *("--hostname", f"worker{n}-{self.queue_name}@%h", "--loglevel", "WARNING"),
            *("--without-gossip", "--without-mingle", "--without-heartbeat"),
        ]

    def wait_until_consuming(self, count: int) -> None:
        """Block until ``count`` consumers listen on the queue (a task sent sooner would wait anyway,
        but a test that measures or kills wants its workers ready)."""
        if not count:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            result = subprocess.run(
                ["rabbitmqctl", "list_queues", "-q", "name", "consumers"],
                capture_output=True,
                text=True,
                check=False,
            )
            for line in result.stdout.splitlines():
                name, _, consumers = line.partition("\t")
                if name == self.queue_name and consumers.strip().isdigit() and int(consumers) >= count:
                    return
            time.sleep(0.5)
        raise RuntimeError(f"Celery workers did not start: {self.logs()[-3000:]}")

    def pids(self) -> list[int]:
        """The pool processes (children of each worker's master): where a task runs."""
        return children_of(set(super().pids()))


#: What a web instance with the events table as the queue is started with.
TABLE_QUEUE_ENV = {"TASK_QUEUE": "table", "STRIPE_PROCESSING": "deferred"}


def accept_in_project(db_url: str, *event_ids: str, **env: str) -> None:
    """Accept checkout events in the example project's own process (``ENQUEUE`` None: they wait
    in the events table), as its web instance would."""
    accepted = manage(
        db_url,
        "shell",
        "-c",
        "from stripe_idempotency import processing\n"
        "from stripe_idempotency.events import IncomingEvent\n"
        "from stripe_idempotency.testing import build_event\n"
        f"for event_id in {list(event_ids)!r}:\n"
        "    session = {'id': 'cs_' + event_id, 'object': 'checkout.session', 'amount_total': 1000,\n"
        "               'currency': 'usd', 'customer': 'cus_accepted', 'customer_details': {'email': ''}}\n"
        "    event = build_event('checkout.session.completed', data=session, id=event_id)\n"
        "    processing.accept(IncomingEvent.from_payload(event))\n",
        **{**TABLE_QUEUE_ENV, **env},
    )
    assert accepted.returncode == 0, accepted.stderr


def table_worker(db_url: str, log: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    """One ``process_stripe_events --follow`` process of the example project, its output to ``log``."""
    with log.open("a") as out:
        return subprocess.Popen(
            [sys.executable, "manage.py", "process_stripe_events", "--follow", *args],
            cwd=ROOT,
            env=app_environment(db_url, **{**TABLE_QUEUE_ENV, **env}),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
