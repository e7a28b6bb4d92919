"""Hostile input, generated: whatever arrives, the answer is a JSON 4xx and nothing is stored.

The explicit cases (a replayed delivery with a valid but old signature, another secret's
signature, a giant body refused before it is read, CR/LF in the event id) are in test_views.py.
"""

from __future__ import annotations

import json

import pytest
from django.test import Client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.testing import build_event, encode, sign

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/stripe/webhook/"
SECRET = "whsec_test_secret"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)

# Event-shaped objects with one field wrong or missing: what a valid signature cannot vouch for.
broken_events = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values | st.text(max_size=300),
        "object": st.sampled_from(["event", "charge", "", "EVENT"]) | json_values,
        "type": json_values | st.text(max_size=300),
        "livemode": json_values,
    },
).filter(
    lambda d: (
        not (
            isinstance(d.get("id"), str)
            and isinstance(d.get("type"), str)
            and d.get("object") == "event"
            and isinstance(d.get("livemode", False), bool)
            and 0 < len(d["id"]) <= 255
            and 0 < len(d["type"]) <= 255
            and d["id"].isascii()
            and d["id"].isprintable()
            and " " not in d["id"]
            and d["type"].isascii()
            and d["type"].isprintable()
            and " " not in d["type"]
        )
    )
)


def assert_rejected_and_nothing_stored(response):
    assert 400 <= response.status_code < 500, response.content
    assert response["Content-Type"] == "application/json"
    body = json.loads(response.content)
    assert body["status"] == "rejected"
    assert isinstance(body["error"], str)
    assert StripeEvent.objects.count() == 0


def post(body: bytes, signature: str | None, content_type: str = "application/json"):
    headers = {"Stripe-Signature": signature} if signature is not None else {}
    return Client(enforce_csrf_checks=True).post(URL, data=body, content_type=content_type, headers=headers)


@FUZZ
@given(body=st.binary(max_size=2000), signature=st.none() | st.text(max_size=200))
def test_random_bytes_and_headers(body, signature):
    assert_rejected_and_nothing_stored(post(body, signature))


@FUZZ
@given(payload=json_values)
def test_any_json_signed_validly_that_is_not_an_event(payload):
    body = json.dumps(payload).encode()
    assert_rejected_and_nothing_stored(post(body, sign(body, SECRET)))


@FUZZ
@given(payload=broken_events)
def test_event_shaped_objects_with_a_bad_field_signed_validly(payload):
    body = json.dumps(payload).encode()
    assert_rejected_and_nothing_stored(post(body, sign(body, SECRET)))


@FUZZ
@given(text=st.text(max_size=500), encoding=st.sampled_from(["utf-16", "latin-1", "utf-32", "cp1252"]))
def test_other_encodings(text, encoding):
    try:
        body = (text + "\u00e9\u20ac").encode(encoding)
    except UnicodeEncodeError:
        body = text.encode("utf-16")
    assert_rejected_and_nothing_stored(post(body, sign(body.decode("latin-1"), SECRET)))


@FUZZ
@given(
    garbage=st.text(max_size=120),
    secret=st.text(min_size=1, max_size=40).filter(lambda s: s.strip() and s != SECRET),
)
def test_signatures_of_every_wrong_kind(garbage, secret):
    body = encode(build_event())
    for header in (garbage, sign(body, secret), f"t=1,v1={garbage}", sign(body + b" ", SECRET)):
        assert_rejected_and_nothing_stored(post(body, header))


@FUZZ
@given(content_type=st.text(max_size=60))
def test_any_content_type_with_a_bad_signature(content_type):
    response = Client().generic(
        "POST", URL, data=b"{}", content_type=content_type, headers={"Stripe-Signature": "t=1,v1=0"}
    )
    assert_rejected_and_nothing_stored(response)
