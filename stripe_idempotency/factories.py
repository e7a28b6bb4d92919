"""factory_boy factories for the app's rows, for tests (``pip install factory-boy``).

``StripeEventFactory`` makes a stored event in any state, with a payload built
by :func:`~stripe_idempotency.testing.build_event`::

    StripeEventFactory()                 # pending: stored, never claimed
    StripeEventFactory(processed=True)   # also claimed=, stale=, failed=, dead=
    StripeEventFactory(type="invoice.paid", data={"id": "in_1"})

``LedgerEntryFactory`` writes entries through ``LedgerEntry.objects.credit()``
(the only way entries are written), so balances stay consistent::

    LedgerEntryFactory(account="cus_1", amount=500)

Lease times are an hour either side of now, and every event arrived an hour ago,
so a clock skew between Python and the database (seconds) never changes the state
a trait asks for, and a pending event is past the reaper's grace period
(``PENDING_GRACE_SECONDS``); pass ``received_at`` for a fresher one.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import factory
from django.utils import timezone
from factory.django import DjangoModelFactory

from stripe_idempotency.conf import app_settings
from stripe_idempotency.models import LedgerEntry, StripeEvent
from stripe_idempotency.testing import build_event

__all__ = ["LedgerEntryFactory", "StripeEventFactory"]

_HOUR = timedelta(hours=1)


def _past() -> Any:
    return factory.LazyFunction(lambda: timezone.now() - _HOUR)


class StripeEventFactory(DjangoModelFactory):  # type: ignore[misc]
    """A stored :class:`~stripe_idempotency.models.StripeEvent`; pending unless a trait says otherwise."""

    class Meta:
        model = StripeEvent
        django_get_or_create = ("event_id",)

    class Params:
        #: ``data.object`` of the payload.
        data: dict[str, Any] = {}
        processed = factory.Trait(claimed_at=_past(), claimed_by="factory", attempts=1, processed_at=_past())
        claimed = factory.Trait(
            claimed_at=factory.LazyFunction(timezone.now),
            claimed_by="factory",
            claim_expires_at=factory.LazyFunction(lambda: timezone.now() + _HOUR),
            claim_token=factory.LazyFunction(uuid.uuid4),
            attempts=1,
        )
        stale = factory.Trait(
            claimed_at=_past(),
            claimed_by="factory",
            claim_expires_at=_past(),
            claim_token=factory.LazyFunction(uuid.uuid4),
            attempts=1,
        )
        failed = factory.Trait(
            claimed_at=_past(), claimed_by="factory", attempts=1, last_error="RuntimeError: boom"
        )
        dead = factory.Trait(
            claimed_at=_past(),
            claimed_by="factory",
            attempts=factory.LazyFunction(lambda: app_settings.MAX_ATTEMPTS),
            last_error="RuntimeError: boom",
        )

    event_id = factory.Sequence(lambda n: f"evt_factory_{n}")
    type = "checkout.session.completed"
    livemode = False
    api_version = "2024-06-20"
    payload = factory.LazyAttribute(
        lambda o: build_event(o.type, id=o.event_id, livemode=o.livemode, data=o.data)
    )
    created = factory.LazyFunction(timezone.now)
    received_at = _past()
    attempts = 0


class LedgerEntryFactory(factory.Factory):  # type: ignore[misc]
    """A credit (or, with a negative ``amount``, a debit) written through the ledger's own operations."""

    class Meta:
        model = LedgerEntry

    account = factory.Sequence(lambda n: f"cus_factory_{n}")
    amount = 1000
    currency = "usd"
    entry_type = "deposit"
    reference = factory.Sequence(lambda n: f"ref_factory_{n}")

    @classmethod
    def _create(cls, model_class: type[LedgerEntry], *args: Any, amount: int, **kwargs: Any) -> LedgerEntry:
        if amount < 0:
            entry, _ = model_class.objects.debit(amount=-amount, allow_negative=True, **kwargs)
        else:
            entry, _ = model_class.objects.credit(amount=amount, **kwargs)
        return entry

    @classmethod
    def _build(cls, model_class: type[LedgerEntry], *args: Any, **kwargs: Any) -> LedgerEntry:
        raise TypeError("Ledger entries exist only once written: use LedgerEntryFactory() (create).")
