"""``IncomingEvent``: an event's identity read from its payload, in both families. No database."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stripe_idempotency.events import IncomingEvent, is_thin
from stripe_idempotency.exceptions import WebhookRejected
from stripe_idempotency.testing import build_event, build_thin_event


def test_a_snapshot_event_s_identity_object_and_account():
    payload = build_event(
        "customer.updated",
        id="evt_1",
        livemode=True,
        created=1_700_000_000,
        data={"id": "cus_9"},
        account="acct_1",
    )
    event = IncomingEvent.from_payload(payload, endpoint="connect")
    assert (event.id, event.type, event.livemode, event.endpoint) == (
        "evt_1",
        "customer.updated",
        True,
        "connect",
    )
    assert (event.object_id, event.account, event.thin) == ("cus_9", "acct_1", False)
    assert event.created == datetime.fromtimestamp(1_700_000_000, tz=UTC)
    assert event.payload is payload


def test_a_thin_event_naming_its_snapshot_event_is_that_event():
    # Both notifications of one change are processed once, under the snapshot event's id.
    payload = build_thin_event(id="evt_thin", snapshot_event="evt_snap", context="acct_2")
    event = IncomingEvent.from_payload(payload)
    assert (event.id, event.account, event.object_id, event.thin) == (
        "evt_snap",
        "acct_2",
        "cus_test_1",
        True,
    )
    assert event.api_version is None
    assert event.created is not None
    assert event.created.tzinfo is not None


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        pytest.param([], "not_an_event", id="a-list"),
        pytest.param({"object": "charge", "id": "ch_1"}, "not_an_event", id="another-object"),
        pytest.param({**build_event(), "id": 7}, "invalid_id", id="id-not-a-string"),
        pytest.param({**build_event(), "id": "evt 1"}, "invalid_id", id="id-with-a-space"),
        pytest.param({**build_event(), "type": None}, "invalid_type", id="no-type"),
        pytest.param({**build_event(), "livemode": "true"}, "invalid_livemode", id="livemode-a-string"),
        pytest.param(
            {**build_event(), "api_version": "2" * 65}, "invalid_api_version", id="long-api-version"
        ),
        pytest.param(build_thin_event(snapshot_event="evt bad"), "invalid_id", id="thin-bad-snapshot"),
        pytest.param(build_thin_event(context="acct\n1"), "invalid_context", id="thin-bad-context"),
    ],
)
def test_a_payload_that_is_not_an_event_is_refused_by_name(payload, code):
    with pytest.raises(WebhookRejected) as refused:
        IncomingEvent.from_payload(payload)
    assert refused.value.code == code


def test_ids_that_are_not_tokens_become_none_rather_than_stored():
    # An object id or an account with a newline never reaches a column or a log line.
    payload = build_event(data={"id": "cus\n9"}, account={"id": "acct_1"})
    event = IncomingEvent.from_payload(payload)
    assert (event.object_id, event.account) == (None, None)


@pytest.mark.parametrize(
    ("payload", "thin"),
    [
        ({"object": "v2.core.event"}, True),
        ({"object": "event"}, False),
        ([], False),
        ("v2.core.event", False),
    ],
)
def test_is_thin_reads_the_family_of_any_value(payload, thin):
    assert is_thin(payload) is thin
