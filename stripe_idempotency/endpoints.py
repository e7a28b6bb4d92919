"""Named endpoints: each its own secrets, live-mode policy, payload family and processing mode.

Stripe signs each webhook endpoint's deliveries (each event destination's) with a secret of
its own. A project with more than one (the platform's events and a Connect endpoint; a
snapshot destination and a thin one) names each in ``ENDPOINTS`` and routes it to
``webhook/<name>/``; the default endpoint, ``webhook/``, is the top-level settings::

    STRIPE_IDEMPOTENCY = {
        "WEBHOOK_SECRETS": ["whsec_platform..."],          # webhook/
        "ENDPOINTS": {
            "connect": {"WEBHOOK_SECRETS": ["whsec_connect..."], "LIVEMODE": True},
            "thin": {"WEBHOOK_SECRETS": ["whsec_thin..."], "PAYLOAD": "thin"},
        },
    }

A named endpoint's ``LIVEMODE``, ``PAYLOAD`` and ``PROCESSING`` default to the top-level
values; its ``WEBHOOK_SECRETS`` are its own, never shared: an event signed for one
endpoint is refused on every other.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Literal

from stripe_idempotency.conf import app_settings

__all__ = [
    "DEFAULT",
    "ENDPOINT_NAME",
    "PAYLOAD_FAMILIES",
    "Endpoint",
    "UnknownEndpoint",
    "endpoint",
    "endpoints",
]

#: The default endpoint's name (``webhook/``), as stored in ``StripeEvent.endpoint``.
DEFAULT = ""

#: What an endpoint's name may be: it is a URL segment and a stored column (64 characters).
NAME_MAX_LENGTH = 64
ENDPOINT_NAME = re.compile(rf"[A-Za-z0-9_-]{{1,{NAME_MAX_LENGTH}}}")

#: What traces and metrics call an endpoint that is not configured (no name can be this).
UNKNOWN = "(unknown)"

#: The values of ``PAYLOAD``: snapshot events only, thin event notifications only, or both.
PAYLOAD_FAMILIES = ("snapshot", "thin", "any")

#: The keys an endpoint's dict may hold.
ENDPOINT_KEYS = ("WEBHOOK_SECRETS", "LIVEMODE", "PAYLOAD", "PROCESSING")


class UnknownEndpoint(LookupError):
    """No endpoint of that name is configured (or the default one has no secrets)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint's configuration, as a delivery to it is checked."""

    #: ``""`` for the default endpoint.
    name: str
    secrets: tuple[str, ...]
    #: ``True``: live events only; ``False``: test events only; ``None``: both.
    livemode: bool | None
    #: ``"snapshot"``, ``"thin"`` or ``"any"``.
    payload: str
    #: ``"inline"`` or ``"deferred"``.
    processing: Literal["inline", "deferred"]

    def accepts_family(self, *, thin: bool) -> bool:
        return self.payload == "any" or self.payload == ("thin" if thin else "snapshot")

    def accepts_livemode(self, livemode: bool) -> bool:
        return self.livemode is None or self.livemode is livemode


def endpoint(name: str = DEFAULT) -> Endpoint:
    """The endpoint called ``name``; :class:`UnknownEndpoint` if none is, or if it is the default
    endpoint and that has no secrets while named ones are configured (it is then unused)."""
    if name == DEFAULT:
        if not app_settings.WEBHOOK_SECRETS and app_settings.ENDPOINTS:
            raise UnknownEndpoint(name)
        return _default()
    named = app_settings.ENDPOINTS.get(name)
    if not isinstance(named, dict):
        raise UnknownEndpoint(name)
    return _named(name, named)


def is_configured(name: str) -> bool:
    """Whether ``name`` is the default endpoint or one of ``ENDPOINTS``."""
    return name == DEFAULT or name in app_settings.ENDPOINTS


def endpoints() -> list[Endpoint]:
    """Every configured endpoint, the default one first (if it has secrets or is the only one)."""
    found = []
    with contextlib.suppress(UnknownEndpoint):
        found.append(endpoint(DEFAULT))
    found.extend(
        _named(name, config) for name, config in app_settings.ENDPOINTS.items() if isinstance(config, dict)
    )
    return found


def _default() -> Endpoint:
    return Endpoint(
        name=DEFAULT,
        secrets=tuple(app_settings.WEBHOOK_SECRETS),
        livemode=app_settings.LIVEMODE,
        payload=app_settings.PAYLOAD,
        processing=_mode(app_settings.PROCESSING),
    )


def _named(name: str, config: dict[str, Any]) -> Endpoint:
    secrets = config.get("WEBHOOK_SECRETS", [])
    livemode = config.get("LIVEMODE", app_settings.LIVEMODE)
    return Endpoint(
        name=name,
        # A lone string is a common slip (check E011 says so); never iterate it by character.
        secrets=(secrets,) if isinstance(secrets, str) else tuple(secrets),
        livemode=None if livemode is None else bool(livemode),
        payload=str(config.get("PAYLOAD", app_settings.PAYLOAD)),
        processing=_mode(config.get("PROCESSING", app_settings.PROCESSING)),
    )


def _mode(value: object) -> Literal["inline", "deferred"]:
    # Any other value is reported by check E014; until fixed, it is the default.
    return "deferred" if value == "deferred" else "inline"
