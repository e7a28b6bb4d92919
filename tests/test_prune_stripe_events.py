"""``manage.py prune_stripe_events``: processed events past the horizon deleted in batches; nothing
unprocessed, nothing the ledger refers to, never inside Stripe's retry window."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from stripe_idempotency import retention
from stripe_idempotency.factories import LedgerEntryFactory, StripeEventFactory
from stripe_idempotency.models import PruneWatermark, StripeEvent
from stripe_idempotency.testing import build_event, deliver

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = StringIO()
    call_command("prune_stripe_events", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def history():
    """Five events processed 40 days ago, one processed yesterday, one of each unprocessed state
    received 40 days ago, and one old processed event a ledger entry refers to."""
    old = timezone.now() - timedelta(days=40)
    for n in range(5):
        StripeEventFactory(event_id=f"evt_old_{n}", processed=True, received_at=old, processed_at=old)
    StripeEventFactory(event_id="evt_recent", processed=True, processed_at=timezone.now() - timedelta(days=1))
    StripeEventFactory(event_id="evt_pending", received_at=old)
    StripeEventFactory(event_id="evt_claimed", claimed=True, received_at=old)
    StripeEventFactory(event_id="evt_stale", stale=True, received_at=old)
    StripeEventFactory(event_id="evt_failed", failed=True, received_at=old)
    StripeEventFactory(event_id="evt_dead", dead=True, received_at=old)
    paid = StripeEventFactory(event_id="evt_paid", processed=True, received_at=old, processed_at=old)
    LedgerEntryFactory(event=paid)


def remaining() -> list[str]:
    return sorted(StripeEvent.objects.values_list("event_id", flat=True))


KEPT = ["evt_claimed", "evt_dead", "evt_failed", "evt_paid", "evt_pending", "evt_recent", "evt_stale"]


def test_processed_events_past_the_horizon_go_and_nothing_else(history):
    out = run("--older-than", "30d")
    assert remaining() == KEPT
    assert "Deleted 5 events processed before " in out
    assert "(older than 30d00h), in 1 batches." in out
    assert "Kept 1 of them that ledger entries refer to." in out


def test_the_cutoff_is_remembered_for_the_sync_and_only_moves_forward(history):
    run("--older-than", "35d")
    first = PruneWatermark.objects.get().pruned_before
    assert timedelta(days=35) <= timezone.now() - first < timedelta(days=35, minutes=1)
    assert retention.pruned_before(using="default") == first
    run("--older-than", "30d")  # deletes nothing more: evt_old_* went on the first run
    assert PruneWatermark.objects.get().pruned_before == first
    written = PruneWatermark.objects.get().updated_at
    # A run that deletes, with a shorter horizon: the cutoff moves forward.
    StripeEventFactory(
        event_id="evt_32_days", processed=True, processed_at=timezone.now() - timedelta(days=32)
    )
    assert "Deleted 1 events" in run("--older-than", "30d")
    moved = PruneWatermark.objects.get()
    second = moved.pruned_before
    assert timedelta(days=30) <= timezone.now() - second < timedelta(days=30, minutes=1)
    assert moved.updated_at > written
    # A run that deletes, with a longer horizon: the cutoff stays (the sync must not list
    # again what the earlier runs forgot).
    StripeEventFactory(
        event_id="evt_100_days", processed=True, processed_at=timezone.now() - timedelta(days=100)
    )
    assert "Deleted 1 events" in run("--older-than", "90d")
    assert PruneWatermark.objects.get().pruned_before == second


def test_a_dry_run_counts_and_deletes_nothing(history):
    out = run("--older-than", "30d", "--dry-run")
    assert not PruneWatermark.objects.exists()
    assert "Would delete 5 events processed before " in out
    assert "nothing deleted (dry run)" in out
    assert len(remaining()) == 12


def test_each_batch_is_one_delete_in_its_own_transaction(history):
    with CaptureQueriesContext(connection) as queries:
        out = run("--older-than", "30d", "--batch-size", "2")
    deletes = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("DELETE")]
    assert len(deletes) == 3  # 2 + 2 + 1
    assert "in 3 batches." in out
    # No payload is read to delete a row.
    assert not any('"payload"' in q["sql"] or "`payload`" in q["sql"] for q in queries)
    assert remaining() == KEPT


def test_a_batch_costs_one_read_of_its_end_and_one_delete(history):
    """A batch is a range of keys, its end read and its rows deleted by the range: no key list
    read, no row read back, the ledger asked once, in the DELETE's own WHERE."""
    with CaptureQueriesContext(connection) as queries:
        run("--older-than", "30d", "--batch-size", "2")
    statements = [q["sql"].lstrip().split()[0].upper() for q in queries]
    statements = [s for s in statements if s in ("SELECT", "DELETE", "INSERT")]  # not BEGIN, COMMIT
    # Whether any effect is in the way (none), then six old processed events, evt_paid's
    # among them (its range's DELETE keeps it), so three ranges of two: each an end read and a
    # DELETE, the third read finding no key after its end; the cutoff remembered (read,
    # written); then the count of what the ledger kept.
    expected = ["SELECT"] + ["SELECT", "DELETE"] * 3 + ["SELECT", "INSERT", "SELECT"]
    assert statements == expected, statements
    reads = [q["sql"] for q in queries if q["sql"].lstrip().upper().startswith("SELECT")][1:4]
    assert all("LIMIT 2 OFFSET 1" in sql for sql in reads), reads  # two keys travel, not a batch's


def test_a_batch_never_holds_more_than_its_size_when_events_share_a_processed_at(history):
    """All six old events were processed at the same instant: the key breaks the tie, so each
    range is two rows, not every row of that instant at once."""
    seen: list[tuple[int, int]] = []
    before = timezone.now() - timedelta(days=30)
    retention.prune(using="default", before=before, batch_size=2, progress=lambda d, b: seen.append((d, b)))
    assert seen == [(2, 1), (4, 2), (5, 3)]  # the third range is evt_old_4 and evt_paid, which stays
    assert remaining() == KEPT


def test_batches_follow_processed_at_then_the_key_whatever_order_the_keys_were_written_in():
    # Keys written in the opposite order to processed_at, with ties: each range is the next two
    # of (processed_at, key), none read twice or skipped.
    base = timezone.now() - timedelta(days=40)
    seconds = [5, 5, 3, 3, 1, 1, 0]
    for n, second in enumerate(seconds):
        StripeEventFactory(event_id=f"evt_{n}", processed=True, processed_at=base + timedelta(seconds=second))
    seen: list[tuple[int, int]] = []
    pruned = retention.prune(
        using="default",
        before=base + timedelta(days=1),
        batch_size=2,
        progress=lambda d, b: seen.append((d, b)),
    )
    assert seen == [(2, 1), (4, 2), (6, 3), (7, 4)]
    assert (pruned.deleted, pruned.batches, remaining()) == (7, 4, [])


def test_a_key_the_ledger_keeps_at_the_start_of_a_tie_is_walked_past_once():
    # Five events processed at one instant, the first key a ledger entry's: each range still
    # deletes what it should, and the kept key is not counted into the next range.
    at = timezone.now() - timedelta(days=40)
    paid = StripeEventFactory(event_id="evt_paid", processed=True, processed_at=at)
    LedgerEntryFactory(event=paid)
    for n in range(4):
        StripeEventFactory(event_id=f"evt_{n}", processed=True, processed_at=at)
    seen: list[tuple[int, int]] = []
    retention.prune(
        using="default",
        before=at + timedelta(days=1),
        batch_size=2,
        progress=lambda d, b: seen.append((d, b)),
    )
    assert seen == [(1, 1), (3, 2), (4, 3)]
    assert remaining() == ["evt_paid"]


def test_with_a_listener_for_deletions_the_collector_deletes_and_tells_it(history):
    from django.db.models.signals import post_delete

    told = []
    old = set(StripeEvent.objects.filter(event_id__startswith="evt_old_").values_list("pk", flat=True))

    def listener(sender, instance, **kwargs):
        told.append(instance.pk)  # only the key is read: the payloads never are

    post_delete.connect(listener, sender=StripeEvent)
    try:
        run("--older-than", "30d", "--batch-size", "2")
    finally:
        post_delete.disconnect(listener, sender=StripeEvent)
    assert sorted(told) == sorted(old)
    assert remaining() == KEPT


@pytest.fixture(params=["test_receipts", "+"], ids=["related-name", "hidden"])
def receipts(request):
    """A project's own model with a foreign key to events (a receipt per event, say), made for
    one test: its table created, then dropped and the model forgotten. With ``related_name="+"``
    the relation is hidden from the event's side, and counts all the same."""
    from django.apps import apps
    from django.db import models

    class Receipt(models.Model):
        event = models.ForeignKey(StripeEvent, on_delete=models.CASCADE, related_name=request.param)

        class Meta:
            app_label = "testapp"

        def __str__(self) -> str:
            return f"receipt for {self.event_id}"

    with connection.schema_editor() as editor:
        editor.create_model(Receipt)
    try:
        yield Receipt
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Receipt)
        del apps.all_models["testapp"]["receipt"]
        apps.clear_cache()


def test_with_a_project_s_own_foreign_key_to_events_the_collector_applies_its_on_delete(history, receipts):
    # One raw DELETE would break the foreign key (or leave rows pointing at nothing): the
    # collector deletes the project's rows as its on_delete says, in the batch's transaction.
    old = StripeEvent.objects.get(event_id="evt_old_0")
    recent = StripeEvent.objects.get(event_id="evt_recent")
    receipts.objects.create(event=old)
    receipts.objects.create(event=recent)
    run("--older-than", "30d", "--batch-size", "2")
    assert remaining() == KEPT
    assert [receipt.event.event_id for receipt in receipts.objects.all()] == ["evt_recent"]


@pytest.mark.parametrize("horizon", ["3d", "72h", "259200"])
def test_a_horizon_of_exactly_stripe_s_retries_is_accepted(horizon, history):
    StripeEventFactory(event_id="evt_4_days", processed=True, processed_at=timezone.now() - timedelta(days=4))
    assert "Deleted 6 events" in run("--older-than", horizon)
    assert "evt_4_days" not in remaining()


@pytest.mark.parametrize("horizon", ["2d", "71h", "60"])
def test_a_horizon_inside_stripe_s_retries_is_refused(horizon, history):
    with pytest.raises(CommandError, match="shorter than Stripe's 3 days of retries"):
        run("--older-than", horizon)
    assert len(remaining()) == 12


def test_a_horizon_inside_stripe_s_retries_is_said_as_a_duration():
    with pytest.raises(CommandError) as refused:
        run("--older-than", "1d")
    assert str(refused.value) == (
        "--older-than: 1d00h is shorter than Stripe's 3 days of retries: a delivery Stripe retries "
        "after its event is deleted would be processed again."
    )


@pytest.mark.parametrize(
    ("horizon", "message"),
    [
        ("a month", "--older-than: 'a month' is not a duration"),
        # Past Python's dates: a clear refusal, never an OverflowError.
        ("99999999999d", "--older-than: '99999999999d' is longer than 3650d, the longest accepted."),
        ("²d", "--older-than: '²d' is not a duration"),
    ],
)
def test_a_horizon_that_is_not_a_duration_is_refused(horizon, message):
    with pytest.raises(CommandError) as refused:
        run("--older-than", horizon)
    assert str(refused.value).startswith(message)


def test_a_pruned_event_delivered_again_is_processed_again(history):
    # Why the horizon has a floor: past it, an event's id is forgotten.
    event = build_event(id="evt_old_0")
    run("--older-than", "30d")
    assert deliver(Client(), event).json()["status"] == "processed"
