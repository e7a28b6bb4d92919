"""Misbehaviour on an event's first dispatch, chosen by the event: ``data.object.chaos``.

- ``slow``: outlive the lease, so that another delivery takes the event over;
- ``fail``: raise;
- ``kill``: end the worker process on the spot, as the OOM killer would;
- ``linger``: wait a moment inside the transaction (a window to kill its connection);
- ``taken_over``: another instance takes the event over while its receivers run (written
  from a connection of its own, as that instance would), so this run is fenced for certain.

Later dispatches (``event.attempts > 1``) behave, so every event can end processed.

With ``CHAOS_STARTED_FILE`` set, each dispatch first appends its event's id to that file.
With ``CHAOS_EFFECTS_FILE`` set, every dispatch also schedules an effect that appends a line to
that file, outside the database: its idempotency key, the event's attempt that scheduled it and
the effect's run that wrote it. The file is what the outside world saw.
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.models.functions import Now
from django.dispatch import receiver

from stripe_idempotency.effects import effect
from stripe_idempotency.models import EventEffect, StripeEvent
from stripe_idempotency.signals import event_received


@receiver(event_received)
def misbehave(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    if started := os.environ.get("CHAOS_STARTED_FILE"):
        with open(started, "a") as record:  # which dispatches began, for a test to act mid-receiver
            record.write(f"{event.event_id}\n")
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


# Connected after misbehave, so it runs after it: on MariaDB the effect's row holds a shared lock
# on its event's row (the foreign key) until the transaction ends, and _take_over's UPDATE from
# another connection of this same thread would wait for it. (A real second instance's claim
# never waits: it is answered busy, as behind a ledger entry's foreign key.)
@receiver(event_received)
def schedule_an_outside_write(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    if os.environ.get("CHAOS_EFFECTS_FILE"):
        append_key.schedule(event, scheduled_by_attempt=event.attempts)


@effect(name="chaos.append_key")
def append_key(*, scheduled_by_attempt: int, idempotency_key: str) -> None:
    """One line per run that reached the outside world; then a pause before the run is recorded,
    the window in which a killed worker leaves a written key whose run is not recorded."""
    # Which run this is: read while its lease is live, when no other run can have started.
    live = EventEffect.objects.filter(idempotency_key=idempotency_key, claim_expires_at__gt=Now())
    run = live.values_list("attempts", flat=True).first()
    if run is None:
        raise RuntimeError("chaos: the run's lease ran out before it wrote anything")
    with open(os.environ["CHAOS_EFFECTS_FILE"], "a") as outside:  # one short O_APPEND write
        outside.write(f"{idempotency_key} {scheduled_by_attempt} {run}\n")
    time.sleep(0.2)


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
