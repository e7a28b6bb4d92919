"""Events of one Stripe object, in Stripe's order.

Stripe does not deliver in order: ``customer.subscription.updated`` can arrive before
``.created``, a refund before its payment. Each row records the object its event is about
(``object_id``: ``data.object.id``, or a thin event's ``related_object.id``) and Stripe's
``created``, indexed together, so a receiver can ask what is known about its object
(:meth:`StripeEvent.superseded() <stripe_idempotency.models.StripeEvent.superseded>`,
:meth:`StripeEvent.latest_processed() <stripe_idempotency.models.StripeEvent.latest_processed>`),
and the ``ORDERING`` setting can opt event types into two rules::

    STRIPE_IDEMPOTENCY = {
        "ORDERING": {
            "customer.subscription.*": "skip_superseded",
            "charge.*": "serialize",
        },
    }

``"serialize"``
    Two events of these types about one object never run at once: a claim that finds another
    event of the object under a live lease gives its claim back and is answered busy.
``"skip_superseded"``
    The same, and an event whose object already has a processed event created later (in whole
    seconds) is completed without running its receivers, recorded in ``superseded_by``. Only
    for receivers that copy an object's latest state: an event that *adds* something (a
    payment, a refund) is never superseded by a later one.

Ties: Stripe's ``created`` has one-second resolution on snapshot events, so ``created`` is
compared in whole seconds, and two events of the same second supersede neither one another.
Both run; skipping is reserved for an order that is certain.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from stripe_idempotency.conf import ORDERING_MODES, OrderingMode, app_settings

__all__ = ["MODES", "OrderingMode", "mode_for"]

#: The values of ``ORDERING``.
MODES = ORDERING_MODES


def mode_for(event_type: str) -> OrderingMode | None:
    """The ``ORDERING`` rule for ``event_type``: its exact entry, else the longest pattern
    (``fnmatch``-style, as ``customer.subscription.*``) that matches it, else ``None``."""
    rules: dict[str, OrderingMode] = app_settings.ORDERING
    if not rules:
        return None
    if event_type in rules:
        return rules[event_type]
    matching = [pattern for pattern in rules if fnmatchcase(event_type, pattern)]
    return rules[max(matching, key=len)] if matching else None
