"""The tables' own queries: each state on the database clock, an object's other events, the lease left."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from stripe_idempotency.factories import StripeEventFactory
from stripe_idempotency.models import EventState, StripeEvent

pytestmark = pytest.mark.django_db

STATES = ("processed", "claimed", "stale", "failed", "dead")


def test_each_state_is_one_filter_and_they_exclude_one_another():
    for state in STATES:
        StripeEventFactory(event_id=f"evt_{state}", **{state: True})
    StripeEventFactory(event_id="evt_pending")
    annotated = dict(StripeEvent.objects.with_state().values_list("event_id", "state"))
    assert annotated == {f"evt_{state}": state for state in (*STATES, "pending")}
    for state in EventState:
        assert list(StripeEvent.objects.in_state(state).values_list("event_id", flat=True)) == [
            f"evt_{state}"
        ]


def test_an_object_s_other_events_and_those_processed_in_a_later_second():
    second = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    event = StripeEventFactory(
        event_id="evt_this", object_id="sub_1", created=second + timedelta(microseconds=5)
    )
    StripeEventFactory(event_id="evt_same_second", object_id="sub_1", created=second, processed=True)
    StripeEventFactory(
        event_id="evt_later", object_id="sub_1", created=second + timedelta(seconds=1), processed=True
    )
    StripeEventFactory(
        event_id="evt_later_unprocessed", object_id="sub_1", created=second + timedelta(seconds=2)
    )
    StripeEventFactory(event_id="evt_other_object", object_id="sub_2", created=second + timedelta(seconds=3))
    others = StripeEvent.objects.about_same_object(event).values_list("event_id", flat=True)
    assert sorted(others) == ["evt_later", "evt_later_unprocessed", "evt_same_second"]
    later = StripeEvent.objects.processed_later_than(event).values_list("event_id", flat=True)
    assert list(later) == ["evt_later"]  # one second's events order nothing; unprocessed ones change nothing
    assert event.superseded()
    assert event.latest_processed().event_id == "evt_later"


def test_an_event_about_no_object_or_with_no_created_has_no_others():
    StripeEventFactory(event_id="evt_any", object_id=None, processed=True)
    no_object = StripeEventFactory(event_id="evt_no_object", object_id=None)
    undated = StripeEventFactory(event_id="evt_undated", object_id="sub_1", created=None)
    StripeEventFactory(event_id="evt_dated", object_id="sub_1", created=timezone.now(), processed=True)
    assert not StripeEvent.objects.about_same_object(no_object).exists()
    assert not StripeEvent.objects.processed_later_than(undated).exists()
    assert (no_object.superseded(), undated.superseded()) == (False, False)


def test_the_lease_left_is_read_on_the_database_clock():
    StripeEventFactory(event_id="evt_claimed", claimed=True)
    StripeEventFactory(event_id="evt_stale", stale=True)
    StripeEventFactory(event_id="evt_pending")
    leases = {
        event_id: StripeEvent.objects.filter(event_id=event_id).leases_left().get()
        for event_id in ("evt_claimed", "evt_stale", "evt_pending")
    }
    assert timedelta(minutes=59) < leases["evt_claimed"] <= timedelta(hours=1)
    assert leases["evt_stale"] < timedelta(0)
    assert leases["evt_pending"] is None
