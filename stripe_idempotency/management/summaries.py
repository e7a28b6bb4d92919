"""The lines the worker and the reaper commands end with: what was run, and what waits."""

from __future__ import annotations

from collections import Counter

from django.utils import timezone

from stripe_idempotency.durations import format_duration
from stripe_idempotency.status import Waiting

__all__ = ["effects_run", "left_behind"]


def effects_run(ran: Counter[str]) -> str:
    """`` Effects run: ...`` (with its leading space), or nothing when none ran."""
    if not ran.total():
        return ""
    return (
        f" Effects run: {ran['processed']} processed, {ran['failed']} failed, {ran['dead']} dead, "
        f"{ran['fenced'] + ran['busy']} taken by another process."
    )


def left_behind(left: Waiting) -> str:
    """The dead events (all of them, listed or not) and the failed ones waiting out a backoff."""
    text = f"{left.dead} dead"
    if left.failed and left.next_due is not None:
        due = format_duration(left.next_due - timezone.now())
        text += (
            f", {left.failed} failed waiting for {'its' if left.failed == 1 else 'their'} backoff "
            f"(the next due in {due}, {left.next_due:%Y-%m-%d %H:%M} UTC)"
        )
    return text
