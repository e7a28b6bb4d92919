"""reap_stale_claims and replay_stripe_event: exact output, exit status, what they change."""

from __future__ import annotations

import datetime as dt
import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.db.models.functions import Now
from django.test import override_settings

from stripe_idempotency import leases, outcomes, processing, reaper
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import LedgerEntry, StripeEvent
from stripe_idempotency.outcomes import Duplicate, Processed
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

TYPE = "checkout.session.completed"
TWO_HOURS = dt.timedelta(hours=2)


@pytest.fixture
def failing(connect):
    """Event ids whose receivers raise while they are in this set."""
    ids: set[str] = set()

    def fail(sender, event, **kwargs):
        if event.event_id in ids:
            raise RuntimeError("boom")

    connect(event_received, fail)
    return ids


def receive(event_id: str, event_type: str = TYPE):
    return processing.receive(IncomingEvent.from_payload(build_event(event_type, id=event_id)))


def claim(event_id: str):
    return leases.claim(IncomingEvent.from_payload(build_event(TYPE, id=event_id)))


def age_all(by=TWO_HOURS):
    """As if ``by`` had passed: since each event arrived, was claimed, and became due for a retry."""
    StripeEvent.objects.update(received_at=Now() - by, claimed_at=Now() - by)
    StripeEvent.objects.filter(next_attempt_at__isnull=False).update(next_attempt_at=Now() - by)


def expire(event_id: str):
    StripeEvent.objects.filter(event_id=event_id).update(claim_expires_at=Now() - dt.timedelta(seconds=1))


@pytest.fixture
def states(record_effects, failing):
    """evt_done (processed), evt_live (live claim), evt_expired (lease ran out), evt_failed (released)."""
    receive("evt_done")
    claim("evt_live")
    claim("evt_expired")
    expire("evt_expired")
    failing.add("evt_failed")
    receive("evt_failed")
    failing.discard("evt_failed")
    age_all()
    return failing


def reap(*args):
    out = StringIO()
    call_command("reap_stale_claims", *args, stdout=out, no_color=True)
    return out.getvalue()


def snapshot():
    return list(StripeEvent.objects.order_by("id").values())


def test_lists_stale_events(states):
    assert reap() == (
        "[1/2] evt_expired checkout.session.completed age 2h00m attempts 1: "
        "no error recorded (lease expired)\n"
        "[2/2] evt_failed checkout.session.completed age 2h00m attempts 1: RuntimeError: boom\n"
        "2 stale events: 0 dead.\n"
    )


def test_nothing_to_do_is_said_once_or_not_at_all():
    assert reap() == "No stale events.\n"
    assert reap("-v", "0") == ""


def test_dry_run_changes_nothing(states):
    before = snapshot()
    assert reap("--reprocess", "--dry-run") == (
        "Would reprocess [1/2] evt_expired checkout.session.completed age 2h00m attempts 1: "
        "no error recorded (lease expired)\n"
        "Would reprocess [2/2] evt_failed checkout.session.completed age 2h00m attempts 1: "
        "RuntimeError: boom\n"
        "2 stale events: would reprocess 2, 0 dead.\n"
    )
    assert snapshot() == before


def test_reprocess(states):
    assert reap("--reprocess") == (
        "Reprocessed [1/2] evt_expired checkout.session.completed age 2h00m attempts 1: "
        "no error recorded (lease expired): processed\n"
        "Reprocessed [2/2] evt_failed checkout.session.completed age 2h00m attempts 1: RuntimeError: boom: "
        "processed\n"
        "2 stale events: 2 processed, 0 failed again, 0 skipped, 0 dead.\n"
    )
    rows = {e.event_id: e for e in StripeEvent.objects.all()}
    assert rows["evt_expired"].processed_at is not None
    assert rows["evt_failed"].processed_at is not None
    assert (rows["evt_expired"].attempts, rows["evt_failed"].attempts) == (2, 2)
    # A live claim and a processed event are never touched.
    assert rows["evt_live"].processed_at is None
    assert rows["evt_live"].attempts == 1
    assert rows["evt_done"].attempts == 1
    assert sorted(Effect.objects.filter(receiver="typed").values_list("event_id", flat=True)) == [
        "evt_done",
        "evt_expired",
        "evt_failed",
    ]
    assert reap() == "No stale events.\n"


def test_an_event_that_fails_again_exits_non_zero(states):
    states.add("evt_failed")
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("reap_stale_claims", "--reprocess", "-v", "0", stdout=out, no_color=True)
    assert raised.value.returncode == 1
    # The event that failed again waits out its backoff now, and the summary says until when.
    assert re.fullmatch(
        r"2 stale events: 1 processed, 1 failed again, 0 skipped, 0 dead, 1 failed waiting for its "
        r"backoff \(the next due in \d+s, \d{4}-\d\d-\d\d \d\d:\d\d UTC\)\.",
        str(raised.value),
    )
    assert out.getvalue() == (
        "Reprocessed [2/2] evt_failed checkout.session.completed age 2h00m attempts 1: RuntimeError: boom: "
        "failed again: RuntimeError: boom\n"
    )
    assert StripeEvent.objects.get(event_id="evt_failed").attempts == 2


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_ATTEMPTS": 3})
def test_a_poison_event_is_reported_dead_and_left_alone(failing):
    failing.add("evt_poison")
    for _ in range(3):
        receive("evt_poison")
    age_all()
    before = snapshot()
    out = StringIO()
    with pytest.raises(
        CommandError, match=r"^1 stale event: 0 processed, 0 failed again, 0 skipped, 1 dead\.$"
    ):
        call_command("reap_stale_claims", "--reprocess", stdout=out, no_color=True)
    assert out.getvalue() == (
        "evt_poison checkout.session.completed age 2h00m attempts 3: RuntimeError: boom: DEAD after 3 "
        "attempts (MAX_ATTEMPTS 3); run `manage.py replay_stripe_event evt_poison` once it is fixed\n"
    )
    assert snapshot() == before


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_ATTEMPTS": 3})
def test_a_dead_event_is_still_claimed_and_processed_by_stripe_s_next_delivery(failing, record_effects):
    # Dead stops the reaper only: Stripe's own retries (or a resend from its Dashboard) are how
    # a fixed receiver most often meets the event again.
    failing.add("evt_poison")
    for _ in range(3):
        receive("evt_poison")
    failing.discard("evt_poison")
    assert StripeEvent.objects.with_state().get().state == "dead"
    assert isinstance(receive("evt_poison"), Processed)
    row = StripeEvent.objects.get()
    assert (row.attempts, row.processed_at is not None, row.claim_token) == (4, True, None)
    assert sorted(Effect.objects.filter(event_id="evt_poison").values_list("receiver", flat=True)) == [
        "received",
        "typed",
    ]


def test_limit_type_and_min_age(states):
    receive("evt_other_type", "invoice.paid")
    claim("evt_recent")
    expire("evt_recent")  # claimed just now: younger than --min-age
    StripeEvent.objects.filter(event_id="evt_other_type").update(
        processed_at=None, claimed_at=Now() - TWO_HOURS, received_at=Now() - TWO_HOURS
    )
    assert reap("--limit", "1").splitlines() == [
        "evt_expired checkout.session.completed age 2h00m attempts 1: no error recorded (lease expired)",
        "1 stale event: 0 dead.",
    ]
    assert reap("--type", "invoice.paid").splitlines() == [
        "evt_other_type invoice.paid age 2h00m attempts 1: no error recorded (lease expired)",
        "1 stale event: 0 dead.",
    ]
    everything = [line.split()[1] for line in reap().splitlines()[:-1]]
    assert everything == ["evt_expired", "evt_failed", "evt_other_type", "evt_recent"]
    aged = [line.split()[1] for line in reap("--min-age", "3600").splitlines()[:-1]]
    assert aged == ["evt_expired", "evt_failed", "evt_other_type"]


@pytest.mark.parametrize(
    ("args", "message"), [(["--limit", "0"], "--limit"), (["--min-age", "-1"], "--min-age")]
)
def test_bad_options(args, message):
    with pytest.raises(CommandError, match=message):
        reap(*args)


@pytest.mark.only_on("postgresql", reason="EXPLAIN is checked on PostgreSQL")
def test_the_reapers_query_uses_the_index():
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            INSERT INTO {StripeEvent._meta.db_table}
                (event_id, type, livemode, api_version, payload, received_at, claimed_at, claimed_by,
                 processed_at, attempts, last_error)
            SELECT 'evt_bulk_' || n, 'invoice.paid', false, '', '{{}}', now(), now(), 'bulk', now(), 1, ''
            FROM generate_series(1, 50000) AS n
            """
        )
        cursor.execute(f"ANALYZE {StripeEvent._meta.db_table}")
    claim("evt_stale")
    expire("evt_stale")
    plan = leases.find_stale(limit=100).explain()
    assert "stripe_event_unprocessed_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


# -- replay_stripe_event --------------------------------------------------------------------


def replay(*args):
    out, err = StringIO(), StringIO()
    call_command("replay_stripe_event", *args, stdout=out, stderr=err, no_color=True)
    return out.getvalue(), err.getvalue()


def test_replay_runs_a_stale_event(states):
    assert replay("evt_failed") == ("Processed evt_failed (checkout.session.completed).\n", "")
    assert StripeEvent.objects.get(event_id="evt_failed").processed_at is not None


def test_replay_refuses_a_processed_event_without_force(states):
    with pytest.raises(CommandError, match="pass --force"):
        replay("evt_done")
    assert Effect.objects.filter(event_id="evt_done").count() == 2


def test_replay_with_force_runs_a_processed_event_again_and_says_so(states):
    out, err = replay("evt_done", "--force")
    assert out == "Processed evt_done (checkout.session.completed).\n"
    assert err.startswith("FORCED: evt_done (checkout.session.completed) was already processed;")
    assert Effect.objects.filter(event_id="evt_done").count() == 4
    row = StripeEvent.objects.get(event_id="evt_done")
    assert row.processed_at is not None
    assert row.attempts == 2


def test_a_forced_replay_that_another_process_beats_to_the_claim_says_busy_and_runs_nothing(
    states, monkeypatch
):
    # The event is read as processed, and another process reclaims it before this one can: the
    # rare race, made to happen. Nothing ran here, so nothing is said to have run twice.
    monkeypatch.setattr(leases, "reclaim_processed", lambda event, using=None: None)
    err = StringIO()
    with pytest.raises(CommandError, match=r"evt_done is being processed by .* right now"):
        call_command("replay_stripe_event", "evt_done", "--force", stderr=err, stdout=StringIO())
    assert err.getvalue() == ""
    assert Effect.objects.filter(event_id="evt_done").count() == 2  # its first run only


def test_a_forced_replay_does_not_credit_a_referenced_entry_twice(connect):
    # The receiver credits the ledger with the event's own reference: running the event
    # again (replay --force) finds the entry and moves no money.
    def credit(sender, event, **kwargs):
        LedgerEntry.objects.credit(
            account="cus_1", amount=1500, currency="usd", entry_type="deposit", reference=event.event_id,
            event=event,
        )  # fmt: skip

    connect(event_received, credit)
    receive("evt_paid")
    out, err = replay("evt_paid", "--force")
    assert out == "Processed evt_paid (checkout.session.completed).\n"
    assert err.startswith("FORCED: evt_paid")
    assert LedgerEntry.objects.count() == 1
    assert LedgerEntry.objects.balance(account="cus_1", currency="usd") == 1500
    assert StripeEvent.objects.get().attempts == 2


def test_replay_never_takes_a_live_claim(states):
    with pytest.raises(CommandError, match="being processed by test-instance"):
        replay("evt_live")
    with pytest.raises(CommandError, match="being processed"):
        replay("evt_live", "--force")
    assert StripeEvent.objects.get(event_id="evt_live").attempts == 1


def test_replay_runs_a_dead_event(failing, record_effects):
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_ATTEMPTS": 1}):
        failing.add("evt_poison")
        receive("evt_poison")
        failing.discard("evt_poison")
        assert StripeEvent.objects.with_state().get().state == "dead"
        assert replay("evt_poison")[0] == "Processed evt_poison (checkout.session.completed).\n"
    row = StripeEvent.objects.get()
    assert (row.processed_at is not None, row.attempts, row.claim_token) == (True, 2, None)
    assert Effect.objects.filter(event_id="evt_poison").count() == 2  # both receivers, once


def test_replay_of_a_failing_event_exits_non_zero(states):
    states.add("evt_failed")
    with pytest.raises(CommandError, match="evt_failed failed again: RuntimeError: boom") as raised:
        replay("evt_failed")
    assert raised.value.returncode == 1


def test_replay_of_an_unknown_event():
    with pytest.raises(CommandError, match="No stored Stripe event evt_nope"):
        replay("evt_nope")


@pytest.mark.parametrize(
    ("max_attempts", "horizon", "delays"), [(5, 150, [10, 20, 40, 80]), (2, 60, [60]), (1, 60, [])]
)
def test_retry_delays_double_and_together_span_the_horizon(max_attempts, horizon, delays):
    with override_settings(
        STRIPE_IDEMPOTENCY={"MAX_ATTEMPTS": max_attempts, "RETRY_HORIZON_SECONDS": horizon}
    ):
        assert [leases.retry_delay(n) for n in range(1, max_attempts)] == delays
        assert sum(delays) == (horizon if delays else 0)


def test_by_default_the_reapers_retries_span_stripes_three_days():
    assert sum(leases.retry_delay(n) for n in range(1, 20)) == pytest.approx(3 * 24 * 3600)


@override_settings(STRIPE_IDEMPOTENCY={"MAX_ATTEMPTS": 3, "RETRY_HORIZON_SECONDS": 3000})
def test_a_failed_event_waits_out_its_backoff_for_the_reaper_but_not_for_stripe(failing):
    failing.add("evt_backoff")
    assert isinstance(receive("evt_backoff"), outcomes.Failed)
    row = StripeEvent.objects.annotate(now=Now()).get()
    # The first of two retries: a third of the horizon, on the database clock.
    assert (row.next_attempt_at - row.now).total_seconds() == pytest.approx(1000, abs=5)
    # Waiting, not invisible: the run says so, and when it is due.
    assert re.fullmatch(
        r"No stale events; 0 dead, 1 failed waiting for its backoff "
        r"\(the next due in 16m[34]\ds, \d{4}-\d\d-\d\d \d\d:\d\d UTC\)\.\n",
        reap("--reprocess"),
    )
    # Once due, the reaper takes it; failing again, it waits twice as long.
    StripeEvent.objects.update(next_attempt_at=Now() - dt.timedelta(seconds=1))
    with pytest.raises(CommandError):
        reap("--reprocess")
    row = StripeEvent.objects.annotate(now=Now()).get()
    assert row.attempts == 2
    assert (row.next_attempt_at - row.now).total_seconds() == pytest.approx(2000, abs=5)
    # Stripe's own delivery does not wait: it is processed at once.
    failing.discard("evt_backoff")
    assert isinstance(receive("evt_backoff"), outcomes.Processed)


def test_the_reaper_reads_stale_events_in_bounded_batches(failing):
    from django.test.utils import CaptureQueriesContext

    for n in range(25):
        claim(f"evt_batch_{n:02d}")
    StripeEvent.objects.update(claim_expires_at=Now() - dt.timedelta(seconds=1))
    age_all()
    with CaptureQueriesContext(connection) as queries:
        out = reap("--reprocess", "--dry-run", "--batch-size", "10")
    assert out.count("Would reprocess") == 25
    assert "[25/25] evt_batch_24" in out
    table = StripeEvent._meta.db_table
    reads = [q["sql"] for q in queries if q["sql"].startswith("SELECT") and table in q["sql"]]
    assert len(reads) == 6  # one COUNT, then 10 + 10 + 5 rows, then what waits and what is dead
    assert "COUNT(" in reads[0].upper()
    assert all("LIMIT 10" in sql or "LIMIT 5" in sql for sql in reads[1:4]), reads[1:4]
    assert all("COUNT(" in sql.upper() for sql in reads[4:]), reads[4:]
    assert '"payload"' not in " ".join(reads).replace("`", '"')  # a dry run reads no payloads


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], "MAX_ATTEMPTS": 20})
def test_dead_events_waiting_for_a_backoff_are_still_reported_and_fail_the_run():
    # Dead events released with a long backoff ahead: the run lists them, and exits 1.
    for event_id, attempts in (("evt_dead_1", 37), ("evt_dead_2", 48)):
        claim(event_id)
        StripeEvent.objects.filter(event_id=event_id).update(
            claim_expires_at=None,
            claim_token=None,
            attempts=attempts,
            last_error="RuntimeError: boom",
            next_attempt_at=Now() + dt.timedelta(hours=36),
        )
    age_all(dt.timedelta(hours=2))
    StripeEvent.objects.update(next_attempt_at=Now() + dt.timedelta(hours=36))
    out = StringIO()
    with pytest.raises(CommandError) as raised:
        call_command("reap_stale_claims", "--reprocess", stdout=out, no_color=True)
    assert raised.value.returncode == 1
    assert str(raised.value) == "2 stale events: 0 processed, 0 failed again, 0 skipped, 2 dead."
    assert [line.split(":")[0] for line in out.getvalue().splitlines()] == [
        "[1/2] evt_dead_1 checkout.session.completed age 2h00m attempts 37",
        "[2/2] evt_dead_2 checkout.session.completed age 2h00m attempts 48",
    ]
    # Another type's run has none; left out of the listing by --min-age, they still fail the run.
    assert reap("--type", "invoice.paid") == "No stale events.\n"
    with pytest.raises(CommandError) as raised:
        reap("--min-age", "86400")
    assert (raised.value.returncode, str(raised.value)) == (1, "No stale events due; 2 dead.")


def test_the_reaper_is_a_library_function_returning_what_it_did(states):
    # What the command prints, as values: a scheduler's task or a health check calls the same.
    seen = []
    report = reaper.reap(using="default", reprocess=True, step=seen.append)
    assert (report.found, dict(report.tally), report.failed_again) == (2, {"processed": 2}, False)
    assert [(step.event.event_id, step.action, type(step.outcome)) for step in seen] == [
        ("evt_expired", "ran", Processed),
        ("evt_failed", "ran", Processed),
    ]
    assert (report.waiting.dead, report.waiting.failed) == (0, 0)
    assert reaper.reap(using="default").found == 0


def test_replay_is_a_library_function_forced_only_when_asked(record_effects):
    receive("evt_done")
    event = StripeEvent.objects.get()
    assert isinstance(processing.replay(event), Duplicate)
    assert Effect.objects.count() == 2  # not run again
    assert isinstance(processing.replay(event, force=True), Processed)
    assert Effect.objects.count() == 4  # both receivers, once more
    assert StripeEvent.objects.get().attempts == 2
