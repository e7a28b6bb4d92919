"""The factories users get: each trait gives the state it names, by the one state definition."""

from __future__ import annotations

import pytest

from stripe_idempotency import leases
from stripe_idempotency.factories import LedgerEntryFactory, StripeEventFactory
from stripe_idempotency.models import EventState, LedgerEntry, StripeEvent

pytestmark = pytest.mark.django_db(transaction=True)


def in_state(state: EventState) -> StripeEvent:
    return StripeEventFactory(**({} if state is EventState.PENDING else {state.value: True}))


@pytest.mark.parametrize("state", list(EventState))
def test_each_trait_makes_the_state_it_names(state):
    event = in_state(state)
    assert StripeEvent.objects.with_state().get(pk=event.pk).state == state
    assert event.payload["id"] == event.event_id
    assert event.payload["type"] == event.type


def test_the_reaper_takes_the_unprocessed_states_without_a_live_lease():
    made = {
        state: StripeEventFactory(**({state.value: True} if state != "pending" else {}))
        for state in EventState
    }
    taken = set(leases.find_stale().values_list("event_id", flat=True))
    expected = {EventState.PENDING, EventState.STALE, EventState.FAILED, EventState.DEAD}
    assert taken == {made[state].event_id for state in expected}


def test_ledger_entries_are_written_through_the_ledger():
    LedgerEntryFactory(account="cus_f", amount=700)
    LedgerEntryFactory(account="cus_f", amount=-200)
    assert LedgerEntry.objects.balance(account="cus_f", currency="usd") == 500
    assert list(LedgerEntry.objects.filter(account="cus_f").values_list("balance_after", flat=True)) == [
        700,
        500,
    ]
    with pytest.raises(TypeError, match="create"):
        LedgerEntryFactory.build()


def test_the_plugin_offers_them(stripe_event_factory, ledger_entry_factory):
    assert (stripe_event_factory, ledger_entry_factory) == (StripeEventFactory, LedgerEntryFactory)
