"""WSGI and ASGI: the example project under gunicorn and under uvicorn at once, on one database.

A deployment may run both (an ASGI instance for other traffic beside WSGI
workers, or a move from one to the other): every event must still be handled
once, whichever server each of its deliveries reaches.
"""

from __future__ import annotations

import collections
import threading
from pathlib import Path

import pytest
from django.db import connection

from stripe_idempotency.testing import build_event, deliver_concurrently, encode, sign
from tests.concurrency import wait_for
from tests.servers import AppServer, Gunicorn, Uvicorn, answer_status, post

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.servers]

SECRET = "whsec_example_local_only"  # the example project's default
EVENTS = 150
DELIVERIES = 4  # of each event, at the same moment, alternating between the servers


def checkout(n: int) -> dict:
    session = {
        "id": f"cs_servers_{n}",
        "object": "checkout.session",
        "amount_total": 1000 + n,
        "currency": "usd",
        "customer": f"cus_servers_{n % 10}",
        "customer_details": {"email": ""},
    }
    return build_event("checkout.session.completed", data=session, id=f"evt_servers_{n}")


@pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="SQLite's single writer would serialise the servers this races."
)
def test_gunicorn_and_uvicorn_instances_handle_each_event_once(server_database, tmp_path: Path):
    db = server_database
    events = [checkout(n) for n in range(EVENTS)]
    bodies = {e["id"]: encode(e) for e in events}
    # Under ASGI every request gets a thread, so persistent connections (one per
    # thread) pile up: the ASGI instance uses Django's pool on PostgreSQL, and
    # closes its connections after each request on MariaDB.
    asgi_env = {"DATABASE_POOL_SIZE": "8"} if connection.vendor == "postgresql" else {"CONN_MAX_AGE": "0"}
    servers = [
        Uvicorn(db.url, "asgi-instance", workers=2, log_dir=tmp_path, **asgi_env),
        Gunicorn(db.url, "wsgi-instance", workers=2, log_dir=tmp_path),
    ]
    answers: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def attempt(job: list) -> float | None:
        event_id, delivery, pinned = job
        server = servers[pinned if pinned is not None else delivery % len(servers)]
        status, headers, body = post(server.url, bodies[event_id], sign(bodies[event_id], SECRET))
        with lock:
            answers[(server.name, status, answer_status(body))] += 1
        if 200 <= status < 300:
            return None
        job[1] = delivery + 1  # the retry goes to the other server
        return min(float(headers.get("Retry-After") or 1), 0.5)

    # Most events' deliveries alternate between the servers, and whichever claims
    # first wins. Every fifth event goes to one server only, so that each server
    # is seen to process events whatever the race between them favours.
    pinned = {n: (n // 5) % 2 if n % 5 == 0 else None for n in range(EVENTS)}
    jobs = [[e["id"], d, pinned[n]] for n, e in enumerate(events) for d in range(DELIVERIES)]
    try:
        deliver_concurrently(jobs, attempt, senders=16, max_attempts=60)
    finally:
        for server in servers:
            server.stop()

    unexpected = {
        key: n
        for key, n in answers.items()
        if key[1:] not in {(200, "processed"), (200, "duplicate"), (503, "busy")}
    }
    assert not unexpected, (unexpected, [s.log.read_text()[-2000:] for s in servers])
    # Both servers did real work: each processed at least its pinned events.
    for index, server in enumerate(servers):
        own = sum(1 for n, p in pinned.items() if p == index)
        assert answers[(server.name, 200, "processed")] >= own, answers
        assert answers[(server.name, 200, "duplicate")] > 0, answers
    assert sum(n for (_, _, kind), n in answers.items() if kind == "processed") == EVENTS

    assert (
        db.scalar("SELECT COUNT(*) FROM stripe_idempotency_stripeevent WHERE processed_at IS NOT NULL")
        == EVENTS
    )
    fulfilments = db.rows("SELECT stripe_event_id, COUNT(*) FROM shop_fulfilment GROUP BY stripe_event_id")
    assert len(fulfilments) == EVENTS
    assert {count for _, count in fulfilments} == {1}
    credited = db.scalar(
        "SELECT COUNT(*) FROM stripe_idempotency_ledgerentry WHERE entry_type = 'checkout_payment'"
    )
    assert credited == EVENTS


class ImpatientGunicorn(Gunicorn):
    """gunicorn whose master kills a worker silent for 2 s (``--timeout``), as a busy site sets it."""

    def command(self, workers: int) -> list[str]:
        command = super().command(workers)
        command[command.index("--timeout") + 1] = "2"
        return command


@pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="SQLite's single writer would serialise the servers this races."
)
def test_a_worker_killed_by_gunicorns_timeout_releases_its_claim(server_database, tmp_path: Path):
    # The master's timeout ends the worker with SIGABRT, which gunicorn turns into SystemExit
    # inside the receiver: the claim is released on the way out, not left for its 60 s lease.
    db = server_database
    server = ImpatientGunicorn(db.url, "slow", workers=1, log_dir=tmp_path, STRIPE_CLAIM_TTL_SECONDS="60")
    try:
        event = checkout(0)
        event["data"]["object"]["chaos"] = "slow"  # sleeps past the lease on its first attempt
        body = encode(event)
        status, _, _ = post(server.url, body, sign(body, SECRET), timeout=60)
        assert status in {0, 500, 502}  # the worker died mid-request
        with db.cursor() as cursor:
            table = "stripe_idempotency_stripeevent"
            cursor.execute(f"SELECT claim_token, claim_expires_at, attempts, last_error FROM {table}")
            [(token, expires, attempts, error)] = cursor.fetchall()
        assert (token, expires, attempts) == (None, None, 1)
        assert "SystemExit" in error
        # Released, so Stripe's retry is processed at once (the receiver behaves on attempt 2).
        status, _, answer = post(server.url, body, sign(body, SECRET), timeout=60)
        assert (status, answer_status(answer)) == (200, "processed")
    finally:
        server.stop()


@pytest.mark.only_on(
    "postgresql", "mariadb", "mysql", reason="the example project's servers run on a server database"
)
@pytest.mark.parametrize("server_class", [Gunicorn, Uvicorn])
def test_the_answer_does_not_wait_for_the_effects_and_the_server_runs_them(
    server_class: type[AppServer], server_database, tmp_path: Path
):
    """The order email (an effect) is held until a file exists, which the test makes only once it
    has its answer: an answer that waited for the effect would come after a minute, with the
    email sent. It comes with the effect stored and not run; then the server's own threads send it."""
    db = server_database
    gate = tmp_path / "gate"
    server = server_class(db.url, server_class.name, workers=1, log_dir=tmp_path, SHOP_MAIL_GATE=str(gate))
    effects = "SELECT name, completed_at IS NULL FROM stripe_idempotency_eventeffect"
    try:
        event = checkout(1)
        event["data"]["object"]["customer_details"] = {"email": "buyer@example.com"}
        body = encode(event)
        status, _, answer = post(server.url, body, sign(body, SECRET), timeout=120)
        assert (status, answer_status(answer)) == (200, "processed")
        assert db.rows(effects) == [("shop.send_order_email", True)]  # stored, still held
        gate.touch()
        wait_for(lambda: db.rows(effects) == [("shop.send_order_email", False)], "the email to be sent")
    finally:
        server.stop()
    log = server.log.read_text()
    assert f"Idempotency-Key: {event['id']}:shop.send_order_email:0" in log  # the console mail
    assert log.count("Your order is on its way") == 1
