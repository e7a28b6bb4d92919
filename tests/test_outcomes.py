"""The table of answers: every outcome and every answer given before processing has one row,
and the HTTP views build their answers from it alone (no database needed)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import get_args

import pytest

from stripe_idempotency import outcomes
from stripe_idempotency.outcomes import (
    REPORTS,
    Accepted,
    Busy,
    Duplicate,
    Ignored,
    Rejected,
    Reply,
    Unavailable,
    error_summary,
)

PACKAGE = Path(outcomes.__file__).parent


def test_every_kind_of_answer_has_one_row():
    assert set(REPORTS) == set(get_args(Reply))


@pytest.mark.parametrize(
    ("reply", "status", "body", "headers"),
    [
        (Duplicate("evt_1"), 200, {"status": "duplicate", "event_id": "evt_1"}, {}),
        (Accepted("evt_1"), 200, {"status": "accepted", "event_id": "evt_1"}, {}),
        (Busy("evt_1", 7), 503, {"status": "busy", "event_id": "evt_1"}, {"Retry-After": "7"}),
        (
            Ignored("evt_1", "livemode_mismatch"),
            200,
            {"status": "ignored", "reason": "livemode_mismatch"},
            {},
        ),
        (Rejected("body_too_large", 413), 413, {"status": "rejected", "error": "body_too_large"}, {}),
        (
            Rejected("invalid_parameter", 400, detail="window: no"),
            400,
            {"status": "rejected", "error": "invalid_parameter", "detail": "window: no"},
            {},
        ),
        (
            Unavailable("evt_1", 60),
            503,
            {"status": "unavailable", "event_id": "evt_1"},
            {"Retry-After": "60"},
        ),
        (Unavailable(), 503, {"status": "unavailable"}, {}),
    ],
)
def test_each_answer_is_its_row(reply, status, body, headers):
    assert (outcomes.http_status(reply), outcomes.body(reply), outcomes.headers(reply)) == (
        status,
        body,
        headers,
    )


def test_no_view_writes_an_answer_of_its_own():
    # A JsonResponse made anywhere but views.Answer (which is the table's) and the health
    # view's report of figures would be an answer outside the table.
    made = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in {
                "JsonResponse",
                "HttpResponse",
            }:
                made.add(path.relative_to(PACKAGE).as_posix())
    assert made == {"health.py"}


@pytest.mark.parametrize(
    ("recorded", "line"),
    [
        ('Traceback (most recent call last):\n  File "x"\nRuntimeError: boom\n\n', "RuntimeError: boom"),
        ("  ValueError: no  ", "ValueError: no"),
        ("", ""),
    ],
)
def test_the_error_summary_is_the_last_line_that_says_something(recorded, line):
    assert error_summary(recorded) == line
