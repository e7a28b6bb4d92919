"""The fields Stripe always sends in the objects of the most common events, for test events.

A receiver written against a test event of ``{"id": "cs_test_1"}`` alone reads fields that only
Stripe's payloads have (``session["payment_status"]``) and passes its tests by luck, or fails
them on a ``KeyError`` its production payloads never raise. :func:`~stripe_idempotency.testing.
build_event` starts each ``data.object`` from the shape here, with the values a plain test-mode
payload has (nullable fields ``None``, as Stripe sends them), and lays the test's ``data`` over it.

The values are those of a guest checkout paid by card (no customer object), on purpose: the
case receivers most often forget. A test of another case says so in its ``data``.
"""

from __future__ import annotations

import copy
import secrets
from typing import Any

__all__ = ["OBJECT_SHAPES", "object_for"]

_CHECKOUT_SESSION: dict[str, Any] = {
    "object": "checkout.session",
    "amount_subtotal": 1500,
    "amount_total": 1500,
    "client_reference_id": None,
    "currency": "usd",
    "customer": None,
    "customer_details": {"email": "customer@example.com", "name": None, "phone": None},
    "livemode": False,
    "metadata": {},
    "mode": "payment",
    "payment_intent": "pi_test_1",
    "payment_status": "paid",
    "status": "complete",
    "subscription": None,
}

_PAYMENT_INTENT: dict[str, Any] = {
    "object": "payment_intent",
    "amount": 1500,
    "amount_received": 1500,
    "currency": "usd",
    "customer": None,
    "latest_charge": "ch_test_1",
    "livemode": False,
    "metadata": {},
    "status": "succeeded",
}

_CHARGE: dict[str, Any] = {
    "object": "charge",
    "amount": 1500,
    "amount_captured": 1500,
    "amount_refunded": 0,
    "captured": True,
    "currency": "usd",
    "customer": None,
    "livemode": False,
    "metadata": {},
    "paid": True,
    "payment_intent": "pi_test_1",
    "refunded": False,
    "status": "succeeded",
}

_INVOICE: dict[str, Any] = {
    "object": "invoice",
    "amount_due": 1500,
    "amount_paid": 1500,
    "amount_remaining": 0,
    "currency": "usd",
    "customer": "cus_test_1",
    "livemode": False,
    "metadata": {},
    "paid": True,
    "status": "paid",
}

_SUBSCRIPTION: dict[str, Any] = {
    "object": "subscription",
    "cancel_at_period_end": False,
    "currency": "usd",
    "customer": "cus_test_1",
    "livemode": False,
    "metadata": {},
    "status": "active",
}

_CUSTOMER: dict[str, Any] = {
    "object": "customer",
    "balance": 0,
    "currency": None,
    "email": "customer@example.com",
    "livemode": False,
    "metadata": {},
    "name": None,
}

_REFUND: dict[str, Any] = {
    "object": "refund",
    "amount": 500,
    "charge": "ch_test_1",
    "currency": "usd",
    "metadata": {},
    "payment_intent": "pi_test_1",
    "status": "succeeded",
}

_PAYOUT: dict[str, Any] = {
    "object": "payout",
    "amount": 1500,
    "currency": "usd",
    "livemode": False,
    "metadata": {},
    "status": "paid",
}

#: Event type prefix (the type without its last part) -> the object's shape and its id prefix.
OBJECT_SHAPES: dict[str, tuple[str, dict[str, Any]]] = {
    "checkout.session": ("cs_test", _CHECKOUT_SESSION),
    "payment_intent": ("pi_test", _PAYMENT_INTENT),
    "charge": ("ch_test", _CHARGE),
    "charge.refund": ("re_test", _REFUND),
    "refund": ("re_test", _REFUND),
    "invoice": ("in_test", _INVOICE),
    "customer.subscription": ("sub_test", _SUBSCRIPTION),
    "customer": ("cus_test", _CUSTOMER),
    "payout": ("po_test", _PAYOUT),
}


def object_for(event_type: str) -> dict[str, Any]:
    """A fresh object as Stripe sends one in an event of ``event_type`` (a new test id each
    call), or ``{}`` for a type whose object has no shape here."""
    prefix = event_type.rpartition(".")[0]
    found = OBJECT_SHAPES.get(prefix)
    if found is None:
        return {}
    id_prefix, shape = found
    return {"id": f"{id_prefix}_{secrets.token_hex(8)}", **copy.deepcopy(shape)}
