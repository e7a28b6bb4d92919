"""The one parser of durations and counts: what it takes, its bound, and that it never raises
anything but InvalidValue (a ValueError every caller turns into a 400 or a CommandError)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stripe_idempotency.durations import (
    MAX_COUNT,
    MAX_DURATION,
    InvalidValue,
    format_duration,
    parse_count,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("90", timedelta(seconds=90)),
        ("90s", timedelta(seconds=90)),
        (" 15m ", timedelta(minutes=15)),
        ("1.5h", timedelta(minutes=90)),
        ("30d", timedelta(days=30)),
        ("3650d", MAX_DURATION),
    ],
)
def test_durations(text, value):
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "d", "-1s", "1e9", "1w", "²", "٣d", "3651d", "87600h1", "9" * 20])
def test_not_durations(text):
    with pytest.raises(InvalidValue):
        parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("17", 17), (str(MAX_COUNT), MAX_COUNT)])
def test_counts(text, value):
    assert parse_count(text) == value


@pytest.mark.parametrize("text", ["", "-1", "1.0", "²", "٣", " 1", str(MAX_COUNT + 1), "9" * 5000])
def test_not_counts(text):
    with pytest.raises(InvalidValue, match="is not a whole number from 0 to 1000000000000"):
        parse_count(text)


@given(st.text(max_size=40))
def test_any_text_is_a_bounded_duration_or_invalid(text):
    try:
        value = parse_duration(text)
    except InvalidValue:
        return
    assert timedelta(0) <= value <= MAX_DURATION


@given(st.text(max_size=40))
def test_any_text_is_a_bounded_count_or_invalid(text):
    try:
        value = parse_count(text)
    except InvalidValue:
        return
    assert 0 <= value <= MAX_COUNT


def test_format():
    assert [format_duration(timedelta(seconds=s)) for s in (12, 249, 7500, 273600)] == [
        "12s",
        "4m09s",
        "2h05m",
        "3d04h",
    ]
    assert format_duration(timedelta(milliseconds=250), precise=True) == "250ms"
