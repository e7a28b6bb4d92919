"""An ASGI guard for the webhook path: refuse an over-large body before Django reads it.

Under ASGI, Django's handler reads the whole request body (spooling it to a
temporary file past ``FILE_UPLOAD_MAX_MEMORY_SIZE``) before any view runs, so
the view's own size check comes too late: an unauthenticated 500 MiB POST
became a 500 MiB file first. Wrap the application::

    # asgi.py
    from django.core.asgi import get_asgi_application
    from stripe_idempotency.asgi import WebhookBodyLimit

    application = WebhookBodyLimit(get_asgi_application())

On the webhook's paths (``stripe_idempotency:webhook`` and every path under
it) a ``Content-Length`` over ``MAX_BODY_BYTES`` is answered 413 at once, and
a chunked body is cut off as soon as it passes the limit: the same JSON
rejection the view gives, ``{"status": "rejected", "error": "body_too_large"}``.
Every other request passes through untouched. (Under WSGI the view reads at
most one byte past the limit itself; no guard is needed.)
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from stripe_idempotency import outcomes
from stripe_idempotency.conf import app_settings
from stripe_idempotency.exceptions import SettingInvalid
from stripe_idempotency.outcomes import Rejected
from stripe_idempotency.signals import aannounce, event_rejected

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_REFUSED = Rejected("body_too_large", 413)
_TOO_LARGE = json.dumps(outcomes.body(_REFUSED)).encode()


class WebhookBodyLimit:
    """ASGI middleware bounding request bodies on the webhook's paths by ``MAX_BODY_BYTES``."""

    def __init__(self, app: ASGIApp, *, path: str | None = None) -> None:
        self.app = app
        # Resolved at the first request, once Django's URLconf is loaded.
        self._path = path

    @property
    def path(self) -> str:
        """The webhook's URL path; named endpoints live under it."""
        if self._path is None:
            from django.urls import reverse

            self._path = reverse("stripe_idempotency:webhook")
        return self._path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith(self.path):
            await self.app(scope, receive, send)
            return
        try:
            limit = app_settings.MAX_BODY_BYTES
        except SettingInvalid:
            # The webhook view reads the setting too, and answers the mistake 503 as JSON.
            await self.app(scope, receive, send)
            return
        if _declared_length(scope) > limit:
            await _refuse(send)
            return
        received = 0
        cut_off = False
        started = False

        async def bounded_receive() -> Message:
            nonlocal received, cut_off
            if cut_off:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Django stops reading at a disconnect and answers nothing;
                    # the refusal is sent below instead.
                    cut_off = True
                    return {"type": "http.disconnect"}
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, bounded_receive, tracked_send)
        if cut_off and not started:
            await _refuse(send)


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


async def _refuse(send: Send) -> None:
    # Imported here: an ASGI module wraps the application before Django's apps are ready,
    # and a model cannot be imported until they are.
    from stripe_idempotency.models import StripeEvent

    await aannounce(event_rejected, StripeEvent, code="body_too_large")
    await send(
        {
            "type": "http.response.start",
            "status": outcomes.http_status(_REFUSED),
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_TOO_LARGE)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _TOO_LARGE})
