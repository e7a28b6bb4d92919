"""What the shop does with Stripe's events. Each receiver runs once per event, in one transaction."""

from __future__ import annotations

import os
import time
from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.dispatch import receiver

from example_project.shop.models import Cancellation, Fulfilment
from stripe_idempotency.effects import effect
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
        # Stored with the fulfilment, sent after it commits: a delivery that rolls back (a
        # receiver raised, the lease was lost) sends nothing, and a process that dies after
        # the commit leaves the mail to the reaper instead of losing it.
        send_order_email.schedule(event, session_id=session["id"], email=email)


@effect(name="shop.send_order_email")
def send_order_email(*, session_id: str, email: str, idempotency_key: str) -> None:
    _wait_for_the_gate()
    EmailMessage(
        "Your order is on its way",
        f"Thank you! Order {session_id} has shipped.",
        None,
        [email],
        # A mail service that honours keys sends a repeated run once.
        headers={"Idempotency-Key": idempotency_key},
    ).send()


def _wait_for_the_gate() -> None:
    """With ``SHOP_MAIL_GATE`` set (the server tests), the mail waits until that file exists, at
    most a minute: a mail as slow as a test wants, to show the answer never waits for it."""
    gate = settings.SHOP_MAIL_GATE
    deadline = time.monotonic() + 60
    while gate and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)


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
