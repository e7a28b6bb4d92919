"""Misbehaviour on an event's first dispatch, chosen by the event: ``data.object.chaos``.

- ``slow``: outlive the lease, so that another delivery takes the event over;
- ``fail``: raise;
- ``kill``: end the worker process on the spot, as the OOM killer would;
- ``linger``: wait a moment inside the transaction (a window to kill its connection).

Later dispatches (``event.attempts > 1``) behave, so every event can end processed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings
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
    elif chaos == "linger":
        time.sleep(float(os.environ.get("CHAOS_LINGER_SECONDS", "1.5")))
