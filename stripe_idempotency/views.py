"""The webhook endpoint: HTTP in, HTTP out. No SQL here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, InterfaceError, OperationalError, connections, transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt

from stripe_idempotency import endpoints, outcomes, processing, telemetry
from stripe_idempotency.conf import AppSettings, app_settings
from stripe_idempotency.exceptions import EventIgnored, SettingInvalid, UnsupportedDatabase, WebhookRejected
from stripe_idempotency.log import fields, logger
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.outcomes import Busy, Ignored, Outcome, Rejected, Reply, Unavailable
from stripe_idempotency.signals import announce, event_rejected
from stripe_idempotency.verification import verify


class WebhookView(View):
    """Receives Stripe's POSTs and answers only once the event's outcome is durable.

    Stripe reads any non-2xx answer as "deliver again later", so every
    failure here is a 4xx (the request can never succeed: a forged signature,
    a body that is not an event) or a 5xx (it may succeed later: a receiver
    raised, another instance holds the event, the database is down).
    """

    http_method_names = ["post"]

    @classmethod
    def as_view(cls, **initkwargs: Any) -> Callable[..., HttpResponseBase]:
        view = super().as_view(**initkwargs)
        # Stripe has no CSRF token and no session: it proves itself by signature.
        view = login_not_required(csrf_exempt(view))
        # The claim must commit before the receivers run and the receivers get
        # their own transaction, so the view cannot sit inside ATOMIC_REQUESTS.
        for alias in connections:
            view = transaction.non_atomic_requests(using=alias)(view)
        return view

    def post(self, request: HttpRequest, endpoint: str = endpoints.DEFAULT) -> HttpResponse:
        try:
            # A name from the URL that is not configured is anyone's to invent: it never becomes
            # a metric's attribute value, whose every distinct value is a time series.
            label = endpoint if endpoints.is_configured(endpoint) else endpoints.UNKNOWN
            with telemetry.span("delivery", **{telemetry.ENDPOINT: label}) as delivery:
                response = self._deliver(request, endpoint, delivery)
                delivery.set_attribute(telemetry.OUTCOME, response.outcome)
        except SettingInvalid as error:
            # A deployment mistake (its system check says so first): keep the event at
            # Stripe, which retries, until it is fixed.
            logger.error("Cannot receive Stripe events: %s", error, extra=fields(outcome="unavailable"))
            retry_after = AppSettings.RETRY_AFTER_MAX_SECONDS.default  # the configured one may be the mistake
            return Answer(Unavailable(None, retry_after))
        telemetry.count_delivery(response.outcome, label)
        return response

    def _deliver(self, request: HttpRequest, name: str, delivery: telemetry.Span) -> Answer:
        try:
            endpoint = endpoints.endpoint(name)
        except endpoints.UnknownEndpoint:
            logger.warning(
                "Rejected a webhook request to an unknown endpoint %r.",
                name[: endpoints.NAME_MAX_LENGTH],
                extra=fields(outcome="rejected", code="unknown_endpoint"),
            )
            return rejected("unknown_endpoint", status=404)
        try:
            with telemetry.span("verify"):
                body = _read_body(request, app_settings.MAX_BODY_BYTES)
                verified = verify(body, request.headers.get("Stripe-Signature"), endpoint)
        except WebhookRejected as rejection:
            logged = fields(event_id=rejection.event_id, outcome="rejected", code=rejection.code)
            if rejection.event_id is not None:
                # Authentic, and refused: Stripe will retry it for days, then drop
                # it. Someone must look (and can fetch it from Stripe's API).
                logger.error(
                    "Refused Stripe event %s: %s (%s)",
                    rejection.event_id,
                    rejection.code,
                    rejection,
                    extra=logged,
                )
            else:
                logger.warning("Rejected a webhook request: %s (%s)", rejection.code, rejection, extra=logged)
            return rejected(rejection.code, status=rejection.status)
        except EventIgnored as ignored:
            delivery.set_attribute(telemetry.EVENT_ID, ignored.event.id)
            delivery.set_attribute(telemetry.EVENT_TYPE, ignored.event.type)
            return _ignored(ignored, endpoint)
        delivery.set_attribute(telemetry.EVENT_ID, verified.id)
        delivery.set_attribute(telemetry.EVENT_TYPE, verified.type)
        unavailable = fields(event_id=verified.id, event_type=verified.type, outcome="unavailable")
        try:
            outcome = processing.receive(verified, mode=endpoint.processing)
        except (OperationalError, InterfaceError) as error:
            # One line, no traceback: during an outage every delivery lands here.
            logger.error(
                "Database unavailable while receiving Stripe event %s: %s",
                verified.id,
                error,
                extra=unavailable,
            )
            return _unavailable(verified.id)
        except DatabaseError:
            # Any other refusal of the database's (a read-only standby after a
            # failover, a broken connection state): the event is not stored as
            # processed, so Stripe must come back. With the traceback: it may be a bug.
            logger.exception(
                "The database refused Stripe event %s; answered unavailable.", verified.id, extra=unavailable
            )
            return _unavailable(verified.id)
        except UnsupportedDatabase as error:
            # A deployment mistake (system check E010 says so first): keep the
            # event at Stripe, which retries, until it is fixed.
            logger.error("Cannot receive Stripe event %s: %s", verified.id, error, extra=unavailable)
            return _unavailable(verified.id)
        return answer(outcome)

    def http_method_not_allowed(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        response = rejected("method_not_allowed", status=405)
        response["Allow"] = "POST"
        return response


def _read_body(request: HttpRequest, limit: int) -> bytes:
    declared = request.META.get("CONTENT_LENGTH")
    try:
        too_large = declared is not None and int(declared) > limit
    except ValueError:
        too_large = False
    if too_large:
        raise WebhookRejected("body_too_large", f"The body is larger than {limit} bytes.", status=413)
    # Read one byte past the limit, never more, in case the declared length lied.
    body = _chunked_body(request, limit + 1) if not declared else request.read(limit + 1)
    if len(body) > limit:
        raise WebhookRejected("body_too_large", f"The body is larger than {limit} bytes.", status=413)
    return body


def _chunked_body(request: HttpRequest, size: int) -> bytes:
    """A body sent without ``Content-Length`` (chunked): read from the server's own stream.

    Django reads such a body as empty under WSGI, which would be answered
    ``invalid_signature``. A server that decodes chunked bodies says so with
    ``wsgi.input_terminated`` (gunicorn does), and then the stream ends where
    the body does. Under ASGI the body is already in hand.
    """
    stream = request.META.get("wsgi.input")
    if stream is None or not request.META.get("wsgi.input_terminated"):
        return request.read(size)
    return bytes(stream.read(size))


class Answer(JsonResponse):
    """Every answer of the app's HTTP views: the JSON body, status and headers that
    :data:`stripe_idempotency.outcomes.REPORTS` gives ``reply``."""

    # This module logs every answer at its own level ("stripe_idempotency" logger): a
    # busy 503 is routine under concurrent deliveries, not a server error, so
    # django.request is told not to log it again as one.
    _has_been_logged = True

    def __init__(self, reply: Reply, *, logged_here: bool = True) -> None:
        """``logged_here=False`` for a view that does not log its answers itself: django.request
        then logs a 4xx or 5xx as it does any view's."""
        body = outcomes.body(reply)
        super().__init__(body, status=outcomes.http_status(reply))
        self._has_been_logged = logged_here
        #: The body's ``status``: what the request came to, for traces and metrics.
        self.outcome = body["status"]
        for header, value in outcomes.headers(reply).items():
            self[header] = value


def answer(outcome: Outcome) -> Answer:
    """The HTTP answer for a processing outcome."""
    if isinstance(outcome, Busy):
        logger.info(
            "Stripe event %s is held by another instance; answered busy.",
            outcome.event_id,
            extra=fields(event_id=outcome.event_id, outcome="busy"),
        )
    return Answer(outcome)


def rejected(code: str, *, status: int) -> Answer:
    announce(event_rejected, StripeEvent, code=code)
    return Answer(Rejected(code, status))


def _ignored(ignored: EventIgnored, endpoint: endpoints.Endpoint) -> Answer:
    # Not an error Stripe should retry: a live Connect endpoint receives its accounts' test
    # events too, and a 4xx would be retried for three days, then have the endpoint disabled.
    event = ignored.event
    logger.info(
        "Ignored Stripe event %s: a %s-mode event on an endpoint for %s-mode events.",
        event.id,
        "live" if event.livemode else "test",
        "live" if endpoint.livemode else "test",
        extra=fields(
            event_id=event.id, event_type=event.type, outcome="ignored", endpoint=endpoint.name or None
        ),
    )
    return Answer(Ignored(event.id, ignored.reason))


def _unavailable(event_id: str) -> Answer:
    return Answer(Unavailable(event_id, app_settings.RETRY_AFTER_MAX_SECONDS))
