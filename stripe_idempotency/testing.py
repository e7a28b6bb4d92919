"""Helpers for testing code that receives Stripe events, without the network.

Build an event the way Stripe formats it, sign it the way Stripe signs it
(with the ``stripe`` library's own signer), and post it to the webhook view
with Django's test client::

    import pytest

    from stripe_idempotency.testing import build_event, deliver

    # The view commits its claim before the receivers run: a transactional database.
    @pytest.mark.django_db(transaction=True)
    def test_fulfils_order(client):
        event = build_event("checkout.session.completed", data={"id": "cs_test_1"})
        response = deliver(client, event, secret="whsec_test")
        assert response.json()["status"] == "processed"

``secret`` defaults to the first of ``STRIPE_IDEMPOTENCY["WEBHOOK_SECRETS"]``.
"""

from __future__ import annotations

import heapq
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import stripe
from django.test import Client
from django.urls import reverse

from stripe_idempotency import effects
from stripe_idempotency.endpoints import endpoints
from stripe_idempotency.object_shapes import object_for

if TYPE_CHECKING:
    # The test client's response (``.json()``, ``.templates``...), named only in django-stubs.
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

DEFAULT_API_VERSION = "2024-06-20"
#: How long :func:`deliver` waits for the effects a delivery committed to finish running.
EFFECTS_TIMEOUT_SECONDS = 60

T = TypeVar("T")


def build_event(
    type: str = "checkout.session.completed",
    *,
    data: Mapping[str, Any] | None = None,
    id: str | None = None,
    livemode: bool = False,
    created: int | None = None,
    api_version: str | None = DEFAULT_API_VERSION,
    **fields: Any,
) -> dict[str, Any]:
    """A Stripe event dict: ``{"id": "evt_...", "object": "event", "type": ..., "data": {"object": ...}}``.

    ``data.object`` is, for the common types (Checkout Sessions, payment intents, charges,
    refunds, invoices, subscriptions, customers, payouts), the fields Stripe always sends in
    that object (:mod:`~stripe_idempotency.object_shapes`: a paid guest checkout, a succeeded
    charge...) with ``data`` laid over them; for other types, ``data`` alone. ``id`` defaults
    to a fresh random ``evt_`` id. Extra keyword arguments become top-level fields
    (``request=...``, ``pending_webhooks=...``).
    """
    return {
        "id": id if id is not None else f"evt_test_{secrets.token_hex(12)}",
        "object": "event",
        "api_version": api_version,
        "created": created if created is not None else int(time.time()),
        "data": {"object": {**object_for(type), **dict(data or {})}},
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type,
        **fields,
    }


def build_thin_event(
    type: str = "v1.customer.updated",
    *,
    related_object: Mapping[str, Any] | None = None,
    id: str | None = None,
    livemode: bool = False,
    created: datetime | None = None,
    context: str | None = None,
    snapshot_event: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A thin event notification dict, as an event destination sends one:
    ``{"id": "evt_...", "object": "v2.core.event", "type": ..., "related_object": {...}}``.

    ``related_object`` is ``{"id", "type", "url"}`` (default: a customer, for a ``v1.customer.*``
    type); ``context`` the connected account (Connect); ``snapshot_event`` the id of the snapshot
    event of the same change, when Stripe sends both. ``created`` defaults to now. Extra keyword
    arguments become top-level fields (``reason=...``).
    """
    when = created or datetime.now(UTC)
    event: dict[str, Any] = {
        "id": id if id is not None else f"evt_test_{secrets.token_hex(12)}",
        "object": "v2.core.event",
        "type": type,
        "livemode": livemode,
        # RFC 3339 with milliseconds, as Stripe writes it.
        "created": when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "related_object": dict(related_object)
        if related_object is not None
        else {"id": "cus_test_1", "type": "customer", "url": "/v1/customers/cus_test_1"},
        **fields,
    }
    if context is not None:
        event["context"] = context
    if snapshot_event is not None:
        event["snapshot_event"] = snapshot_event
    return event


def encode(event: Mapping[str, Any] | str | bytes) -> bytes:
    """The request body for ``event``: JSON for a dict, unchanged for ``str``/``bytes``."""
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode("utf-8")
    return json.dumps(event, separators=(",", ":")).encode("utf-8")


def sign(
    body: bytes | str,
    secret: str | Iterable[str] | None = None,
    *,
    timestamp: int | None = None,
) -> str:
    """The ``Stripe-Signature`` header for ``body``.

    ``secret`` may be several secrets, giving one ``v1`` signature each (what
    Stripe sends while an endpoint's secret is being rolled). ``timestamp``
    (Unix seconds) defaults to now; pass an old one to test the tolerance.
    """
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    timestamp = int(time.time()) if timestamp is None else timestamp
    if secret is None:
        secret = _default_secret()
    secret_list = [secret] if isinstance(secret, str) else list(secret)
    headers = [
        stripe.WebhookSignature.generate_signature_header(text, s, timestamp=timestamp) for s in secret_list
    ]
    signatures = [part for header in headers for part in header.split(",")[1:]]
    return ",".join([f"t={timestamp}", *signatures])


def deliver(
    client: Client,
    event: Mapping[str, Any] | str | bytes,
    *,
    secret: str | Iterable[str] | None = None,
    timestamp: int | None = None,
    signature: str | None = None,
    url: str | None = None,
    endpoint: str = "",
    **extra: Any,
) -> TestResponse:
    """POST ``event`` to the webhook view, signed, and return the response.

    ``signature`` replaces the computed ``Stripe-Signature`` header (pass
    ``""`` to send none); ``url`` defaults to ``reverse("stripe_idempotency:webhook")``, or
    with ``endpoint`` the named endpoint's URL (then ``secret`` defaults to its first secret).
    Extra keyword arguments go to :meth:`Client.post` (for example ``headers=``). Returns once
    the effects the delivery committed have run (they run on this process's threads after the
    answer, :mod:`stripe_idempotency.effects`), so a test can assert what they did.
    """
    body = encode(event)
    headers = dict(extra.pop("headers", {}))
    if signature is None:
        signature = sign(
            body, secret if secret is not None else _default_secret(endpoint), timestamp=timestamp
        )
    if signature:
        headers["Stripe-Signature"] = signature
    response = client.post(
        url or reverse("stripe_idempotency:webhook", kwargs={"endpoint": endpoint} if endpoint else None),
        data=body,
        content_type="application/json",
        headers=headers,
        **extra,
    )
    if not effects.wait_for_runs(EFFECTS_TIMEOUT_SECONDS):
        raise AssertionError(f"The delivery's effects were still running after {EFFECTS_TIMEOUT_SECONDS} s.")
    return response


def deliver_concurrently(
    jobs: Iterable[T],
    attempt: Callable[[T], float | None],
    *,
    senders: int = 8,
    max_attempts: int = 10,
    spread: float = 0.0,
) -> None:
    """Run ``attempt(job)`` for every job on ``senders`` threads, retrying the way Stripe does.

    ``attempt`` makes one delivery and returns ``None`` when it is done (a 2xx) or the
    seconds to wait before the next try. A job waiting for its retry goes back in the
    queue, so no sender is tied up while it waits and the other jobs keep moving, until
    it is done or has made ``max_attempts`` attempts. Returns when every job is finished; if
    ``attempt`` raised, the first exception is raised then (the other jobs still run).
    ``spread`` (seconds) staggers the first attempts evenly over that time, in order, as
    events arrive over time in real life; 0 starts them all at once. For load and burst
    tests against a running server (``attempt`` sends the request).
    """
    condition = threading.Condition()
    job_list = list(jobs)
    start = time.monotonic()
    step = spread / len(job_list) if job_list else 0.0
    queue: list[tuple[float, int, int, T]] = [(start + n * step, n, 0, job) for n, job in enumerate(job_list)]
    heapq.heapify(queue)  # (not before, order, attempts made, job)
    in_flight = 0
    errors: list[BaseException] = []

    def sender() -> None:
        nonlocal in_flight
        while True:
            with condition:
                while not queue and in_flight:
                    condition.wait()
                if not queue:
                    condition.notify_all()
                    return
                not_before, order, made, job = heapq.heappop(queue)
                in_flight += 1
            time.sleep(max(0.0, not_before - time.monotonic()))
            retry_in: float | None = None
            try:
                retry_in = attempt(job)
            except BaseException as exc:  # reported once every sender is done, never lost
                errors.append(exc)
            finally:
                with condition:
                    in_flight -= 1
                    if retry_in is not None and made + 1 < max_attempts:
                        heapq.heappush(queue, (time.monotonic() + retry_in, order, made + 1, job))
                    condition.notify_all()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _default_secret(endpoint: str = "") -> str:
    configured = next((e.secrets for e in endpoints() if e.name == endpoint), ())
    if not configured:
        where = f'ENDPOINTS["{endpoint}"]' if endpoint else "WEBHOOK_SECRETS"
        raise ValueError(f'No secret given and STRIPE_IDEMPOTENCY["{where}"] has none: pass secret=.')
    return configured[0]
