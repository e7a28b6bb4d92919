"""Misbehaviour on an event's first dispatch, chosen by the event: ``data.object.chaos``.

- ``slow``: outlive the lease, so that another delivery takes the event over;
- ``fail``: raise;
- ``kill``: end the worker process on the spot, as the OOM killer would;
- ``linger``: wait a moment inside the transaction (a window to kill its connection);
- ``taken_over``: another instance takes the event over while its receivers run (written
  from a connection of its own, as that instance would), so this run is fenced for certain.

Later dispatches (``event.attempts > 1``) behave, so every event can end processed.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.dispatch import receiver

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import event_received


@receiver(event_received)
def misbehave(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    chaos = event.payload.get("data", {}).get("object", {}).get("chaos")
    if not chaos or event.attempts > 1:
        return
    if chaos == "slow":
        time.sleep(settings.STRIPE_IDEMPOTENCY["CLAIM_TTL_SECONDS"] + 1.5)
    elif chaos == "fail":
        raise RuntimeError("chaos: this event fails on its first attempt")
    elif chaos == "kill":
        os._exit(1)
    elif chaos == "taken_over":
        _take_over(event)
    elif chaos == "linger":
        time.sleep(float(os.environ.get("CHAOS_LINGER_SECONDS", "1.5")))


def _take_over(event: StripeEvent) -> None:
    """Give the row another claim token, from another connection: the takeover of an instance
    that found the lease expired. Its lease ends when ours would have; then a retry takes it."""
    other = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        table = other.ops.quote_name(StripeEvent._meta.db_table)
        with other.cursor() as cursor:
            cursor.execute(
                f"UPDATE {table} SET claim_token = %s WHERE id = %s",
                [StripeEvent._meta.get_field("claim_token").get_db_prep_save(uuid.uuid4(), other), event.pk],
            )
    finally:
        other.close()


def die_before_queueing(event_id: str, database: str) -> None:
    """An ``ENQUEUE`` that ends the process the moment the event's row is committed, before any
    task is queued: the web worker killed between COMMIT and enqueue."""
    os.kill(os.getpid(), 9)
