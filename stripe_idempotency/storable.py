"""What every supported database can store as JSON: one rule for event bodies and ledger metadata.

JSON allows what the databases do not: ``NaN``, ``Infinity`` and numbers too large for a float
(no JSON column stores them), containers nested past what MariaDB's ``JSON_VALID`` takes, and
NUL or lone surrogates in a string or a key (PostgreSQL's ``jsonb`` refuses NUL; no database
takes text that is not UTF-8). A value that holds any of them is refused with the reason before
any SQL runs: a database error would abort the caller's transaction instead.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["MAX_DEPTH", "Unstorable", "decode", "problem"]

#: Containers nested deeper than this are refused: MariaDB's JSON_VALID (the check on its JSON
#: columns) fails past 31, and Stripe's events nest about 10.
MAX_DEPTH = 30

# NUL and lone surrogates (not encodable as UTF-8).
_UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
_CONTAINERS = (dict, list, tuple)
_TOO_DEEP = f"it is nested more than {MAX_DEPTH} levels deep"
_NON_FINITE = "it holds NaN, Infinity or a number too large for a float"
_BAD_TEXT = "a key or a string holds NUL or a lone surrogate (\\u0000, \\ud800...)"


class Unstorable(ValueError):
    """JSON no supported database stores; ``reason`` says why, ``value`` is what was decoded (if
    it was)."""

    def __init__(self, reason: str, value: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.value = value


def decode(text: str) -> Any:
    """The JSON ``text`` holds, if every backend can store it: :class:`Unstorable` if not, and
    ``ValueError`` if it is not JSON.

    Every delivery pays for this, so each check runs only where it can find something: numbers
    are checked as they are parsed, the depth only when the text has more brackets than the
    limit, strings only when the text has a \\u escape (the one way NUL or a lone surrogate can
    arrive: raw control characters are invalid JSON, and valid UTF-8 holds no surrogates).
    """
    try:
        value = json.loads(text, parse_constant=_non_finite_constant, parse_float=_float)
    except _NonFinite:
        raise Unstorable(_NON_FINITE) from None
    except RecursionError:
        raise Unstorable(_TOO_DEEP) from None
    if text.count("{") + text.count("[") > MAX_DEPTH and _deeper_than(value, MAX_DEPTH):
        raise Unstorable(_TOO_DEEP, value)
    if "\\u" in text and _holds_unstorable_text(value):
        raise Unstorable(_BAD_TEXT, value)
    return value


def problem(value: Any) -> str | None:
    """Why the Python ``value`` cannot be stored as JSON on every backend; ``None`` if it can."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        return f"it is not JSON without NaN or Infinity ({error})"
    except RecursionError:
        return _TOO_DEEP
    if _deeper_than(value, MAX_DEPTH):
        return _TOO_DEEP
    if _holds_unstorable_text(value):
        return _BAD_TEXT
    return None


class _NonFinite(ValueError):
    pass


def _non_finite_constant(name: str) -> float:
    raise _NonFinite(name)


def _float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise _NonFinite(text)
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep: a walk by levels, over containers only."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for container in level:
            values = container.values() if isinstance(container, dict) else container
            below.extend(item for item in values if isinstance(item, _CONTAINERS))
        level = below
    return False


def _holds_unstorable_text(value: Any) -> bool:
    """Whether a key or a string anywhere holds NUL or a lone surrogate (a walk without recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if any(isinstance(key, str) and _UNSTORABLE_CHARACTER.search(key) for key in item):
                return True
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str) and _UNSTORABLE_CHARACTER.search(item):
            return True
    return False
