"""The database goes away: the server stopped mid-burst, a connection killed mid-transaction.

On a PostgreSQL server of the test's own (initdb in a temporary directory): the machine's shared
server is never stopped. Deliveries get a JSON 503 with Retry-After, never a traceback page; the
app keeps serving; once the database is back every event is processed exactly once.
"""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from stripe_idempotency.testing import build_event, deliver_concurrently, encode, sign
from tests.concurrency import wait_for
from tests.servers import ROOT, Gunicorn, PrivatePostgres, answer_status, app_environment, own_database, post
from tests.workers import accept_in_project, table_worker

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.chaos,
    pytest.mark.only_on("postgresql", reason="Needs PostgreSQL's own tools to run a private server."),
]

SECRET = "whsec_example_local_only"
LEASE = 2.0


@pytest.fixture
def private_postgres():
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def app(private_postgres, tmp_path: Path):
    with own_database(private_postgres.settings_dict()) as db:
        instance = Gunicorn(
            db.url,
            "outage",
            workers=2,
            log_dir=tmp_path,
            STRIPE_CLAIM_TTL_SECONDS=str(LEASE),
            CHAOS_LINGER_SECONDS="2",
        )
        try:
            yield db, instance
        finally:
            instance.stop()


def checkout(n: int, chaos: str | None = None) -> dict:
    session = {
        "id": f"cs_outage_{n}",
        "amount_total": 500,
        "currency": "usd",
        "customer": "cus_outage",
        "chaos": chaos,
    }
    return build_event("checkout.session.completed", data=session, id=f"evt_outage_{n}")


def assert_exactly_once(db, events):
    assert db.scalar("SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NULL") == 0
    runs = dict(db.rows("SELECT stripe_event_id, COUNT(*) FROM shop_fulfilment GROUP BY stripe_event_id"))
    assert runs == {e["id"]: 1 for e in events}
    credits = dict(
        db.rows("SELECT reference, COUNT(*) FROM stripe_idempotency_ledgerentry GROUP BY reference")
    )
    assert credits == {e["data"]["object"]["id"]: 1 for e in events}


def reap(db) -> None:
    reaper = subprocess.run(
        [sys.executable, "manage.py", "reap_stale_claims", "--reprocess", "-v", "0"],
        cwd=ROOT,
        env=app_environment(db.url, STRIPE_CLAIM_TTL_SECONDS=str(LEASE)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reaper.returncode == 0, reaper.stdout + reaper.stderr


def test_the_database_stops_mid_burst_and_comes_back(app, private_postgres, capsys):
    db, instance = app
    events = [checkout(n) for n in range(300)]
    bodies = {e["id"]: encode(e) for e in events}
    answers: collections.Counter = collections.Counter()
    not_json: list[bytes] = []
    lock = threading.Lock()
    outage = threading.Event()

    def attempt(event_id: str) -> float | None:
        status, headers, body = post(instance.url, bodies[event_id], sign(bodies[event_id], SECRET))
        with lock:
            answers[(status, answer_status(body))] += 1
            if answers[(200, "processed")] >= 100:
                outage.set()
        if status and headers.get("Content-Type") != "application/json":
            not_json.append(body[:200])
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
        return None if 200 <= status < 300 else 0.2

    def stop_and_restart() -> None:
        outage.wait(60)
        private_postgres.stop("immediate")
        time.sleep(3)
        private_postgres.start()

    thread = threading.Thread(target=stop_and_restart)
    thread.start()
    deliver_concurrently(
        [e["id"] for e in events for _ in range(2)], attempt, senders=8, max_attempts=300, spread=8
    )
    thread.join(60)
    assert instance.alive()

    time.sleep(LEASE + 1)  # claims taken just before the stop expire; the reaper takes them
    reap(db)
    with capsys.disabled():
        print(f"\noutage summary: answers {dict(sorted(answers.items()))}")  # noqa: T201

    assert not_json == []
    assert answers[(503, "unavailable")] > 0, answers  # the outage was met, and answered in JSON
    assert set(answers) <= {(200, "processed"), (200, "duplicate"), (503, "busy"), (503, "unavailable")}
    assert_exactly_once(db, events)


def test_a_connection_killed_mid_transaction(app, private_postgres):
    db, instance = app
    event = checkout(0, chaos="linger")  # its receivers wait 2 s inside the transaction on the first attempt
    body = encode(event)
    result = []
    delivery = threading.Thread(target=lambda: result.append(post(instance.url, body, sign(body, SECRET))))
    delivery.start()
    # Once the event is claimed its receivers are running (lingering 2 s in their transaction,
    # which Django has opened): only then is the worker's connection killed.
    wait_for(
        lambda: db.scalar(
            "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE claim_token IS NOT NULL"
        ),
        "the event to be claimed",
    )
    killed = db.scalar(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        [db.name],
    )
    delivery.join(30)
    assert killed == 1
    # The receivers' transaction died with its connection; Django closed it, so the release
    # that follows runs on a fresh connection: the failure is recorded and the claim given up.
    status, headers, answer = result[0]
    assert (status, headers["Content-Type"], json.loads(answer)["status"]) == (
        500,
        "application/json",
        "error",
    )
    assert instance.alive()
    row = db.rows("SELECT processed_at, claim_expires_at, last_error FROM stripe_idempotency_stripeevent")[0]
    assert row[:2] == (None, None)
    assert "terminating connection" in row[2]

    # Redelivered at once (no lease to wait for): processed.
    status, _, answer = post(instance.url, body, sign(body, SECRET))
    assert (status, answer_status(answer)) == (200, "processed")
    assert db.scalar("SELECT attempts FROM stripe_idempotency_stripeevent") == 2
    assert_exactly_once(db, [event])


def test_a_following_worker_outlives_a_database_restart(private_postgres, tmp_path: Path):
    """The events table as the queue: a ``process_stripe_events --follow`` worker whose database
    stops and starts again reconnects (its work and its LISTEN) and goes on, never exiting."""
    log = tmp_path / "worker.log"
    with own_database(private_postgres.settings_dict()) as db:
        worker = table_worker(db.url, log, "--interval", "0.2")
        try:
            accept_in_project(db.url, "evt_before")
            wait_for(lambda: db.scalar(PROCESSED, ["evt_before"]), "the first event to be processed")
            db.close()
            private_postgres.stop()
            wait_for(lambda: "lost its database" in log.read_text(), "the worker to meet the outage")
            private_postgres.start()
            accept_in_project(db.url, "evt_after")
            wait_for(
                lambda: db.scalar(PROCESSED, ["evt_after"]), "the event after the restart to be processed"
            )
            assert worker.poll() is None, log.read_text()  # it never exited: nothing had to restart it
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
    assert worker.returncode == 0, log.read_text()
    assert "LISTEN connection" in log.read_text()  # its listening connection was lost, and replaced


PROCESSED = (
    "SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE event_id = %s AND processed_at IS NOT NULL"
)
