"""The event admin, through the admin views as a logged-in staff user."""

from __future__ import annotations

import datetime as dt

import pytest
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db.models.functions import Now
from django.urls import reverse

from stripe_idempotency import leases
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received
from stripe_idempotency.testing import build_event
from tests.testapp.models import Effect

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "admin:stripe_idempotency_stripeevent_changelist"


@pytest.fixture
def staff(client):
    user = User.objects.create_superuser("ops", "ops@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def one_of_each(stripe_event_factory):
    """evt_processed, evt_claimed (live lease), evt_expired (lease ran out), evt_failed (released)."""
    stripe_event_factory(event_id="evt_processed", processed=True)
    stripe_event_factory(event_id="evt_claimed", claimed=True)
    stripe_event_factory(event_id="evt_expired", stale=True)
    stripe_event_factory(event_id="evt_failed", failed=True)


def listed(staff, **params) -> list[str]:
    response = staff.get(reverse(CHANGELIST), params)
    assert response.status_code == 200
    return sorted(e.event_id for e in response.context["cl"].result_list)


def test_state_filters(staff, one_of_each):
    assert listed(staff) == ["evt_claimed", "evt_expired", "evt_failed", "evt_processed"]
    assert listed(staff, state="processed") == ["evt_processed"]
    assert listed(staff, state="claimed") == ["evt_claimed"]
    assert listed(staff, state="stale") == ["evt_expired"]
    assert listed(staff, state="failed") == ["evt_failed"]
    assert listed(staff, state="pending") == []
    assert listed(staff, state="dead") == []
    StripeEvent.objects.filter(event_id="evt_failed").update(attempts=20)
    assert listed(staff, state="dead") == ["evt_failed"]
    response = staff.get(reverse(CHANGELIST), {"state": "dead"})
    assert '<td class="field-state">dead</td>' in response.content.decode()


def test_the_column_the_filters_and_the_reaper_agree_on_every_state(staff, one_of_each, stripe_event_factory):
    # One definition of an event's state: the column shows what the filter
    # selects, and the reaper takes exactly the unprocessed states without a live lease.
    stripe_event_factory(event_id="evt_pending")
    stripe_event_factory(event_id="evt_dead", dead=True)
    expected = {
        "evt_processed": "processed",
        "evt_claimed": "claimed by factory",
        "evt_expired": "stale",
        "evt_failed": "failed",
        "evt_pending": "pending",
        "evt_dead": "dead",
    }
    response = staff.get(reverse(CHANGELIST))
    admin = response.context["cl"].model_admin
    shown = {event.event_id: admin.state(event) for event in response.context["cl"].result_list}
    assert shown == expected
    for event_id, column in expected.items():
        state = column.split()[0]
        assert listed(staff, state=state) == [event_id]
    StripeEvent.objects.update(next_attempt_at=None)  # every failure's backoff over
    reaped = sorted(leases.find_stale().values_list("event_id", flat=True))
    assert reaped == ["evt_dead", "evt_expired", "evt_failed", "evt_pending"]


def test_search_by_event_id_and_type(staff, one_of_each):
    assert listed(staff, q="evt_failed") == ["evt_failed"]
    assert len(listed(staff, q="checkout.session.completed")) == 4


def test_detail_shows_the_payload_and_the_error_and_cannot_be_changed(staff, one_of_each):
    event = StripeEvent.objects.get(event_id="evt_failed")
    url = reverse("admin:stripe_idempotency_stripeevent_change", args=[event.pk])
    response = staff.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert "&quot;id&quot;: &quot;evt_failed&quot;" in body
    assert "RuntimeError: boom" in body
    assert staff.post(url, {"type": "other"}).status_code == 403
    assert StripeEvent.objects.get(pk=event.pk).type == "checkout.session.completed"
    assert staff.get(reverse("admin:stripe_idempotency_stripeevent_add")).status_code == 403


def test_ledger_admin_lists_entries_and_balances_and_changes_nothing(staff):
    from stripe_idempotency.models import LedgerBalance, LedgerEntry

    entry, _ = LedgerEntry.objects.credit(
        account="cus_1", amount=1500, currency="usd", entry_type="deposit", reference="cs_1"
    )
    response = staff.get(reverse("admin:stripe_idempotency_ledgerentry_changelist"), {"q": "cus_1"})
    assert [e.pk for e in response.context["cl"].result_list] == [entry.pk]
    response = staff.get(reverse("admin:stripe_idempotency_ledgerbalance_changelist"))
    assert [(b.account, b.balance) for b in response.context["cl"].result_list] == [("cus_1", 1500)]
    change = reverse("admin:stripe_idempotency_ledgerentry_change", args=[entry.pk])
    assert staff.get(change).status_code == 200
    assert staff.post(change, {"amount": 1}).status_code == 403
    delete = reverse("admin:stripe_idempotency_ledgerentry_delete", args=[entry.pk])
    assert staff.post(delete, {"post": "yes"}).status_code == 403
    balance = LedgerBalance.objects.get()
    assert (
        staff.post(
            reverse("admin:stripe_idempotency_ledgerbalance_delete", args=[balance.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert LedgerEntry.objects.get().amount == 1500


def test_reprocess_action(staff, one_of_each, connect):
    def fail(sender, event, **kwargs):
        raise RuntimeError("boom")

    connect(event_received, fail)  # every event the action runs fails again
    events = StripeEvent.objects.order_by("id")
    selected = [e.pk for e in events]
    response = staff.post(
        reverse(CHANGELIST), {"action": "reprocess_selected", "_selected_action": selected}, follow=True
    )
    assert response.status_code == 200
    assert [str(m) for m in get_messages(response.wsgi_request)] == [
        "Failed again (see each event's last error): evt_expired, evt_failed.",
        "Skipped, being processed by another process: evt_claimed.",
        "Skipped, already processed: evt_processed.",
    ]
    rows = {e.event_id: e for e in StripeEvent.objects.all()}
    assert (rows["evt_expired"].attempts, rows["evt_failed"].attempts) == (2, 2)
    assert rows["evt_claimed"].attempts == 1
    assert Effect.objects.count() == 0


def test_reprocess_action_processes(staff):
    leases.claim(IncomingEvent.from_payload(build_event(id="evt_expired")))
    StripeEvent.objects.update(claim_expires_at=Now() - dt.timedelta(seconds=1))
    response = staff.post(
        reverse(CHANGELIST),
        {"action": "reprocess_selected", "_selected_action": [StripeEvent.objects.get().pk]},
        follow=True,
    )
    assert [str(m) for m in get_messages(response.wsgi_request)] == ["Processed: evt_expired."]
    assert StripeEvent.objects.get().processed_at is not None


def test_reprocess_action_needs_the_change_permission(client, one_of_each):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_stripeevent"))
    client.force_login(viewer)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    assert "reprocess_selected" not in response.content.decode()
    response = client.post(
        reverse(CHANGELIST),
        {"action": "reprocess_selected", "_selected_action": [e.pk for e in StripeEvent.objects.all()]},
    )
    # Nothing ran: with no receiver raising, a reprocessed stale or failed event would be processed.
    assert response.status_code == 200  # the changelist again: the action is not one of theirs
    assert list(StripeEvent.objects.processed().values_list("event_id", flat=True)) == ["evt_processed"]
    assert sorted(StripeEvent.objects.values_list("event_id", "attempts")) == [
        ("evt_claimed", 1),
        ("evt_expired", 1),
        ("evt_failed", 1),
        ("evt_processed", 1),
    ]


def test_the_changelist_opens_with_the_counts_by_state_and_the_oldest_unprocessed(
    staff, one_of_each, stripe_event_factory
):
    StripeEvent.objects.filter(event_id="evt_expired").update(received_at=Now() - dt.timedelta(hours=3))
    stripe_event_factory(processed=True, processed_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    stripe_event_factory(processed=True, processed_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=59))
    response = staff.get(reverse(CHANGELIST), {"state": "processed"})
    overview = response.context["overview"]
    assert {state["name"]: state["count"] for state in overview["states"]} == {
        "pending": 0,
        "claimed": 1,
        "stale": 1,
        "failed": 1,
        "dead": 0,
        "processed": 2,  # in the last hour: not evt_processed, a day ago
    }  # the whole table, whatever the filter
    assert [state["name"] for state in overview["states"] if state["alarming"]] == ["stale", "failed"]
    assert overview["oldest"]["event_id"] == "evt_expired"
    assert overview["oldest"]["age"] == "3h00m"
    body = response.content.decode()
    assert '<a href="/admin/stripe_idempotency/stripeevent/?state=dead" title="dead' in body
    assert '<td class="state-failed"><strong style="color: var(--error-fg)">1</strong></td>' in body
    assert "Unprocessed events by state, and those processed in the last hour" in body
    assert "Oldest unprocessed: received 3h00m ago," in body
    assert '<a href="/admin/stripe_idempotency/stripeevent/?q=evt_expired">evt_expired</a>' in body


def test_with_nothing_unprocessed_the_overview_says_so(staff, stripe_event_factory):
    stripe_event_factory(event_id="evt_done", processed=True)
    body = staff.get(reverse(CHANGELIST)).content.decode()
    assert "Nothing unprocessed." in body


def test_the_overview_costs_three_queries_whatever_the_table(staff, one_of_each, stripe_event_factory):
    def overview_queries() -> int:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        from stripe_idempotency.admin import _overview

        with CaptureQueriesContext(connection) as queries:
            _overview()
        return len(queries)

    before = overview_queries()
    stripe_event_factory.create_batch(30, processed=True)
    stripe_event_factory.create_batch(5, failed=True)
    assert overview_queries() == before == 3


def test_an_event_page_shows_its_attempts_and_the_error_line_first(staff, stripe_event_factory):
    error = 'Traceback (most recent call last):\n  File "shop/receivers.py", line 9\nRuntimeError: boom\n'
    event = stripe_event_factory(event_id="evt_dying", failed=True, attempts=20, last_error=error)
    response = staff.get(reverse("admin:stripe_idempotency_stripeevent_change", args=[event.pk]))
    body = response.content.decode()
    assert "20 of 20 (dead: the reaper no longer retries it; a delivery or a replay still may)" in body
    assert '<div class="readonly">RuntimeError: boom</div>' in body
    assert "File &quot;shop/receivers.py&quot;, line 9" in body
    assert [name for name, _ in response.context["adminform"].form.fields.items()] == []  # all read-only
    listed_row = staff.get(reverse(CHANGELIST)).content.decode()
    assert '<td class="field-error_summary">RuntimeError: boom</td>' in listed_row


def test_events_are_filtered_by_endpoint_and_connected_account(staff, stripe_event_factory, settings):
    settings.STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": ["whsec_test_secret"],
        "ENDPOINTS": {"connect": {"WEBHOOK_SECRETS": ["whsec_connect_secret"]}},
    }
    stripe_event_factory(event_id="evt_platform")
    stripe_event_factory(event_id="evt_connect_1", endpoint="connect", account="acct_1")
    stripe_event_factory(event_id="evt_connect_2", endpoint="connect", account="acct_2")
    assert listed(staff, endpoint="connect") == ["evt_connect_1", "evt_connect_2"]
    assert listed(staff, endpoint="-") == ["evt_platform"]
    assert listed(staff, account__isempty="1") == ["evt_platform"]
    assert listed(staff, account__isempty="0") == ["evt_connect_1", "evt_connect_2"]
    assert listed(staff, q="acct_2") == ["evt_connect_2"]
    body = staff.get(reverse(CHANGELIST)).content.decode()
    assert '<td class="field-account">acct_1</td>' in body
    assert "?endpoint=connect" in body
