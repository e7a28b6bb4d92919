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
from typing import Any, Literal, cast

from stripe_idempotency.conf import PAYLOAD_FAMILIES, SETTINGS_NAME, AppSettings, app_settings

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

#: What a named endpoint's dict may set besides its own ``WEBHOOK_SECRETS``: each defaults to
#: the top-level value.
INHERITED = (AppSettings.LIVEMODE, AppSettings.PAYLOAD, AppSettings.PROCESSING)

#: The keys an endpoint's dict may hold.
ENDPOINT_KEYS = (AppSettings.WEBHOOK_SECRETS.name, *(setting.name for setting in INHERITED))


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
    return _endpoint(DEFAULT, app_settings.user_settings(), inherit=None)


def _named(name: str, config: dict[str, Any]) -> Endpoint:
    return _endpoint(name, config, inherit=app_settings.user_settings())


def _endpoint(name: str, config: dict[str, Any], *, inherit: dict[str, Any] | None) -> Endpoint:
    """The endpoint ``config`` describes; a named one's (``inherit``: the top-level settings)
    takes the top-level ``LIVEMODE``, ``PAYLOAD`` and ``PROCESSING`` it does not set."""
    where = where_of(name)
    return Endpoint(
        name=name,
        secrets=tuple(AppSettings.WEBHOOK_SECRETS.read(config, where=where)),
        livemode=AppSettings.LIVEMODE.read(config, inherit=inherit, where=where),
        payload=AppSettings.PAYLOAD.read(config, inherit=inherit, where=where),
        processing=cast(
            Literal["inline", "deferred"], AppSettings.PROCESSING.read(config, inherit=inherit, where=where)
        ),
    )


def where_of(name: str) -> str:
    """How messages name the dict holding an endpoint's settings."""
    return SETTINGS_NAME if name == DEFAULT else f"{SETTINGS_NAME}['ENDPOINTS'][{name!r}]"
