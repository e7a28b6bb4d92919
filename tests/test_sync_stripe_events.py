"""Catching up from Stripe's Events API, against localstripe (a stateful fake Stripe from PyPI,
not ours): events created while the endpoint was down are processed once by the sync, through the
delivery's claim; again-delivered ones are duplicates; a scheduled run resumes at the watermark;
a sync and live deliveries at the same moment run each event once."""

from __future__ import annotations

import collections
import itertools
import random
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from django.urls import reverse

from stripe_idempotency import sync
from stripe_idempotency.endpoints import endpoints
from stripe_idempotency.models import EventState, EventSyncWatermark, PruneWatermark, StripeEvent
from stripe_idempotency.signals import event_received, signal_for
from stripe_idempotency.testing import build_event, deliver, deliver_concurrently, sign
from tests.concurrency import wait_for
from tests.events_api import EventsAPI, page
from tests.servers import ROOT, Gunicorn, LocalStripe, answer_status, app_environment, free_port, post, show
from tests.settings import WEBHOOK_SECRET
from tests.test_localstripe import SECRET, shop_at
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

API_KEY = "sk_test_localstripe"
EVENTS, ENTRIES = "stripe_idempotency_stripeevent", "stripe_idempotency_ledgerentry"


@pytest.fixture
def localstripe(tmp_path: Path, settings):
    """localstripe with no webhook registered: our endpoint is down as far as it knows."""
    server = LocalStripe(tmp_path)
    settings.STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "API_KEY": API_KEY,
        "API_BASE": server.url,
    }
    yield server
    server.stop()


@pytest.fixture
def effects(connect):
    connect(event_received, lambda sender, event, **kwargs: Effect.objects.create(event_id=event.event_id))


def listed(localstripe: LocalStripe) -> list[str]:
    stripe = localstripe.client()
    return [event.id for event in stripe.v1.events.list(params={"limit": 100}).auto_paging_iter()]


def test_events_created_while_the_endpoint_was_down_are_processed_once(localstripe, effects, capsys):
    shop_at(localstripe.client())
    sent = listed(localstripe)
    call_command("sync_stripe_events", "--since", "1h")
    out = capsys.readouterr().out
    assert f"{len(sent)} events listed" in out
    assert f"0 processed already; fed {len(sent)}: {len(sent)} processed." in out, out
    rows = StripeEvent.objects.with_state()
    assert sorted(rows.values_list("event_id", flat=True)) == sorted(sent)
    assert {(row.state, row.attempts) for row in rows} == {(EventState.PROCESSED, 1)}
    assert collections.Counter(Effect.objects.values_list("event_id", flat=True)) == dict.fromkeys(sent, 1)
    # Fed oldest first (Stripe lists newest first).
    created = list(StripeEvent.objects.order_by("processed_at").values_list("created", flat=True))
    assert created == sorted(created)

    # Delivered now, late: duplicates. A second run resumes at the watermark and finds nothing new.
    for event_id in sent:
        assert deliver(Client(), localstripe.event_body(event_id)).json()["status"] == "duplicate"
    mark = EventSyncWatermark.objects.get(endpoint="")
    # The run's last second included: the watermark may lie up to a second past its start.
    assert timedelta(seconds=-1) <= datetime.now(UTC) - mark.synced_until < timedelta(minutes=1)
    call_command("sync_stripe_events")
    out = capsys.readouterr().out
    assert f"{len(sent)} processed already; fed 0: none." in out, out
    assert Effect.objects.count() == len(sent)


def test_only_what_is_missing_or_unprocessed_is_fed(localstripe, effects, capsys, connect):
    stripe = localstripe.client()
    delivered = stripe.v1.customers.create(params={"email": "one@example.com"})
    failing = stripe.v1.customers.create(params={"email": "two@example.com"})
    missing = stripe.v1.customers.create(params={"email": "three@example.com"})
    by_customer = {}
    for event in stripe.v1.events.list(params={"limit": 100}).auto_paging_iter():
        by_customer[event.data.object.id] = event.id

    def fail_once(sender, event, **kwargs):
        if event.object_id == failing.id and event.attempts == 1:
            raise RuntimeError("the CRM timed out")

    connect(signal_for("customer.created"), fail_once)
    deliver(Client(), localstripe.event_body(by_customer[delivered.id]))
    assert deliver(Client(), localstripe.event_body(by_customer[failing.id])).status_code == 500

    call_command("sync_stripe_events", "--since", "10m", "--dry-run")
    out = capsys.readouterr().out
    assert f"Would process {by_customer[failing.id]} customer.created" in out
    assert "(failed)" in out
    assert f"Would process {by_customer[missing.id]} customer.created" in out
    assert "(missing)" in out
    assert by_customer[delivered.id] not in out
    assert "3 events listed" in out
    assert "1 processed already, 2 would be processed; nothing changed (dry run)." in out
    assert StripeEvent.objects.count() == 2
    assert not EventSyncWatermark.objects.exists()

    call_command("sync_stripe_events", "--since", "10m", "--type", "customer.created")
    out = capsys.readouterr().out
    assert "1 processed already; fed 2: 2 processed." in out, out
    assert set(StripeEvent.objects.values_list("attempts", flat=True)) == {1, 2}  # the failed one retried
    assert StripeEvent.objects.processed().count() == 3


def test_a_failure_during_the_sync_exits_1_and_leaves_the_event_to_the_reaper(localstripe, connect, capsys):
    stripe = localstripe.client()
    stripe.v1.customers.create(params={"email": "one@example.com"})

    def fail(sender, event, **kwargs):
        raise RuntimeError("the CRM is down")

    connect(signal_for("customer.created"), fail)
    with pytest.raises(CommandError) as raised:
        call_command("sync_stripe_events", "--since", "10m")
    assert raised.value.returncode == 1
    assert "fed 1: 1 error." in str(raised.value)
    assert "failed (left to the reaper; see its last error)" in capsys.readouterr().out
    assert StripeEvent.objects.failed().count() == 1
    assert EventSyncWatermark.objects.exists()  # stored, so the reaper owns it: the sync moves on


def test_an_endpoint_s_live_mode_and_name_apply(localstripe, settings, capsys):
    localstripe.client().v1.customers.create(params={"email": "one@example.com"})
    live = {
        **settings.STRIPE_IDEMPOTENCY,
        "ENDPOINTS": {"live": {"WEBHOOK_SECRETS": ["whsec_l"], "LIVEMODE": True}},
    }
    with override_settings(STRIPE_IDEMPOTENCY=live):
        call_command("sync_stripe_events", "--since", "10m", "--endpoint", "live")
    assert "fed 1: 1 ignored." in capsys.readouterr().out  # localstripe's events are test events
    assert not StripeEvent.objects.exists()
    named = {**settings.STRIPE_IDEMPOTENCY, "ENDPOINTS": {"platform": {"WEBHOOK_SECRETS": ["whsec_p"]}}}
    with override_settings(STRIPE_IDEMPOTENCY=named):
        call_command("sync_stripe_events", "--since", "10m", "--endpoint", "platform")
    assert StripeEvent.objects.get().endpoint == "platform"
    assert EventSyncWatermark.objects.filter(endpoint="platform").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((), "No earlier run for the default endpoint to resume from: give --since"),
        (("--since", "yesterday"), "--since 'yesterday': give a date"),
        (("--since", "2999-01-01"), "that is not in the past"),
        (("--since", "99999999999d"), r"--since '99999999999d': give a date .* at most 3650d\)"),
        (("--since", "2026-13-45"), "--since '2026-13-45': give a date"),
        (("--since", "1h", "--endpoint", "nope"), "--endpoint 'nope': no such endpoint"),
    ],
)
def test_bad_arguments_are_clear_errors_and_change_nothing(localstripe, arguments, message):
    with pytest.raises(CommandError, match=message):
        call_command("sync_stripe_events", *arguments)
    assert not EventSyncWatermark.objects.exists()


def test_without_an_api_key_the_error_says_which_setting(settings):
    settings.STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": [WEBHOOK_SECRET]}
    with pytest.raises(CommandError, match=r"set STRIPE_IDEMPOTENCY\['API_KEY'\]"):
        call_command("sync_stripe_events", "--since", "1h")


def test_a_stripe_that_cannot_be_reached_is_a_clear_error(settings):
    settings.STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
        "API_KEY": API_KEY,
        "API_BASE": f"http://127.0.0.1:{free_port()}",  # nothing listens there
    }
    with pytest.raises(CommandError, match=r"Stripe's Events API failed: .*run again"):
        call_command("sync_stripe_events", "--since", "1h")
    assert not EventSyncWatermark.objects.exists()


def test_a_thin_only_endpoint_is_refused(localstripe, settings):
    thin = {
        **settings.STRIPE_IDEMPOTENCY,
        "ENDPOINTS": {"thin": {"WEBHOOK_SECRETS": ["whsec_t"], "PAYLOAD": "thin"}},
    }
    with override_settings(STRIPE_IDEMPOTENCY=thin), pytest.raises(CommandError, match="thin events only"):
        call_command("sync_stripe_events", "--since", "1h", "--endpoint", "thin")


def test_nothing_from_before_the_last_prune_is_listed(localstripe, effects, capsys):
    """A pruned event's id is forgotten: listed again, it would run again. So the listing starts
    at the prune's cutoff (Stripe created every event before it was processed here)."""
    stripe = localstripe.client()
    before = stripe.v1.customers.create(params={"email": "before@example.com"})
    # Stripe's created is in whole seconds: the cutoff must fall in a later one.
    wait_for(lambda: time.time() >= before.created + 1, "the next second")
    PruneWatermark.objects.create(pruned_before=datetime.now(UTC))
    after = stripe.v1.customers.create(params={"email": "after@example.com"})
    call_command("sync_stripe_events", "--since", "1h")
    captured = capsys.readouterr()
    assert "were pruned (prune_stripe_events): the listing starts there" in captured.err
    assert list(StripeEvent.objects.values_list("object_id", flat=True)) == [after.id]


def test_the_listing_goes_window_by_window_oldest_first(localstripe):
    """Stripe lists newest first; within a window the feed is oldest first, and the windows follow
    each other without a gap or an overlap."""
    now = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)
    windows = list(sync._windows(now - timedelta(hours=2, minutes=30), now))
    assert windows[0][0] == now - timedelta(hours=2, minutes=30)
    assert windows[-1][1] == now + timedelta(seconds=1)  # the second of `until` included
    assert all(a[1] == b[0] for a, b in itertools.pairwise(windows))
    assert len(windows) == 3


@pytest.mark.servers
@pytest.mark.only_on(
    "postgresql",
    "mariadb",
    "mysql",
    reason="SQLite's single writer would serialise the app server's workers.",
)
def test_a_sync_running_beside_deliveries_runs_each_event_once(server_database, tmp_path: Path, capsys):
    """Stripe delivers again (8 senders, every event twice, over 5 s) to the example project under
    gunicorn while two syncs run (each ``manage.py sync_stripe_events`` in a process of its own,
    as two cron hosts would start them): every event is processed once, by whichever claimed it
    first, and both ways in did some of the work."""
    db = server_database
    localstripe = LocalStripe(tmp_path)  # no webhook registered: nothing delivered yet
    server = Gunicorn(db.url, "sync-instance", workers=3, log_dir=tmp_path)
    environment = app_environment(db.url, STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=localstripe.url)
    try:
        shop_at(localstripe.client())
        sent = listed(localstripe)
        bodies = {event_id: localstripe.event_body(event_id) for event_id in sent}
        syncs = [
            subprocess.Popen(
                [sys.executable, "manage.py", "sync_stripe_events", "--since", "1h"],
                cwd=ROOT,
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(2)
        ]
        answers: collections.Counter[str] = collections.Counter()
        lock = threading.Lock()

        def attempt(event_id: str) -> None:
            _, _, body = post(server.url, bodies[event_id], sign(bodies[event_id], SECRET))
            with lock:
                answers[answer_status(body)] += 1

        order = [event_id for event_id in sent for _ in range(2)]
        random.Random(3).shuffle(order)
        deliver_concurrently(order, attempt, senders=8, spread=5.0)
        outputs = [process.communicate(timeout=300)[0] for process in syncs]
        assert [process.returncode for process in syncs] == [0, 0], outputs
        rows = db.rows(
            "SELECT event_id, attempts, processed_at IS NOT NULL FROM stripe_idempotency_stripeevent"
        )
        assert sorted(row[0] for row in rows) == sorted(sent)
        assert {(attempts, processed) for _, attempts, processed in rows} == {(1, True)}
        credited = db.rows(
            "SELECT reference FROM stripe_idempotency_ledgerentry WHERE entry_type = 'card_payment'"
        )
        assert len(credited) == len(set(credited)) > 0
        fed: collections.Counter[str] = collections.Counter()
        for output in outputs:
            fed.update(line.rsplit(": ", 1)[1] for line in output.splitlines() if line.startswith("evt_"))
        show(
            capsys,
            f"sync beside deliveries: {len(sent)} events; the deliveries' answers {dict(answers)}; "
            f"the two syncs' feeds {dict(fed)}",
        )
        assert set(fed) <= {"processed", "duplicate", "busy"}
        assert set(answers) <= {"processed", "duplicate", "busy"}
        # Both ways in ran events, and between them each event once.
        assert fed["processed"] > 0
        assert answers["processed"] > 0
        assert fed["processed"] + answers["processed"] == len(sent)
    finally:
        server.stop()
        localstripe.stop()


def test_the_admin_shows_each_endpoint_s_watermark(admin_client):
    EventSyncWatermark.objects.create(endpoint="", synced_until=datetime(2026, 12, 1, 12, tzinfo=UTC))
    EventSyncWatermark.objects.create(endpoint="connect", synced_until=datetime(2026, 12, 1, 13, tzinfo=UTC))
    page = admin_client.get(
        reverse("admin:stripe_idempotency_eventsyncwatermark_changelist")
    ).content.decode()
    assert "default" in page
    assert "connect" in page
    assert admin_client.get(reverse("admin:stripe_idempotency_eventsyncwatermark_add")).status_code == 403


# -- listings no fake Stripe serves on request: a scripted Events API ---------------------------


def listing_of(events: list[dict]):
    """Stripe's listing of ``events``: by ``created`` range and type, newest first, 100 a page."""

    def pages(query: dict[str, list[str]]) -> dict:
        low, high = int(query["created[gte]"][0]), int(query["created[lt]"][0])
        chosen = [e for e in events if low <= e["created"] < high]
        if "type" in query:
            chosen = [e for e in chosen if e["type"] == query["type"][0]]
        chosen.sort(key=lambda e: e["created"], reverse=True)
        if "starting_after" in query:
            ids = [e["id"] for e in chosen]
            chosen = chosen[ids.index(query["starting_after"][0]) + 1 :]
        return page(chosen[:100], has_more=len(chosen) > 100)

    return pages


@pytest.fixture
def events_api(settings):
    servers: list[EventsAPI] = []

    def serve(pages) -> EventsAPI:
        server = EventsAPI(pages)
        servers.append(server)
        settings.STRIPE_IDEMPOTENCY = {
            "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
            "API_KEY": API_KEY,
            "API_BASE": server.url,
        }
        return server

    yield serve
    for server in servers:
        server.stop()


def minutes_ago(minutes: int) -> int:
    return int(time.time()) - minutes * 60


def test_a_run_of_some_types_leaves_the_watermark_for_the_scheduled_run(events_api, effects, capsys):
    paid = build_event("invoice.paid", id="evt_paid", created=minutes_ago(90))
    created = build_event("customer.created", id="evt_customer", created=minutes_ago(80))
    events_api(listing_of([paid, created]))
    before = datetime.now(UTC) - timedelta(hours=2)
    EventSyncWatermark.objects.create(endpoint="", synced_until=before)

    call_command("sync_stripe_events", "--type", "invoice.paid", "--since", "2h")
    out = capsys.readouterr().out
    assert "fed 1: 1 processed." in out
    assert "The watermark is not moved by a run of some types only" in out
    assert EventSyncWatermark.objects.get().synced_until == before
    # The scheduled run starts from the watermark, and finds the event the filtered run skipped.
    call_command("sync_stripe_events")
    out = capsys.readouterr().out
    assert "1 processed already; fed 1: 1 processed." in out, out
    assert sorted(Effect.objects.values_list("event_id", flat=True)) == ["evt_customer", "evt_paid"]
    assert EventSyncWatermark.objects.get().synced_until > before


def test_a_busy_hour_is_listed_page_after_page_to_its_last_event(events_api, effects, capsys):
    # 250 events, most sharing a second with others: the cursor is the last id of the page, not
    # a time (a time would repeat or skip the events of the second a page ends in).
    events = [build_event(id=f"evt_{n:03}", created=minutes_ago(50) + n // 7) for n in range(250)]
    server = events_api(listing_of(events))
    call_command("sync_stripe_events", "--since", "1h")
    out = capsys.readouterr().out
    assert "250 events listed" in out, out
    assert "fed 250: 250 processed." in out, out
    assert Effect.objects.count() == 250
    assert len(set(Effect.objects.values_list("event_id", flat=True))) == 250
    first, last = events[0]["created"], events[-1]["created"]
    window = [
        q for q in server.queries if int(q["created[gte]"][0]) <= first and last < int(q["created[lt]"][0])
    ]
    newest_first = sorted(events, key=lambda e: e["created"], reverse=True)
    assert [query.get("starting_after") for query in window] == [
        None,
        [newest_first[99]["id"]],
        [newest_first[199]["id"]],
    ]


def test_a_run_over_an_older_range_never_moves_the_watermark_back(events_api):
    # A repair of an older range runs beside the scheduled runs: what they listed stays listed.
    events_api(listing_of([build_event(id="evt_old", created=minutes_ago(150))]))
    now = datetime.now(UTC).replace(microsecond=0)
    EventSyncWatermark.objects.create(endpoint="", synced_until=now - timedelta(minutes=10))
    report = sync.sync(endpoints()[0], since=now - timedelta(hours=3), until=now - timedelta(hours=1))
    assert report.fed["processed"] == 1
    assert report.watermark == now - timedelta(minutes=10)
    assert EventSyncWatermark.objects.get().synced_until == now - timedelta(minutes=10)


def test_an_event_that_cannot_be_stored_holds_the_watermark_before_it(events_api, effects, capsys):
    first = build_event(id="evt_first", created=minutes_ago(150))
    refused = build_event(id="evt bad id", created=minutes_ago(90))
    last = build_event(id="evt_last", created=minutes_ago(30))
    events_api(listing_of([first, refused, last]))
    started = datetime.now(UTC).replace(microsecond=0)
    with pytest.raises(CommandError) as raised:
        call_command("sync_stripe_events", "--since", "3h")
    assert raised.value.returncode == 1
    message = str(raised.value)
    assert "fed 3: 2 processed, 1 refused." in message
    assert "1 listed event could not be stored" in message
    # The first window (3h ago to 2h ago) was listed in full; the second holds the refused one.
    mark = EventSyncWatermark.objects.get().synced_until
    assert (
        started - timedelta(hours=2, seconds=2) <= mark <= started - timedelta(hours=2) + timedelta(seconds=1)
    )
    assert f"the watermark stays at {mark:%Y-%m-%d %H:%M:%S} UTC" in message
    assert sorted(Effect.objects.values_list("event_id", flat=True)) == ["evt_first", "evt_last"]


def test_a_page_served_again_with_more_to_come_is_an_error_not_a_loop(events_api, effects):
    same = page([build_event(id="evt_1", created=minutes_ago(5))], has_more=True)
    api = events_api(lambda query: same)
    with pytest.raises(CommandError, match="the listing makes no progress"):
        call_command("sync_stripe_events", "--since", "10m")
    assert len(api.queries) == 2
    assert not EventSyncWatermark.objects.exists()
    assert not Effect.objects.exists()  # nothing of the window fed


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        ([1], "Entry 1 of page 1 of the listing of events created .* is not an event object with an id: 1"),
        ([{"object": "event"}], 'Entry 1 .* with an id: {"object": "event"}'),
        (None, "Page 1 of the listing .* has no list of events"),
    ],
)
def test_an_entry_that_is_not_an_event_is_a_command_error_naming_it(events_api, entries, said):
    events_api(lambda query: page(entries))
    with pytest.raises(CommandError, match=said):
        call_command("sync_stripe_events", "--since", "10m")
    assert not EventSyncWatermark.objects.exists()
    assert not StripeEvent.objects.exists()
