"""What the shop does with Stripe's events. Each receiver runs once per event, in one transaction."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.dispatch import receiver

from example_project.shop.models import Cancellation, Fulfilment
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import signal_for


@receiver(signal_for("checkout.session.completed"))
def fulfil_order(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    session = event.payload["data"]["object"]
    email = (session.get("customer_details") or {}).get("email") or ""
    time.sleep(settings.SHOP_FULFILMENT_SECONDS)
    Fulfilment.objects.create(
        checkout_session_id=session["id"], customer_email=email, stripe_event_id=event.event_id
    )
    if email:
        # Mail leaves only once the fulfilment has committed: a delivery that
        # rolls back (a receiver raised, the lease was lost) sends nothing.
        transaction.on_commit(
            lambda: send_mail(
                "Your order is on its way",
                f"Thank you! Order {session['id']} has shipped.",
                None,
                [email],
            )
        )


@receiver(signal_for("customer.subscription.deleted"))
def end_subscription(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    subscription = event.payload["data"]["object"]
    Cancellation.objects.create(subscription_id=subscription["id"], stripe_event_id=event.event_id)
