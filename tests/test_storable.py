"""``storable``: the one rule for what every database stores as JSON. No database."""

from __future__ import annotations

import pytest

from stripe_idempotency.storable import MAX_DEPTH, Unstorable, decode, problem


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


def tuple_nested(depth: int) -> tuple:
    value: tuple = ()
    for _ in range(depth - 1):
        value = (value,)
    return value


def test_a_storable_body_decodes_as_json_would():
    assert decode('{"a": [1, 2.5, "\\u00e9", null, true]}') == {"a": [1, 2.5, "é", None, True]}
    assert decode("[" * MAX_DEPTH + "]" * MAX_DEPTH) == nested(MAX_DEPTH)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        pytest.param('{"n": NaN}', "NaN", id="nan"),
        pytest.param('{"n": -Infinity}', "NaN", id="infinity"),
        pytest.param('{"n": 1e999}', "NaN", id="too-large-a-float"),
        pytest.param("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested", id="too-deep"),
        pytest.param('{"s": "a\\u0000b"}', "NUL", id="nul-in-a-string"),
        pytest.param('{"\\ud800": 1}', "NUL", id="surrogate-in-a-key"),
    ],
)
def test_a_body_no_database_stores_is_unstorable_with_its_reason(text, reason):
    with pytest.raises(Unstorable) as refused:
        decode(text)
    assert reason in refused.value.reason


def test_text_that_is_not_json_is_a_plain_value_error():
    with pytest.raises(ValueError, match="Expecting property name") as refused:
        decode("{not json")
    assert not isinstance(refused.value, Unstorable)


@pytest.mark.parametrize(
    "value",
    [{"a": [1, "b", None]}, nested(MAX_DEPTH), ("a", 1), {"text": "é\u2028"}],
    ids=["plain", "as-deep-as-allowed", "a-tuple", "unicode"],
)
def test_a_storable_value_has_no_problem(value):
    assert problem(value) is None


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param({"rate": float("nan")}, "NaN", id="nan"),
        pytest.param({"when": object()}, "not JSON", id="not-json"),
        pytest.param({"deep": nested(MAX_DEPTH)}, "nested", id="too-deep"),
        pytest.param(tuple_nested(MAX_DEPTH + 1), "nested", id="tuples"),
        pytest.param({"s": "a\x00"}, "NUL", id="nul"),
        pytest.param({"\udfff": 1}, "surrogate", id="surrogate-key"),
        pytest.param(["\ud800"], "surrogate", id="surrogate-in-a-list"),
    ],
)
def test_a_value_no_database_stores_says_why(value, reason):
    assert reason in (problem(value) or "")
