"""``manage.py stripe_events_status``: counts by state, the oldest unprocessed event, the lag; JSON;
exit status 1 past the limits given."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from stripe_idempotency.factories import StripeEventFactory
from stripe_idempotency.models import EventEffect
from stripe_idempotency.status import format_duration, parse_duration

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("stripe_events_status", *args, stdout=out, stderr=err, no_color=True)
    except CommandError as error:
        return error.returncode, out.getvalue(), str(error)
    return 0, out.getvalue(), err.getvalue()


@pytest.fixture
def pipeline():
    """One event in each unprocessed state, and 20 processed ones whose lags are 1 s .. 20 s."""
    now = timezone.now()
    StripeEventFactory(event_id="evt_waiting", received_at=now - timedelta(hours=2))
    StripeEventFactory(claimed=True)
    StripeEventFactory(stale=True)
    StripeEventFactory(failed=True, received_at=now - timedelta(minutes=5))
    StripeEventFactory(dead=True, received_at=now - timedelta(minutes=5))
    for n in range(1, 21):
        # Received n s before processed; created at Stripe a day before that (a resend).
        received = now - timedelta(seconds=n)
        StripeEventFactory(
            processed=True, received_at=received, created=received - timedelta(days=1), processed_at=now
        )
    # Processed before the window: not in the lag.
    StripeEventFactory(processed=True, created=now - timedelta(days=2), processed_at=now - timedelta(days=1))


def test_counts_every_state_the_oldest_unprocessed_and_the_lag(pipeline):
    code, out, _ = run("--json")
    report = json.loads(out)
    assert code == 0
    assert report["counts"] == {
        "pending": 1,
        "claimed": 1,
        "stale": 1,
        "failed": 1,
        "dead": 1,
        "processed": 21,
    }
    assert report["oldest_unprocessed_event_id"] == "evt_waiting"
    assert 2 * 3600 <= report["oldest_unprocessed_seconds"] < 2 * 3600 + 60
    assert report["window_seconds"] == 3600
    lag = report["lag_seconds"]
    # From receipt, what the app controls. Nearest rank over 20 lags of 1..20 s: p50 is the
    # 10th, p95 the 19th, p99 the 20th.
    assert (lag["count"], round(lag["p50"]), round(lag["p95"]), round(lag["p99"])) == (20, 10, 19, 20)
    # Stripe's age of the same events, apart: a resend's day does not count as lag.
    since = report["since_created_seconds"]
    day = 86400
    assert (since["count"], round(since["p50"]), round(since["p99"])) == (20, day + 10, day + 20)
    assert report["alerts"] == []


def test_the_text_report(pipeline):
    code, out, _ = run()
    lines = out.splitlines()
    assert code == 0
    assert lines[:6] == [
        "pending            1",
        "claimed            1",
        "stale              1",
        "failed             1",
        "dead               1",
        "processed         21",
    ]
    assert lines[6] == "Oldest unprocessed: evt_waiting, received 2h00m ago."
    assert (
        lines[7] == "Lag from receipt to processed, last 1h00m (20 events): p50 10.0s, p95 19.0s, p99 20.0s."
    )
    assert lines[8] == (
        "From Stripe's 'created' to processed (Stripe's retries and resends included): "
        "p50 1d00h, p95 1d00h, p99 1d00h."
    )


def test_each_limit_passed_is_an_alert_and_exit_status_1(pipeline):
    code, out, error = run(
        "--json",
        "--max-oldest-unprocessed",
        "15m",
        "--max-dead",
        "0",
        "--max-failed",
        "1",
        "--max-lag-p99",
        "30s",
    )
    assert code == 1
    assert json.loads(out)["alerts"] == [
        error.split("; ")[0],
        "1 dead events (limit 0)",
    ]
    assert error.startswith("the oldest unprocessed event has waited 2h00m (limit 15m)")
    assert run("--max-oldest-unprocessed", "3h", "--max-dead", "1", "--max-lag-p99", "15s")[0] == 1
    assert run("--max-oldest-unprocessed", "3h", "--max-dead", "1", "--max-lag-p99", "25s")[0] == 0


def test_an_empty_table_and_a_bad_duration():
    code, out, _ = run()
    assert code == 0
    assert "Nothing unprocessed." in out
    assert "Nothing processed in the last 1h00m." in out
    assert run("--window", "soon") == (
        1,
        "",
        "--window: 'soon' is not a duration: give seconds, or a number with s, m, h or d (e.g. 15m).",
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        # Past Python's dates, or PostgreSQL's intervals: a clear refusal, never a traceback.
        (["--window", "999999999d"], "--window: '999999999d' is longer than 3650d, the longest accepted."),
        (["--window", "99999999999d"], "--window: '99999999999d' is longer than 3650d"),
        (["--max-lag-p99", "..."], "--max-lag-p99: '...' is not a duration"),
        (["--max-oldest-unprocessed", "²h"], "--max-oldest-unprocessed: '²h' is not a duration"),
        (["--max-dead", "²"], "--max-dead: '²' is not a whole number from 0 to 1000000000000."),
        (["--max-failed", "-1"], "--max-failed: '-1' is not a whole number"),
    ],
)
def test_a_value_out_of_bounds_is_a_command_error(args, error):
    code, out, message = run(*args)
    assert (code, out) == (1, "")
    assert message.startswith(error)


def test_the_query_count_does_not_grow_with_the_table(pipeline, django_db_setup):
    from django.db import connection

    with CaptureQueriesContext(connection) as first:
        run("--json")
    StripeEventFactory.create_batch(50, processed=True, processed_at=timezone.now())
    with CaptureQueriesContext(connection) as second:
        run("--json")
    # States, processed count, oldest, the window's counts, and each lag's percentiles.
    assert len(first.captured_queries) == len(second.captured_queries) == 8


def test_durations():
    assert [parse_duration(text).total_seconds() for text in ("90", "90s", "15m", "2h", "1.5d")] == [
        90,
        90,
        900,
        7200,
        129600,
    ]
    assert [format_duration(timedelta(seconds=s)) for s in (5, 65, 3700, 90000)] == [
        "5s",
        "1m05s",
        "1h01m",
        "1d01h",
    ]
    assert [format_duration(timedelta(seconds=s), precise=True) for s in (0.25, 1.26, 75)] == [
        "250ms",
        "1.3s",
        "1m15s",
    ]


@pytest.fixture
def effects_in_every_state():
    """Effects of one processed event: 2 completed, one each pending (scheduled an hour ago),
    failed (waiting out its backoff) and dead."""
    event = StripeEventFactory(processed=True)
    now = timezone.now()

    def make(key: str, **fields):
        values = {"attempts": 0, "max_attempts": 3, **fields}
        return EventEffect.objects.create(
            event=event,
            name="shop.mail",
            key=key,
            idempotency_key=f"{event.event_id}:shop.mail:{key}",
            **values,
        )

    make("0", completed_at=now, attempts=1)
    make("1", completed_at=now, attempts=1)
    make("2", scheduled_at=now - timedelta(hours=1))
    make("3", claimed_at=now, attempts=1, last_error="boom", next_attempt_at=now + timedelta(hours=1))
    make("4", claimed_at=now, attempts=3, last_error="boom")
    return event


def test_effects_are_counted_by_state_with_the_oldest_still_to_run(effects_in_every_state):
    code, out, _ = run("--json")
    effects = json.loads(out)["effects"]
    assert code == 0
    assert effects["counts"] == {
        "pending": 1,
        "claimed": 0,
        "stale": 0,
        "failed": 1,
        "dead": 1,
        "processed": 2,
    }
    assert effects["oldest_pending_idempotency_key"] == f"{effects_in_every_state.event_id}:shop.mail:2"
    assert 3600 <= effects["oldest_pending_seconds"] < 3660
    text = run()[1].splitlines()[-1]
    assert text == (
        f"Effects: 1 pending, 1 failed, 1 dead, 2 processed. Oldest still to run: "
        f"{effects_in_every_state.event_id}:shop.mail:2, scheduled 1h00m ago."
    )


def test_dead_effects_and_an_old_pending_effect_are_alerts(effects_in_every_state):
    code, _, error = run("--max-dead-effects", "0", "--max-oldest-pending-effect", "15m")
    assert code == 1
    assert error == "1 dead effects (limit 0); the oldest pending effect has waited 1h00m (limit 15m)"
    assert run("--max-dead-effects", "1", "--max-oldest-pending-effect", "2h")[0] == 0
    assert (
        run("--max-dead-effects", "x")[2]
        == "--max-dead-effects: 'x' is not a whole number from 0 to 1000000000000."
    )
