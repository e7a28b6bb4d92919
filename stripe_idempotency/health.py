"""The pipeline's figures over HTTP, for monitors: what ``stripe_events_status --json`` prints.

Opt-in: the project routes it where it wants it, protected by a bearer token from
``HEALTH_TOKENS`` or a staff login with the permission to view events::

    path("stripe/health/", HealthView.as_view(), name="stripe_health"),

``GET`` answers 200 with the figures while they are within the limits given in the query
string (the command's options: ``max_oldest_unprocessed``, ``max_dead``, ``max_failed``,
``max_lag_p99``, ``max_dead_effects``, ``max_oldest_pending_effect``, and ``window``), 503
with the alerts once one is passed, and 503
``unavailable`` when the database does not answer.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, router
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.views import View
from django.views.decorators.cache import never_cache

from stripe_idempotency.conf import app_settings
from stripe_idempotency.durations import parse_duration
from stripe_idempotency.exceptions import SettingInvalid
from stripe_idempotency.log import logger
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.outcomes import Rejected, Unavailable
from stripe_idempotency.status import LIMIT_OPTIONS, Limits, status
from stripe_idempotency.views import Answer

__all__ = ["HealthView"]

DEFAULT_WINDOW = timedelta(hours=1)
_PERMISSION = f"{StripeEvent._meta.app_label}.view_stripeevent"


class InvalidParameter(ValueError):
    pass


class HealthView(View):
    """The figures of :func:`stripe_idempotency.status.status` as JSON; 503 past the limits asked for."""

    http_method_names = ["get", "head"]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        # Monitors authenticate with a token, not a session: the view checks access itself.
        return login_not_required(never_cache(super().as_view(**initkwargs)))

    def get(self, request: HttpRequest) -> JsonResponse:
        try:
            refusal = _refusal(request)
        except SettingInvalid as error:
            logger.error("The health view cannot check access: %s", error)
            return Answer(Unavailable(), logged_here=False)
        if refusal is not None:
            return refusal
        try:
            window, limits = _read_query(request)
        except InvalidParameter as error:
            return Answer(Rejected("invalid_parameter", 400, detail=str(error)), logged_here=False)
        try:
            report = status(using=router.db_for_write(StripeEvent), window=window)
        except DatabaseError as error:
            logger.error("The health view could not read the events: %s", error)
            return Answer(Unavailable(), logged_here=False)
        alerts = limits.passed(report)
        body = {"status": "alert" if alerts else "ok", **report.as_json(), "alerts": alerts}
        return JsonResponse(body, status=503 if alerts else 200)


def _refusal(request: HttpRequest) -> Answer | None:
    """``None`` when the caller may see the figures, else the answer that says why not."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token:
        # Every configured token compared in full, whichever matches: no timing to learn from.
        matches = [
            hmac.compare_digest(token.encode(), known.encode()) for known in app_settings.HEALTH_TOKENS
        ]
        if any(matches):
            return None
        return Answer(Rejected("invalid_token", 403), logged_here=False)
    user = getattr(request, "user", None)
    if user is not None and user.is_active and user.is_staff and user.has_perm(_PERMISSION):
        return None
    if user is not None and user.is_authenticated:
        return Answer(Rejected("forbidden", 403), logged_here=False)
    response = Answer(Rejected("authentication_required", 401), logged_here=False)
    response["WWW-Authenticate"] = 'Bearer realm="stripe_idempotency"'
    return response


def _read_query(request: HttpRequest) -> tuple[timedelta, Limits]:
    query = request.GET
    known = {"window", *LIMIT_OPTIONS}
    unknown = sorted(set(query) - known)
    if unknown:
        raise InvalidParameter(
            f"Unknown parameters: {', '.join(unknown)}. Known: {', '.join(sorted(known))}."
        )
    limits = Limits.read(query, lambda key, error: InvalidParameter(f"{key}: {error}"))
    try:
        window = parse_duration(query["window"]) if "window" in query else DEFAULT_WINDOW
    except ValueError as error:
        raise InvalidParameter(f"window: {error}") from error
    return window, limits
