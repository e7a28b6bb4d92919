"""What the shop does with Stripe's events. Each receiver runs once per event, in one transaction."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.dispatch import receiver

from example_project.shop.models import Cancellation, Fulfilment
from stripe_idempotency.models import LedgerEntry, StripeEvent
from stripe_idempotency.signals import signal_for


@receiver(signal_for("checkout.session.completed"))
def fulfil_order(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    session = event.payload["data"]["object"]
    email = (session.get("customer_details") or {}).get("email") or ""
    time.sleep(settings.SHOP_FULFILMENT_SECONDS)
    Fulfilment.objects.create(
        checkout_session_id=session["id"], customer_email=email, stripe_event_id=event.event_id
    )
    # The customer's store credit: the session id makes the credit idempotent
    # on its own, even if the same session reached us through another event.
    LedgerEntry.objects.credit(
        account=session["customer"],
        amount=session["amount_total"],
        currency=session["currency"],
        entry_type="checkout_payment",
        reference=session["id"],
        event=event,
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


@receiver(signal_for("charge.refunded"))
def refund(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    charge = event.payload["data"]["object"]
    # This shop refunds charges in full, once: the charge id is the reference.
    # A refund that arrives before the payment it refunds finds too little
    # credit: InsufficientFunds fails the delivery and Stripe delivers it again.
    LedgerEntry.objects.debit(
        account=charge["customer"],
        amount=charge["amount_refunded"],
        currency=charge["currency"],
        entry_type="refund",
        reference=charge["id"],
        event=event,
    )


@receiver(signal_for("payment_intent.succeeded"))
def credit_payment(sender: type[StripeEvent], event: StripeEvent, **kwargs: Any) -> None:
    payment = event.payload["data"]["object"]
    if not payment.get("customer"):
        return  # a guest payment: no account to credit
    # Invoices and one-off charges both succeed through a PaymentIntent: its id is the reference.
    LedgerEntry.objects.credit(
        account=payment["customer"],
        amount=payment["amount_received"] if "amount_received" in payment else payment["amount"],
        currency=payment["currency"],
        entry_type="card_payment",
        reference=payment["id"],
        event=event,
    )
