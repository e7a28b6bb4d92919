"""Each database's backend, through the protocol the rules use, on the database under test."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction
from django.db.models.functions import Now

from stripe_idempotency.backends import UnsupportedDatabase, for_connection
from stripe_idempotency.backends.base import SQLBackend
from stripe_idempotency.backends.mysql import MySQLBackend
from stripe_idempotency.backends.postgresql import PostgreSQLBackend
from stripe_idempotency.backends.sqlite import SQLiteBackend
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import EventEffect, EventState, LedgerBalance, StripeEvent
from stripe_idempotency.testing import build_event
from tests.concurrency import in_thread

pytestmark = pytest.mark.django_db(transaction=True)

BACKEND_OF = {"postgresql": PostgreSQLBackend, "mysql": MySQLBackend, "sqlite": SQLiteBackend}


def incoming(**kwargs) -> IncomingEvent:
    return IncomingEvent.from_payload(build_event(**kwargs))


def state(event_id: str) -> str:
    return StripeEvent.objects.with_state().get(event_id=event_id).state


def test_each_vendor_has_its_own_backend():
    assert type(for_connection(connection)) is BACKEND_OF[connection.vendor]


def test_any_other_vendor_is_refused_by_name(monkeypatch):
    monkeypatch.setattr(connection, "vendor", "cockroachdb")
    with pytest.raises(UnsupportedDatabase) as raised:
        for_connection(connection)
    assert (raised.value.alias, raised.value.vendor) == ("default", "cockroachdb")
    assert str(raised.value) == (
        "The database 'default' is a 'cockroachdb' database; stripe_idempotency supports "
        "postgresql, mysql, sqlite."
    )


def test_a_claim_a_refusal_and_the_fence():
    backend = for_connection(connection)
    event = incoming(id="evt_backend")
    mine = uuid.uuid4()
    first = backend.claim(StripeEvent, event, mine, claimed_by="a", ttl=300)
    assert (first.event.claim_token, first.event.claimed_by, first.event.attempts) == (mine, "a", 1)
    assert first.event.payload == event.payload
    refused = backend.claim(StripeEvent, event, uuid.uuid4(), claimed_by="b", ttl=300)
    assert refused.event.claim_token == mine
    assert 299 < refused.lease_left <= 300
    assert backend.complete(StripeEvent, first.event.pk, uuid.uuid4()) is False
    assert backend.complete(StripeEvent, first.event.pk, mine) is True
    assert backend.complete(StripeEvent, first.event.pk, mine) is False
    assert state("evt_backend") == EventState.PROCESSED


def test_release_clears_only_its_own_claim():
    backend = for_connection(connection)
    event = incoming(id="evt_released")
    mine = uuid.uuid4()
    row = backend.claim(StripeEvent, event, mine, claimed_by="a", ttl=300).event
    assert backend.release(StripeEvent, row.pk, uuid.uuid4(), "not mine", retry_in=60) is False
    assert backend.release(StripeEvent, row.pk, mine, "boom", retry_in=60) is True
    stored = StripeEvent.objects.annotate(now=Now()).get()
    assert (stored.claim_token, stored.claim_expires_at, stored.last_error) == (None, None, "boom")
    # The reaper's next attempt, on the database's clock.
    assert (stored.next_attempt_at - stored.now).total_seconds() == pytest.approx(60, abs=2)
    assert state("evt_released") == EventState.FAILED


def test_an_unclaimed_insert_stores_once_and_leaves_the_event_pending():
    backend = for_connection(connection)
    event = incoming(id="evt_pending", type="invoice.paid")
    assert backend.insert_unclaimed(StripeEvent, event) is True
    assert backend.insert_unclaimed(StripeEvent, event) is False
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type, stored.payload, stored.attempts) == (
        "evt_pending",
        "invoice.paid",
        event.payload,
        0,
    )
    assert (stored.claim_token, stored.claimed_at, stored.claim_expires_at) == (None, None, None)
    assert stored.received_at is not None
    assert state("evt_pending") == EventState.PENDING
    # A pending event is claimable at once.
    token = uuid.uuid4()
    assert backend.claim(StripeEvent, event, token, claimed_by="worker", ttl=300).event.claim_token == token
    assert state("evt_pending") == EventState.CLAIMED


def test_an_unclaimed_insert_of_a_processed_event_changes_nothing():
    backend = for_connection(connection)
    event = incoming(id="evt_done")
    token = uuid.uuid4()
    row = backend.claim(StripeEvent, event, token, claimed_by="a", ttl=300).event
    backend.complete(StripeEvent, row.pk, token)
    assert backend.insert_unclaimed(StripeEvent, event) is False
    assert state("evt_done") == EventState.PROCESSED


def test_the_claim_s_sql_and_the_orm_agree_on_what_is_claimable():
    # The upserts say "claimable" in SQL (CLAIMABLE), the reaper and the admin through the ORM
    # (StripeEventQuerySet.claimable): two writings of one rule, held to each other here.
    from stripe_idempotency.backends.base import CLAIMABLE
    from stripe_idempotency.factories import StripeEventFactory

    for state in ("processed", "claimed", "stale", "failed", "dead"):
        StripeEventFactory(event_id=f"evt_{state}", **{state: True})
    StripeEventFactory(event_id="evt_pending")
    backend = for_connection(connection)
    table = connection.ops.quote_name(StripeEvent._meta.db_table)
    where = CLAIMABLE.format(t=table, now=backend.now.replace("%%", "%"))
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT event_id FROM {table} WHERE {where}")
        in_sql = sorted(row[0] for row in cursor.fetchall())
    assert in_sql == sorted(StripeEvent.objects.claimable().values_list("event_id", flat=True))
    assert in_sql == ["evt_dead", "evt_failed", "evt_pending", "evt_stale"]


def test_an_effect_s_claim_statement_and_the_orm_agree_on_what_is_claimable_and_due():
    # An effect's run claims it with the backend's statement; the reaper lists what is due
    # through the ORM (EventEffectQuerySet.claimable, .due): held to each other here, state by
    # state, dead ones included only when asked for.
    from django.utils import timezone

    event = StripeEvent.objects.create(event_id="evt_effects", type="x", payload={})
    now = timezone.now()
    states = {
        "processed": {"completed_at": now, "attempts": 1},
        "claimed": {"claimed_at": now, "claim_expires_at": now + timedelta(hours=1), "attempts": 1},
        "stale": {"claimed_at": now, "claim_expires_at": now - timedelta(seconds=1), "attempts": 1},
        "failed": {"claimed_at": now, "attempts": 1},
        "dead": {"claimed_at": now, "attempts": 3},
        "pending": {},
    }
    rows = {
        name: EventEffect.objects.create(
            event=event, name="e", key=name, idempotency_key=f"evt_effects:e:{name}", max_attempts=3, **fields
        )
        for name, fields in states.items()
    }
    assert {row.key: EventEffect.objects.with_state().get(pk=row.pk).state for row in rows.values()} == {
        name: name for name in states
    }
    claimable = sorted(EventEffect.objects.claimable().values_list("key", flat=True))
    due = sorted(EventEffect.objects.due().values_list("key", flat=True))
    backend = for_connection(connection)

    def taken(dead_too: bool) -> list[str]:
        took = [
            name
            for name, row in rows.items()
            if backend.take(EventEffect, row.pk, uuid.uuid4(), claimed_by="t", ttl=60, dead_too=dead_too)
        ]
        for name in took:  # as they were, for the next round
            EventEffect.objects.filter(pk=rows[name].pk).update(
                **{"claim_token": None, **_reset(states[name])}
            )
        return sorted(took)

    assert taken(dead_too=True) == claimable == ["dead", "failed", "pending", "stale"]
    assert taken(dead_too=False) == due == ["failed", "pending", "stale"]


def _reset(fields: dict) -> dict:
    return {"claimed_at": None, "claim_expires_at": None, "claimed_by": "", "attempts": 0, **fields}


def test_statements_are_cached_by_everything_they_are_built_from():
    backend = for_connection(connection)
    assert isinstance(backend, SQLBackend)
    one = backend.event_statement(StripeEvent, "SELECT {part} FROM {table}", part="1")
    two = backend.event_statement(StripeEvent, "SELECT {part} FROM {table}", part="2")
    # The table is the model's the statement is asked for: a backend imports no model.
    other_table = backend.event_statement(EventEffect, "SELECT {part} FROM {table}", part="1")
    assert (one, two, other_table) == (
        f"SELECT 1 FROM {connection.ops.quote_name(StripeEvent._meta.db_table)}",
        f"SELECT 2 FROM {connection.ops.quote_name(StripeEvent._meta.db_table)}",
        f"SELECT 1 FROM {connection.ops.quote_name(EventEffect._meta.db_table)}",
    )
    assert backend.event_statement(StripeEvent, "SELECT {part} FROM {table}", part="1") is one


@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite's IMMEDIATE transactions queue for the database: they cannot deadlock.",
)
def test_a_real_deadlock_is_one_the_backend_retries():
    # Two connections lock two balance rows in opposite orders; the database
    # picks one as the victim, and its error must read as "run it again".
    for account in ("a", "b"):
        for_connection(connection).create_balance_row(LedgerBalance, account, "usd")
    both_hold_one = threading.Barrier(2, timeout=10)

    def lock(first: str, second: str):
        try:
            with transaction.atomic():
                rows = LedgerBalance.objects.select_for_update()
                list(rows.filter(account=first))
                both_hold_one.wait()
                list(rows.filter(account=second))
        except OperationalError as error:
            return error, for_connection(connections["default"]).is_retryable(error)
        finally:
            connections["default"].close()
        return None

    one, result_one = in_thread(lambda: lock("a", "b"))
    two, result_two = in_thread(lambda: lock("b", "a"))
    one.join(30)
    two.join(30)
    [(error, retryable)] = [result for [result] in (result_one, result_two) if result is not None]
    assert retryable is True, error


@pytest.mark.only_on(
    "mariadb", reason="MariaDB's claim sets its own lock wait; the others' claims are one statement."
)
def test_a_mariadb_claim_never_waits_for_a_row_another_transaction_holds():
    # A receiver's transaction can hold the event's row (a foreign key to it takes a
    # shared lock). A claim that queued for it would hold a web worker for the whole
    # dispatch; on MariaDB it is answered at once with the row as it stands: busy.
    event = IncomingEvent.from_payload(build_event(id="evt_held"))
    for_connection(connection).insert_unclaimed(StripeEvent, event)
    table = connection.ops.quote_name(StripeEvent._meta.db_table)
    holding, release = threading.Event(), threading.Event()

    def other_transaction():
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(f"SELECT id FROM {table} WHERE event_id = 'evt_held' LOCK IN SHARE MODE")
            holding.set()
            assert release.wait(30)

    other, _ = in_thread(other_transaction)
    assert holding.wait(30)
    ours, result = in_thread(
        lambda: for_connection(connections["default"]).claim(
            StripeEvent, event, uuid.uuid4(), claimed_by="ours", ttl=300
        )
    )
    ours.join(20)  # far past anything but a lock wait (the server's default is 50 s)
    finished_while_held = not ours.is_alive()
    release.set()
    other.join(30)
    ours.join(60)
    assert finished_while_held, "the claim waited for the other transaction's lock"
    [refused] = result
    assert (refused.event.claim_token, refused.event.attempts) == (None, 0)  # not claimed: busy
    assert StripeEvent.objects.get().claim_token is None


@pytest.mark.only_on("postgresql", reason="SQLSTATE 40001 is PostgreSQL's serialisation failure.")
def test_a_real_serialisation_failure_is_one_the_backend_retries():
    # A REPEATABLE READ transaction updates a row another committed after its snapshot.
    for_connection(connection).create_balance_row(LedgerBalance, "a", "usd")
    balances = LedgerBalance.objects.filter(account="a")

    def update_what_another_changed_since_the_snapshot():
        with transaction.atomic():
            connection.cursor().execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            list(balances)  # the snapshot is taken here
            other, _ = in_thread(lambda: balances.update(balance=1))
            other.join(30)
            balances.update(balance=2)

    with pytest.raises(OperationalError) as raised:
        update_what_another_changed_since_the_snapshot()
    assert raised.value.__cause__.sqlstate == "40001"
    assert for_connection(connection).is_retryable(raised.value) is True


@pytest.mark.only_on("sqlite", reason="SQLite's one writer: the others queue for its lock.")
def test_database_is_locked_is_one_the_backend_retries():
    holding, release = threading.Event(), threading.Event()

    def writer():
        with transaction.atomic():  # IMMEDIATE: the write lock from the first statement
            LedgerBalance.objects.count()
            holding.set()
            assert release.wait(30)

    other, _ = in_thread(writer)
    assert holding.wait(30)
    try:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA busy_timeout = 50")
        with pytest.raises(OperationalError, match="database is locked") as raised, transaction.atomic():
            LedgerBalance.objects.count()
    finally:
        release.set()
        other.join(30)
        connection.close()  # the next test's connection has the configured timeout again
    assert for_connection(connection).is_retryable(raised.value) is True


def test_other_operational_errors_are_not_retried():
    backend = for_connection(connection)
    table = connection.ops.quote_name(StripeEvent._meta.db_table)
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SET LOCAL statement_timeout = 1")  # then a query cancelled by it
        statement = "SELECT pg_sleep(1)" if connection.vendor == "postgresql" else f"SELECT nope FROM {table}"
        with pytest.raises(OperationalError) as raised:
            cursor.execute(statement)
    assert backend.is_retryable(raised.value) is False
