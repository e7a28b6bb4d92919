"""Deferred processing with real workers: the example project under gunicorn answers
``accepted``, and workers started as a project runs them process each event once.

Three ways: the events table as the queue (``process_stripe_events --follow`` processes),
django-tasks-db's ``db_worker`` processes (the tasks table in the same database) and Celery
workers with RabbitMQ as the broker (``stripe_idempotency.contrib.celery``). PostgreSQL and
MariaDB, like the other server suites.
"""

from __future__ import annotations

import collections
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stripe_idempotency.testing import build_event, deliver_concurrently, encode, sign
from tests.concurrency import wait_for
from tests.servers import ROOT, Database, Gunicorn, answer_status, app_environment, free_port, post
from tests.workers import CeleryWorkers, DatabaseWorkers, TableWorkers, Workers

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.servers,
    pytest.mark.only_on(
        "postgresql", "mariadb", "mysql", reason="SQLite's single writer would serialise the workers."
    ),
]

SECRET = "whsec_example_local_only"  # the example project's default
QUEUES = {"table": TableWorkers, "database": DatabaseWorkers, "celery": CeleryWorkers}
LEASE = 2.0


def checkout(n: int, prefix: str, chaos: str | None = None) -> dict:
    session = {
        "id": f"cs_{prefix}_{n}",
        "object": "checkout.session",
        "amount_total": 1000 + n,
        "currency": "usd",
        "customer": f"cus_{prefix}_{n % 10}",
        "customer_details": {"email": ""},
        "chaos": chaos,
    }
    return build_event("checkout.session.completed", data=session, id=f"evt_{prefix}_{n}")


@pytest.fixture(params=sorted(QUEUES))
def queue(request) -> str:
    return request.param


@dataclass
class Deployment:
    db: Database
    server: Gunicorn
    workers: Workers


@pytest.fixture
def deployment(server_database, queue, tmp_path: Path) -> Iterator[Deployment]:
    """Two task workers, then a web instance (3 gunicorn workers) queueing to them."""
    workers = QUEUES[queue](server_database.url, 2, tmp_path, STRIPE_CLAIM_TTL_SECONDS=str(LEASE))
    try:
        server = Gunicorn(server_database.url, "web", workers=3, log_dir=tmp_path, **workers.web_env)
        try:
            yield Deployment(server_database, server, workers)
        finally:
            server.stop()
    finally:
        workers.stop()


def wait_until_processed(db: Database, count: int, timeout: float = 120) -> int:
    """How many events are processed once ``count`` are, or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        done = db.scalar("SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL")
        if done >= count or time.monotonic() >= deadline:
            return done
        time.sleep(0.2)


PROCESSED_IDS = "SELECT event_id FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL"


NEVER_CLAIMED = "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE attempts = 0"


def runs_per_event(db: Database) -> dict[str, int]:
    return dict(db.rows("SELECT stripe_event_id, COUNT(*) FROM shop_fulfilment GROUP BY stripe_event_id"))


def reap(db: Database, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "reap_stale_claims", "--reprocess", *args],
        cwd=ROOT,
        env=app_environment(db.url, STRIPE_CLAIM_TTL_SECONDS=str(LEASE), **env),
        capture_output=True,
        text=True,
        timeout=300,
    )


def reprocessed(output: str) -> list[str]:
    """The events a reaper's output says it processed ("Reprocessed [2/5] evt_... : processed")."""
    return re.findall(r"^Reprocessed (?:\[\d+/\d+\] )?(\S+) .*: processed$", output, re.MULTILINE)


def tasks_by_status(db: Database) -> dict[str, int]:
    """django-tasks-db's own record of the tasks: how many ended in each status."""
    return dict(db.rows("SELECT status, COUNT(*) FROM django_tasks_database_dbtaskresult GROUP BY status"))


def test_each_accepted_event_is_processed_once_by_the_workers(deployment, queue):
    db = deployment.db
    events = [checkout(n, "workers") for n in range(150)]
    bodies = {e["id"]: encode(e) for e in events}
    answers: collections.Counter = collections.Counter()
    uncommitted: list[str] = []  # acknowledged before the row was there
    lock = threading.Lock()

    def attempt(event_id: str) -> float | None:
        status, _, body = post(deployment.server.url, bodies[event_id], sign(bodies[event_id], SECRET))
        stored = db.scalar(
            "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE event_id = %s", [event_id]
        )
        with lock:
            answers[(status, answer_status(body))] += 1
            if status == 200 and stored != 1:
                uncommitted.append(event_id)
        return None if status == 200 else 0.2

    # Each event three times at once (Stripe's retries of an event not yet processed queue it
    # again: duplicate tasks by construction).
    deliver_concurrently([e["id"] for e in events for _ in range(3)], attempt, senders=16, max_attempts=3)
    processed = wait_until_processed(db, len(events))

    assert processed == len(events), deployment.workers.logs()[-3000:]
    assert uncommitted == []
    assert set(answers) <= {(200, "accepted"), (200, "duplicate")}, answers
    assert sum(answers.values()) == 3 * len(events)
    assert runs_per_event(db) == {e["id"]: 1 for e in events}
    doubled_credits = db.rows(
        "SELECT reference FROM stripe_idempotency_ledgerentry GROUP BY reference HAVING COUNT(*) > 1"
    )
    assert doubled_credits == []
    if queue == "database":
        # One task per accepted answer, every one of them finished (the later ones found the
        # event done or taken: their receivers never ran). A duplicate task may still be
        # finding its event done when the last event is processed: wait for the queue to drain.
        wait_for(lambda: set(tasks_by_status(db)) == {"SUCCESSFUL"}, "every task to finish")
        assert tasks_by_status(db) == {"SUCCESSFUL": answers[(200, "accepted")]}


def test_a_worker_killed_mid_receiver_leaves_its_event_to_the_reaper(deployment, queue):
    db = deployment.db
    events = [checkout(n, "killed", chaos="kill" if n % 5 == 0 else None) for n in range(20)]
    killers = [e["id"] for e in events if e["data"]["object"]["chaos"] == "kill"]
    for event in events:
        body = encode(event)
        assert answer_status(post(deployment.server.url, body, sign(body, SECRET))[2]) == "accepted"

    # The others are processed; each killer took its worker process down with it, and holds its
    # claim until the lease runs out.
    others = len(events) - len(killers)
    assert wait_until_processed(db, others) >= others
    deadline = time.monotonic() + 60
    while db.scalar(NEVER_CLAIMED) and time.monotonic() < deadline:
        time.sleep(0.2)  # a queue may hand a killer to a worker later than the others
    assert db.scalar(NEVER_CLAIMED) == 0
    if queue == "celery":  # each killer ended one pool process, as Celery's master reports
        deadline = time.monotonic() + 30
        while deployment.workers.logs().count("exited with 'exitcode 1'") < len(killers):
            assert time.monotonic() < deadline, deployment.workers.logs()[-3000:]
            time.sleep(0.2)
    if queue == "table":
        # The other workers take each killer's event as stale work once its lease is over: no
        # reaper needed, and the one run after them finds nothing.
        assert wait_until_processed(db, len(events)) == len(events), deployment.workers.logs()[-3000:]
        assert runs_per_event(db) == {e["id"]: 1 for e in events}
        # A killer taken in the batch of a worker another killer ended is run later as a retry
        # (its second attempt), which behaves: each kill ended one worker, some killers none.
        assert 1 <= deployment.workers.restarts <= len(killers)
        reaped = reap(db)
        assert (reaped.returncode, reaped.stdout) == (0, "No stale events.\n"), reaped.stderr
        return
    time.sleep(LEASE + 0.5)
    done = {row[0] for row in db.rows(PROCESSED_IDS)}
    reaped = reap(db)

    assert reaped.returncode == 0, reaped.stdout + reaped.stderr
    left = {e["id"] for e in events} - done
    assert sorted(reprocessed(reaped.stdout)) == sorted(left), reaped.stdout
    assert runs_per_event(db) == {e["id"]: 1 for e in events}
    if queue == "database":
        # The supervisor restarted each killed worker. A task whose worker died stays "running" in
        # the queue's books (this queue never retries one): the reaper finished those events.
        assert left == set(killers)
        assert deployment.workers.restarts == len(killers)
        assert tasks_by_status(db) == {"SUCCESSFUL": others, "RUNNING": len(killers)}
    else:
        # Celery's master replaced each dead pool process and handed its message back
        # (reject_on_worker_lost); the redelivered task processed the event if the lease had
        # run out by then, or found it busy and left it to the reaper.
        assert left <= set(killers)


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            {"CHAOS_ENQUEUE": "tests.chaos.receivers.die_before_queueing"}, id="killed-after-commit"
        ),
        pytest.param(
            {"TASK_QUEUE": "celery", "CELERY_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}//"},
            id="broker-down",
        ),
    ],
)
def test_an_event_whose_task_was_never_queued_is_processed_once_by_the_reaper(
    server_database, fault, tmp_path: Path
):
    db = server_database
    server = Gunicorn(db.url, "web", workers=1, log_dir=tmp_path, STRIPE_PROCESSING="deferred", **fault)
    event = checkout(0, "unqueued")
    body = encode(event)
    try:
        status, _, answer = post(server.url, body, sign(body, SECRET))
    finally:
        server.stop()
    if "CHAOS_ENQUEUE" in fault:
        assert status == 0  # the web worker died before it could answer; Stripe will retry
    else:
        assert (status, answer_status(answer)) == (200, "accepted")  # the row is committed
        assert "Could not queue Stripe event evt_unqueued_0 for processing" in server.log.read_text()
    assert db.rows("SELECT attempts, processed_at FROM stripe_idempotency_stripeevent") == [(0, None)]

    within_grace = reap(db)
    assert (within_grace.returncode, within_grace.stdout) == (0, "No stale events.\n")
    after_grace = reap(db, STRIPE_PENDING_GRACE_SECONDS="0")
    assert after_grace.returncode == 0, after_grace.stderr
    assert reprocessed(after_grace.stdout) == ["evt_unqueued_0"], after_grace.stdout
    assert runs_per_event(db) == {"evt_unqueued_0": 1}


def test_table_workers_killed_at_random_lose_nothing_and_double_nothing(server_database, tmp_path: Path):
    """Four ``process_stripe_events`` workers, 2,000 events, workers killed with -9 at random
    (whatever they hold: a batch, a receiver's transaction) and restarted by their supervisor."""
    db = server_database
    workers = TableWorkers(
        db.url, 4, tmp_path, STRIPE_CLAIM_TTL_SECONDS=str(LEASE), SHOP_FULFILMENT_SECONDS="0.005"
    )
    server = Gunicorn(db.url, "web", workers=3, log_dir=tmp_path, **workers.web_env)
    events = [checkout(n, "chaos") for n in range(2000)]
    bodies = {e["id"]: encode(e) for e in events}
    stop_killing = threading.Event()
    kills: list[int] = []
    chance = random.Random(2000)

    def kill_at_random() -> None:
        while not stop_killing.wait(chance.uniform(0.5, 2.0)):
            pids = workers.pids()
            if pids:
                victim = chance.choice(pids)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGKILL)
                    kills.append(victim)

    killer = threading.Thread(target=kill_at_random, daemon=True)
    try:
        killer.start()

        def attempt(event_id: str) -> float | None:
            status, _, body = post(server.url, bodies[event_id], sign(bodies[event_id], SECRET))
            return None if status == 200 and answer_status(body) in {"accepted", "duplicate"} else 0.2

        deliver_concurrently(list(bodies), attempt, senders=16, max_attempts=5)
        processed = wait_until_processed(db, len(events), timeout=600)
        stop_killing.set()
        killer.join(10)
        assert processed == len(events), workers.logs()[-3000:]
    finally:
        stop_killing.set()
        server.stop()
        workers.stop()

    assert len(kills) >= 3, kills  # the chaos happened
    assert runs_per_event(db) == {e["id"]: 1 for e in events}  # lost 0, doubled 0
    doubled_credits = db.rows(
        "SELECT reference FROM stripe_idempotency_ledgerentry GROUP BY reference HAVING COUNT(*) > 1"
    )
    assert doubled_credits == []
