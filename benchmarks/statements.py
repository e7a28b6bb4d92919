"""SQL statements per first delivery, duplicate and busy answer, on the database at DATABASE_URL.

    DATABASE_URL=sqlite:////tmp/bench.sqlite3 python -m benchmarks.statements    # prints JSON

``per_delivery`` runs this once per backend, each in a process of its own
(Django is configured once per process), and reports them side by side.
Receivers' own statements are excluded: the events are of a type nobody
listens to.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

from benchmarks.common import ROOT, setup_django

# The backends to count on, with the URL of a database of the benchmarks' own on each.
BACKENDS = {
    "PostgreSQL": "postgres://postgres@127.0.0.1:5432/stripe_idempotency_bench",
    "MariaDB": "mysql://root@127.0.0.1:3306/stripe_idempotency_bench",
    "SQLite": f"sqlite:///{os.path.join(tempfile.gettempdir(), 'stripe_idempotency_bench.sqlite3')}",
}


def count() -> dict[str, list[int]]:
    """{"first delivery": [data statements, all statements], "duplicate": [...], "busy": [...],
    "deferred acknowledgement": [...], "deferred acknowledgement, django-tasks-db": [...]}."""
    from django.conf import settings
    from django.db import connection
    from django.test import Client, override_settings
    from django.test.utils import CaptureQueriesContext

    from stripe_idempotency import leases
    from stripe_idempotency.events import IncomingEvent
    from stripe_idempotency.testing import build_event, deliver

    client = Client()

    def statements(event: dict) -> list[int]:
        with CaptureQueriesContext(connection) as queries:
            deliver(client, event)
        sql = [q["sql"].strip().upper() for q in queries.captured_queries]
        data = [s for s in sql if not s.startswith(("BEGIN", "COMMIT", "ROLLBACK"))]
        return [len(data), len(sql)]

    first = build_event("bench.nobody.listens")
    counts = {"first delivery": statements(first), "duplicate": statements(first)}
    busy = build_event("bench.nobody.listens")
    leases.claim(IncomingEvent.from_payload(busy))
    counts["busy"] = statements(busy)
    # Deferred mode: the acknowledgement alone (a queue that writes nothing here, as a broker's),
    # then with django-tasks-db, whose enqueue is a row in the same database.
    deferred = {**settings.STRIPE_IDEMPOTENCY, "PROCESSING": "deferred"}
    tasks = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"
    with override_settings(
        STRIPE_IDEMPOTENCY=deferred, TASKS={"default": {"BACKEND": f"{tasks}.backends.dummy.DummyBackend"}}
    ):
        counts["deferred acknowledgement"] = statements(build_event("bench.nobody.listens"))
    with override_settings(
        STRIPE_IDEMPOTENCY=deferred, TASKS={"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    ):
        counts["deferred acknowledgement, django-tasks-db"] = statements(build_event("bench.nobody.listens"))
    return counts


def on_every_backend() -> dict[str, dict[str, list[int]] | str]:
    """``count()`` on each backend in BACKENDS: its figures, or why it could not be measured."""
    results: dict[str, dict[str, list[int]] | str] = {}
    for name, url in BACKENDS.items():
        url = os.environ.get("DATABASE_URL", url) if name == "PostgreSQL" else url
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.statements"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "benchmarks.settings"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode == 0:
            results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        else:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            results[name] = f"not measured: {last}"
    return results


def main() -> None:
    setup_django()
    print(json.dumps(count()))


if __name__ == "__main__":
    main()
