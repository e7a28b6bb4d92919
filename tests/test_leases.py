"""Claims, as seen from the database: taking, refusing, taking over, completing, releasing."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
import time_machine
from django.db import connection, connections, transaction
from django.db.models.functions import Now
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from stripe_idempotency import leases
from stripe_idempotency.backends import for_connection
from stripe_idempotency.backends.base import ClaimRow
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.exceptions import ClaimInsideTransaction, LeaseLost
from stripe_idempotency.leases import Claimed
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.outcomes import Busy, Duplicate
from stripe_idempotency.testing import build_event, deliver
from tests.concurrency import in_thread

pytestmark = pytest.mark.django_db(transaction=True)


def verified(**kwargs) -> IncomingEvent:
    return IncomingEvent.from_payload(build_event(**kwargs))


def expire(event_id: str) -> None:
    """Move the lease's end into the past, on the database clock (as waiting it out would)."""
    StripeEvent.objects.filter(event_id=event_id).update(claim_expires_at=Now() - dt.timedelta(seconds=1))


PYTHON_CLOCK_AHEAD = dt.timedelta(hours=3)


def database_now() -> dt.datetime:
    return StripeEvent.objects.annotate(now=Now()).values_list("now", flat=True).first()


def test_a_new_event_is_stored_already_claimed():
    event = verified(type="invoice.paid", livemode=False)
    result = leases.claim(event)
    assert isinstance(result, Claimed)
    row = StripeEvent.objects.get()
    assert (row.event_id, row.type, row.payload, row.attempts) == (event.id, "invoice.paid", event.payload, 1)
    assert row.claim_token == result.token
    assert row.claimed_by == "test-instance"
    assert row.processed_at is None
    # The instance handed to receivers is the row as stored.
    assert result.event.pk == row.pk
    assert result.event.claim_expires_at == row.claim_expires_at
    assert result.event.payload == event.payload


def test_the_claim_is_committed_before_claim_returns():
    result = leases.claim(verified())
    thread, seen = in_thread(lambda: StripeEvent.objects.filter(claim_token=result.token).count())
    thread.join(10)
    assert seen == [1]


def test_claims_refuse_to_run_inside_a_transaction():
    with pytest.raises(ClaimInsideTransaction), transaction.atomic():
        leases.claim(verified())
    assert StripeEvent.objects.count() == 0


def test_a_live_claim_is_busy_for_others():
    event = verified()
    first = leases.claim(event)
    assert leases.claim(event) == Busy(event_id=event.id, retry_after=60)
    row = StripeEvent.objects.get()
    assert (row.claim_token, row.attempts) == (first.token, 1)


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "RETRY_AFTER_MAX_SECONDS": 3600})
def test_retry_after_is_the_lease_left_rounded_up():
    event = verified()
    leases.claim(event)
    # 300 s lease, a moment old: 300 rounded up (never 301, never 299).
    assert leases.claim(event).retry_after == 300


class ReleasedEveryTime:
    """The real backend, except that each claim meets a holder that finished its attempt
    between the claim's statement and its read: the row looks claimable, yet is not ours.
    The rarest answer of a race, made to happen every round."""

    def __init__(self, real, **row):
        self.real, self.row, self.claims = real, row, 0

    def __getattr__(self, name):
        return getattr(self.real, name)

    def claim(self, model, event, token, **kwargs):
        self.claims += 1
        row = model(event_id=event.id, type=event.type, claim_token=uuid.uuid4(), **self.row)
        return ClaimRow(event=row, lease_left=self.lease_left)

    lease_left = None


@pytest.mark.parametrize(
    ("lease_left", "row"),
    [
        pytest.param(None, {}, id="released"),
        pytest.param(0.0, {}, id="lease-ended"),
        pytest.param(None, {"attempts": 5, "last_error": "boom"}, id="at-max-attempts"),
    ],
)
def test_a_claim_refused_in_every_round_is_busy_after_three_rounds(monkeypatch, client, lease_left, row):
    # Answering "duplicate" would tell Stripe an unprocessed event is done: it is never sent again.
    backends = []

    def refusing(connection):
        backend = ReleasedEveryTime(for_connection(connection), **row)
        backend.lease_left = lease_left
        backends.append(backend)
        return backend

    monkeypatch.setattr(leases, "for_connection", refusing)
    event = build_event()
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_ATTEMPTS": 5}):
        assert leases.claim(IncomingEvent.from_payload(event)) == Busy(event_id=event["id"], retry_after=1)
        response = deliver(client, event, secret="whsec_x")
    assert [backend.claims for backend in backends] == [3, 3]
    assert (response.status_code, response["Retry-After"]) == (503, "1")
    assert response.json() == {"status": "busy", "event_id": event["id"]}


def test_an_expired_lease_is_taken_over_with_a_fresh_token():
    event = verified()
    first = leases.claim(event)
    expire(event.id)
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "INSTANCE_ID": "other"}):
        second = leases.claim(event)
    assert isinstance(second, Claimed)
    assert second.token != first.token
    row = StripeEvent.objects.get()
    assert (row.claim_token, row.claimed_by, row.attempts) == (second.token, "other", 2)
    assert row.claim_expires_at > database_now()


def test_a_released_claim_is_taken_at_once():
    event = verified()
    first = leases.claim(event)
    assert leases.release(first, "boom") is True
    row = StripeEvent.objects.get()
    assert (row.claim_token, row.claim_expires_at, row.last_error) == (None, None, "boom")
    second = leases.claim(event)
    assert isinstance(second, Claimed)
    assert StripeEvent.objects.get().attempts == 2


def test_a_processed_event_is_a_duplicate_and_is_left_alone():
    event = verified()
    claimed = leases.claim(event)
    with transaction.atomic():
        leases.complete(claimed)
    before = StripeEvent.objects.values().get()
    assert leases.claim(event) == Duplicate(event_id=event.id)
    assert leases.claim(event) == Duplicate(event_id=event.id)
    after = StripeEvent.objects.values().get()
    assert after == before


def test_lease_times_come_from_the_database_clock():
    # Instances with different clocks must agree on when a lease ends: every time
    # written comes from the database. time-machine moves every Python clock
    # (time.time, datetime.now and all built on them) three hours ahead.
    with time_machine.travel(dt.datetime.now(dt.UTC) + PYTHON_CLOCK_AHEAD, tick=True):
        leases.claim(verified(id="evt_live"))
        done = leases.claim(verified(id="evt_done"))
        with transaction.atomic():
            leases.complete(done)
        leases.release(leases.claim(verified(id="evt_failed")), "RuntimeError: boom")
        now = database_now()
        assert dt.datetime.now(dt.UTC) - now > PYTHON_CLOCK_AHEAD - dt.timedelta(minutes=1)  # skewed for real
    rows = {row.event_id: row for row in StripeEvent.objects.all()}
    live, done, failed = rows["evt_live"], rows["evt_done"], rows["evt_failed"]
    second = dt.timedelta(seconds=10)
    for written in (live.received_at, live.claimed_at, done.processed_at, failed.claimed_at):
        assert now - second < written <= now
    assert live.received_at == live.claimed_at
    assert live.claim_expires_at - live.claimed_at == dt.timedelta(seconds=300)
    backoff = dt.timedelta(seconds=leases.retry_delay(1))
    assert now + backoff - second < failed.next_attempt_at <= now + backoff


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "CLAIM_TTL_SECONDS": 2.5})
def test_the_lease_length_is_read_at_call_time():
    leases.claim(verified())
    row = StripeEvent.objects.get()
    assert row.claim_expires_at - row.claimed_at == dt.timedelta(seconds=2.5)


def test_complete_is_fenced_by_the_token():
    event = verified()
    claimed = leases.claim(event)
    stolen = Claimed(event=claimed.event, token=uuid.uuid4(), using=claimed.using)
    with pytest.raises(LeaseLost), transaction.atomic():
        leases.complete(stolen)
    assert StripeEvent.objects.get().processed_at is None
    with transaction.atomic():
        leases.complete(claimed)
    row = StripeEvent.objects.get()
    assert row.processed_at is not None
    assert (row.claim_token, row.claim_expires_at) == (None, None)


def test_completing_twice_is_refused():
    claimed = leases.claim(verified())
    with transaction.atomic():
        leases.complete(claimed)
    with pytest.raises(LeaseLost), transaction.atomic():
        leases.complete(claimed)


@pytest.mark.only_on("mariadb", "mysql", reason="EXPLAIN's possible_keys is MySQL/MariaDB's.")
def test_the_fenced_update_can_only_use_the_primary_key():
    # Any other index would let the optimizer scan it and lock other events'
    # entries on the way (MariaDB did, deadlocking two deliveries' updates).
    claimed = leases.claim(verified())
    with CaptureQueriesContext(connection) as queries, transaction.atomic():
        leases.complete(claimed)
    [fenced_update] = [q["sql"] for q in queries if q["sql"].lstrip().startswith("UPDATE")]
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + fenced_update)
        columns = [c[0] for c in cursor.description]
        plans = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    assert [plan["possible_keys"] for plan in plans] == ["PRIMARY"]


def test_release_leaves_another_holders_claim_alone():
    event = verified()
    first = leases.claim(event)
    expire(event.id)
    second = leases.claim(event)
    assert leases.release(first, "late") is False
    row = StripeEvent.objects.get()
    assert (row.claim_token, row.last_error) == (second.token, "")


@pytest.mark.parametrize(
    ("lease_left", "expected"),
    [(None, 1), (-5.0, 1), (0.0, 1), (0.2, 1), (1.0, 1), (1.01, 2), (59.5, 60), (900, 60)],
)
def test_retry_after(lease_left, expected):
    assert leases.retry_after(lease_left) == expected


@pytest.mark.only_on("mariadb", "mysql", reason="MySQL/MariaDB only")
def test_mysql_without_returning():
    """MySQL's claim (no RETURNING: a read after the upsert), run on MariaDB, which speaks it too."""
    from stripe_idempotency.backends.mysql import MySQLBackend

    class WithoutReturning(MySQLBackend):
        __slots__ = ()
        has_returning = False  # as MySQL, and MariaDB before 10.5

    backend = WithoutReturning(connections["default"])
    event = verified()
    first = backend.claim(StripeEvent, event, uuid.uuid4(), claimed_by="a", ttl=300)
    assert first.event.claim_token is not None
    assert first.event.claimed_by == "a"
    assert 299 < first.lease_left <= 300
    refused = backend.claim(StripeEvent, event, uuid.uuid4(), claimed_by="b", ttl=300)
    assert refused.event.claim_token == first.event.claim_token
    assert StripeEvent.objects.get().attempts == 1
    expire(event.id)
    token = uuid.uuid4()
    taken = backend.claim(StripeEvent, event, token, claimed_by="b", ttl=300)
    assert (taken.event.claim_token, taken.event.claimed_by) == (token, "b")
    assert StripeEvent.objects.get().attempts == 2
