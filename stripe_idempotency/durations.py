"""Durations and counts as people type them (``15m``, ``3d``, ``20``): one parser, one bound.

Every place that reads one (the health view's query string, ``prune_stripe_events
--older-than``, ``stripe_events_status --window``, ``sync_stripe_events --since``) goes through
:func:`parse_duration` or :func:`parse_count`, so what one accepts the others accept, and
nothing a monitor or a person types reaches ``timedelta``, ``int()`` or the database unbounded:
a value past :data:`MAX_DURATION` would overflow Python's dates or PostgreSQL's intervals.
"""

from __future__ import annotations

import re
from datetime import timedelta

__all__ = ["MAX_COUNT", "MAX_DURATION", "InvalidValue", "format_duration", "parse_count", "parse_duration"]

#: The longest duration accepted anywhere: ten years (Stripe keeps events for 30 days; a
#: retention horizon is a few years at most).
MAX_DURATION = timedelta(days=3650)
#: The largest count accepted (a threshold such as ``max_dead``).
MAX_COUNT = 10**12

# ASCII digits only: str.isdigit() and \d accept "²" or "٣", which int() and float() refuse
# or read differently.
_DURATION = re.compile(r"\s*([0-9]{1,12}(?:\.[0-9]{1,6})?)\s*([smhd]?)\s*", re.ASCII)
_COUNT = re.compile(r"[0-9]{1,13}", re.ASCII)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class InvalidValue(ValueError):
    """A duration or a count that is not one, or is out of bounds; the message says which."""


def parse_duration(text: str) -> timedelta:
    """``"90"`` (seconds), ``"90s"``, ``"15m"``, ``"2h"``, ``"30d"``, up to :data:`MAX_DURATION`;
    :class:`InvalidValue` (a ``ValueError``) for anything else."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise InvalidValue(
            f"{text!r} is not a duration: give seconds, or a number with s, m, h or d (e.g. 15m)."
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DURATION.total_seconds():
        raise InvalidValue(f"{text!r} is longer than {MAX_DURATION.days}d, the longest accepted.")
    return timedelta(seconds=seconds)


def parse_count(text: str) -> int:
    """A whole number from 0 to :data:`MAX_COUNT` in ASCII digits; :class:`InvalidValue` otherwise."""
    if not _COUNT.fullmatch(text) or int(text) > MAX_COUNT:
        raise InvalidValue(f"{text!r} is not a whole number from 0 to {MAX_COUNT}.")
    return int(text)


def format_duration(value: timedelta | None, *, precise: bool = False) -> str:
    """``"3d04h"``, ``"2h05m"``, ``"4m09s"``, ``"12s"``; with ``precise``, under a minute to the
    tenth of a second (``"1.3s"``) and under a second in milliseconds (``"250ms"``)."""
    total = max(0.0, value.total_seconds()) if value is not None else 0.0
    if precise and total < 1:
        return f"{total * 1000:.0f}ms"
    if precise and total < 60:
        return f"{total:.1f}s"
    seconds = int(total)
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{seconds:02d}s"
    return f"{seconds}s"
