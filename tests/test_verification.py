"""Hostile input, generated: whatever arrives, the answer is a JSON 4xx and nothing is stored.

The explicit cases (a replayed delivery with a valid but old signature, another secret's
signature, a giant body refused before it is read, CR/LF in the event id) are in test_views.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.testing import build_event, build_thin_event, encode, sign

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
@given(data=st.data(), encoding=st.sampled_from(["latin-1", "cp1252", "utf-16", "utf-32"]))
def test_an_event_in_another_encoding_is_refused_though_its_text_is_signed(data, encoding):
    # A valid event, sent in another encoding, with a valid signature over its text:
    # only the UTF-8 check stands between it and the database (Stripe signs UTF-8).
    text = data.draw(st.text(st.characters(codec=encoding), max_size=50), label="text")
    event_text = json.dumps(build_event(data={"note": text + "\u00e9"}), ensure_ascii=False)
    body = event_text.encode(encoding)  # not UTF-8: é is one byte, or there is a byte-order mark
    response = post(body, sign(event_text, SECRET))
    assert_rejected_and_nothing_stored(response)
    assert json.loads(response.content)["error"] == "invalid_encoding"


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


# -- authentic events that no database could store as sent ---------------------------------


def nested(depth: int):
    """``data.object`` nested so that the whole event is ``depth`` containers deep."""
    value: object = {}
    for _ in range(depth - 3):  # the event, data and object are three
        value = {"a": value}
    return value


def raw_event(event_id: str, data_object: str) -> bytes:
    """An event whose ``data.object`` is written as raw JSON text (escapes and all)."""
    return (
        f'{{"id":"{event_id}","object":"event","type":"charge.succeeded","livemode":false,'
        f'"created":1700000000,"data":{{"object":{data_object}}}}}'
    ).encode()


UNSTORABLE_ANSWER = {"status": "rejected", "error": "unstorable_payload"}
UNSTORABLE = {
    "nul_in_string": '{"name":"a\\u0000b"}',
    "nul_in_key": '{"a\\u0000":1}',
    "lone_surrogate": '{"name":"\\ud800"}',
    "lone_low_surrogate_in_key": '{"\\udc00":1}',
    "nan": '{"amount":NaN}',
    "infinity": '{"amount":-Infinity}',
    "overflowing_number": '{"amount":1e999}',
    "nested_31_deep": json.dumps(nested(31)),
    "nested_1000_deep_in_2kb": "[" * 1000 + "]" * 1000,
}


@pytest.mark.parametrize("case", list(UNSTORABLE))
def test_an_authentic_event_no_database_can_store_is_refused_by_name_and_logged(case, caplog):
    body = raw_event(f"evt_{case}", UNSTORABLE[case])
    response = post(body, sign(body, SECRET))
    assert (response.status_code, response.json()) == (
        400,
        {"status": "rejected", "error": "unstorable_payload"},
    )
    assert StripeEvent.objects.count() == 0
    [record] = [r for r in caplog.records if r.name == "stripe_idempotency"]
    assert record.levelname == "ERROR"
    assert f"Refused Stripe event evt_{case}: unstorable_payload" in record.getMessage()


def test_an_api_version_longer_than_its_column_is_refused_by_name():
    event = build_event(api_version="2025-03-31." + "x" * 60)
    body = encode(event)
    response = post(body, sign(body, SECRET))
    assert response.json() == {"status": "rejected", "error": "invalid_api_version"}
    assert StripeEvent.objects.count() == 0


STORABLE = {
    "escaped_text": '{"name":"caf\\u00e9 \\ud83d\\ude00 \\"q\\" \\\\u0000 as text"}',
    "big_and_small_numbers": '{"amount":99999999999999999999,"rate":1.5e10,"tiny":-1e-300}',
    "nested_30_deep": json.dumps(nested(30)),
}


@pytest.mark.parametrize("case", list(STORABLE))
def test_everything_storable_is_stored_and_processed_on_every_backend(case):
    body = raw_event(f"evt_{case}", STORABLE[case])
    response = post(body, sign(body, SECRET))
    assert (response.status_code, response.json()["status"]) == (200, "processed")
    assert StripeEvent.objects.get().payload == json.loads(body)


hazards = st.sampled_from(["\x00", "\ud800", "\udfff", "é", "\\", '"', "\n", "𝄞"])
hazardous_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(hazards | st.characters(), max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(hazards, max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@FUZZ
@given(data_object=hazardous_json, depth=st.integers(min_value=1, max_value=40))
def test_any_signed_event_is_stored_and_processed_or_refused_by_name(data_object, depth):
    for _ in range(depth):
        data_object = [data_object]
    event_id = f"evt_fuzz_{uuid.uuid4().hex}"
    body = json.dumps(build_event(id=event_id, data=None) | {"data": {"object": data_object}}).encode()
    response = post(body, sign(body, SECRET))
    assert response["Content-Type"] == "application/json"
    answer = response.json()
    if response.status_code == 200:
        assert answer == {"status": "processed", "event_id": event_id}
        assert StripeEvent.objects.filter(event_id=event_id, processed_at__isnull=False).exists()
    else:
        assert (response.status_code, answer) == (400, UNSTORABLE_ANSWER)
        assert not StripeEvent.objects.filter(event_id=event_id).exists()


def test_a_signature_from_the_future_is_outside_the_tolerance():
    body = encode(build_event())
    ahead = int(time.time()) + 301  # the default tolerance is 300 s
    response = post(body, sign(body, SECRET, timestamp=ahead))
    assert response.json() == {"status": "rejected", "error": "timestamp_outside_tolerance"}
    within = int(time.time()) + 240
    assert post(body, sign(body, SECRET, timestamp=within)).json()["status"] == "processed"


def test_an_unstorable_body_with_a_forged_id_logs_no_line_of_its_own(caplog):
    body = b'{"id":"evt_x\\r\\nFAKE LOG LINE","object":"event","type":"t","amount":NaN}'
    response = post(body, sign(body, SECRET))
    assert response.json() == UNSTORABLE_ANSWER
    [record] = [r for r in caplog.records if r.name == "stripe_idempotency"]
    assert (record.levelname, "\n" in record.getMessage()) == ("WARNING", False)


# -- thin event notifications: each field of every type --------------------------------------

THIN_FIELDS = ("context", "related_object", "created", "livemode", "snapshot_event", "reason", "data")


@FUZZ
@given(
    field=st.sampled_from(THIN_FIELDS),
    value=json_values | st.fixed_dictionaries({"id": json_values, "type": json_values, "url": json_values}),
)
def test_a_thin_event_with_any_value_in_any_field_is_processed_or_refused_as_json(field, value):
    event_id = f"evt_thin_{uuid.uuid4().hex}"
    body = json.dumps(build_thin_event(id=event_id) | {field: value}).encode()
    response = post(body, sign(body, SECRET))
    assert response["Content-Type"] == "application/json", response.content
    if response.status_code == 200:
        assert response.json()["status"] in ("processed", "ignored"), response.content
    else:
        assert response.status_code == 400, response.content
        assert response.json()["status"] == "rejected"
        assert not StripeEvent.objects.filter(event_id=event_id).exists()


@pytest.mark.parametrize("context", [123, ["acct_1"], {"id": "acct_1"}, True, 1.5])
def test_a_thin_event_whose_context_is_not_a_string_is_refused(context):
    body = json.dumps(build_thin_event() | {"context": context}).encode()
    response = post(body, sign(body, SECRET))
    assert (response.status_code, response.json()) == (
        400,
        {"status": "rejected", "error": "invalid_context"},
    )
    assert StripeEvent.objects.count() == 0


# -- the Stripe-Signature header: read once, the same way the signature is checked -----------


def signature_of(body: bytes, timestamp: int) -> str:
    return sign(body, SECRET, timestamp=timestamp).split(",")[1]  # "v1=<hex>"


def test_a_body_signed_ahead_cannot_hide_its_timestamp_behind_a_decoy():
    # The library reads the first exact "t"; a reader that strips spaces would read " t=1" and
    # let a body signed a year ahead through, replayable all year.
    body = encode(build_event())
    ahead = int(time.time()) + 365 * 86400
    response = post(body, f"x=0, t=1,t={ahead},{signature_of(body, ahead)}")
    assert response.json() == {"status": "rejected", "error": "timestamp_outside_tolerance"}
    assert StripeEvent.objects.count() == 0


@pytest.mark.parametrize(
    "timestamps",
    [["abc", "{now}"], ["{now}", "{now}"], ["{ahead}", "{now}"], [""], ["-1"], ["1e9"], ["{now}.0"], []],
)
def test_a_header_without_exactly_one_timestamp_is_a_400(timestamps):
    body = encode(build_event())
    now = int(time.time())
    times = [t.format(now=now, ahead=now + 86400) for t in timestamps]
    header = ",".join([*(f"t={t}" for t in times), signature_of(body, now)])
    response = post(body, header)
    assert (response.status_code, response.json()) == (
        400,
        {"status": "rejected", "error": "invalid_signature"},
    )
    assert StripeEvent.objects.count() == 0


@FUZZ
@given(data=st.data())
def test_any_arrangement_of_a_header_is_judged_on_the_timestamp_it_was_signed_with(data):
    event_id = f"evt_header_{uuid.uuid4().hex}"
    body = encode(build_event(id=event_id))
    now = int(time.time())
    ahead = now + 10 * 86400
    items = {
        "t=now": f"t={now}",
        "t=ahead": f"t={ahead}",
        "decoy": " t=1",
        "t=text": "t=abc",
        "other": "x=0",
        "v1 now": signature_of(body, now),
        "v1 ahead": signature_of(body, ahead),
        "v0": "v0=" + "0" * 64,
        "empty": "",
    }
    chosen = data.draw(st.lists(st.sampled_from(sorted(items)), max_size=6), label="items")
    response = post(body, ",".join(items[name] for name in chosen))
    assert response["Content-Type"] == "application/json"
    if response.status_code == 200:
        # Processed only under the one exact timestamp, within the tolerance, signed with it.
        assert [name for name in chosen if name.startswith("t=")] == ["t=now"]
        assert "v1 now" in chosen
    else:
        assert response.status_code == 400
        assert not StripeEvent.objects.filter(event_id=event_id).exists()


# -- the health view's query string -----------------------------------------------------------

HEALTH_TOKEN = "health-token-for-the-hostile-tests-0123456789"


@FUZZ
@given(
    parameter=st.sampled_from(["window", "max_oldest_unprocessed", "max_dead", "max_failed", "max_lag_p99"]),
    value=st.text(max_size=30) | st.from_regex(r"[0-9]{1,20}[smhd]?", fullmatch=True),
)
def test_any_value_of_any_health_parameter_is_answered_as_json(parameter, value):
    settings = {"WEBHOOK_SECRETS": [SECRET], "HEALTH_TOKENS": [HEALTH_TOKEN]}
    with override_settings(STRIPE_IDEMPOTENCY=settings):
        response = Client().get(
            "/stripe/health/", {parameter: value}, headers={"Authorization": f"Bearer {HEALTH_TOKEN}"}
        )
    assert response["Content-Type"] == "application/json", response.content
    assert response.status_code in (200, 400, 503), response.content
    if response.status_code == 400:
        assert response.json()["error"] == "invalid_parameter"
        assert response.json()["detail"].startswith(f"{parameter}: ")
