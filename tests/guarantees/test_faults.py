"""Faults answered as documented: JSON, 503 with Retry-After where a later try may succeed."""

from __future__ import annotations

import datetime as dt
from contextlib import contextmanager

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.models.functions import Now
from django.test import Client

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event, deliver

pytestmark = pytest.mark.django_db(transaction=True)

# What each database does when it fails over to a standby that takes no writes,
# set on this session only (the test client's requests run on it).
READ_ONLY = {
    "postgresql": (
        "SET SESSION default_transaction_read_only = on",
        "SET SESSION default_transaction_read_only = off",
    ),
    "mysql": ("SET SESSION TRANSACTION READ ONLY", "SET SESSION TRANSACTION READ WRITE"),
    "sqlite": ("PRAGMA query_only = 1", "PRAGMA query_only = 0"),
}


@contextmanager
def read_only():
    on, off = READ_ONLY[connection.vendor]
    with connection.cursor() as cursor:
        cursor.execute(on)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute(off)


def assert_unavailable(response, event_id: str) -> None:
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "unavailable", "event_id": event_id}
    assert response["Retry-After"] == "60"


def test_a_read_only_database_answers_every_delivery_503_json(caplog):
    done = build_event(id="evt_done")
    assert deliver(Client(), done).json()["status"] == "processed"
    with read_only():
        assert_unavailable(deliver(Client(), build_event(id="evt_new")), "evt_new")
        duplicate = deliver(Client(), done)
        if connection.vendor == "mysql":
            # MariaDB/MySQL answer a duplicate from a plain read before any write.
            assert (duplicate.status_code, duplicate.json()["status"]) == (200, "duplicate")
        else:
            assert_unavailable(duplicate, "evt_done")
    logged = [r for r in caplog.records if r.name == "stripe_idempotency" and "evt_new" in r.getMessage()]
    assert [r.levelname for r in logged] == ["ERROR"]
    assert list(StripeEvent.objects.values_list("event_id", flat=True)) == ["evt_done"]
    # Once writable again, Stripe's retry is processed.
    assert deliver(Client(), build_event(id="evt_new")).json()["status"] == "processed"


@pytest.mark.only_on(
    "sqlite",
    "mariadb",
    "mysql",
    reason="PostgreSQL's SET is transactional: the receivers' rollback undoes it.",
)
def test_a_failover_mid_receiver_leaves_a_claim_the_reaper_takes(connect):
    # The database turns read-only while the receivers run: their work rolls
    # back, and the release cannot be written either. The answer is still a
    # JSON 503, and the claim left behind expires into the reaper's hands.
    failing_over = [True]

    def failover(sender, event, **kwargs):
        if failing_over.pop() if failing_over else False:
            with connection.cursor() as cursor:
                cursor.execute(READ_ONLY[connection.vendor][0])
            raise RuntimeError("the primary is gone")

    connect(event_received, failover)
    try:
        assert_unavailable(deliver(Client(), build_event(id="evt_failover")), "evt_failover")
    finally:
        with connection.cursor() as cursor:
            cursor.execute(READ_ONLY[connection.vendor][1])
    row = StripeEvent.objects.get()
    assert (row.processed_at, row.attempts) == (None, 1)
    assert row.claim_token is not None  # the release could not be written
    StripeEvent.objects.update(claim_expires_at=Now() - dt.timedelta(seconds=1))
    call_command("reap_stale_claims", "--reprocess", verbosity=0)
    row.refresh_from_db()
    assert (row.processed_at is not None, row.attempts) == (True, 2)


# A database that stops answering: another session holds a lock the delivery needs,
# and this session bounds how long it waits (what the deployment docs configure).
HOLD_THE_TABLE = {
    "postgresql": ("BEGIN", "LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
    "mysql": ("LOCK TABLES {table} WRITE",),
    "sqlite": ("BEGIN IMMEDIATE",),
}
LET_GO = {"postgresql": "ROLLBACK", "mysql": "UNLOCK TABLES", "sqlite": "ROLLBACK"}
BOUND_THE_WAIT = {
    "postgresql": ("SET lock_timeout = '1s'", "RESET lock_timeout"),
    "mysql": ("SET SESSION lock_wait_timeout = 1", "SET SESSION lock_wait_timeout = DEFAULT"),
    "sqlite": None,  # the test settings' "timeout": 3 (SQLite's busy timeout)
}


def test_a_database_that_hangs_is_answered_503_within_the_bound():
    import threading

    from django.db import connections

    from tests.concurrency import in_thread

    holding, done = threading.Event(), threading.Event()
    table = connection.ops.quote_name(StripeEvent._meta.db_table)

    def hold():
        other = connections["default"]  # this thread's own connection
        with other.cursor() as cursor:
            for statement in HOLD_THE_TABLE[other.vendor]:
                cursor.execute(statement.format(table=table))
            holding.set()
            done.wait(60)
            cursor.execute(LET_GO[other.vendor])

    holder, _ = in_thread(hold)
    assert holding.wait(10)
    bound, unbound = BOUND_THE_WAIT[connection.vendor] or (None, None)
    try:
        if bound:
            with connection.cursor() as cursor:
                cursor.execute(bound)
        response = deliver(Client(), build_event(id="evt_hung"))
        still_held = not done.is_set()
    finally:
        done.set()
        holder.join(30)
        if unbound:
            with connection.cursor() as cursor:
                cursor.execute(unbound)
    assert still_held  # answered while the database was still not answering
    assert_unavailable(response, "evt_hung")
