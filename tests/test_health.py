"""The health view: the status figures as JSON for monitors, behind a token or a staff login."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from stripe_idempotency.factories import StripeEventFactory
from stripe_idempotency.models import EventEffect, StripeEvent
from tests.concurrency import database_unreachable
from tests.settings import WEBHOOK_SECRET

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "health-token-for-the-tests-0123456789abcdef"
TOKENS = override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "HEALTH_TOKENS": [TOKEN]})


def get(query: str = "", *, token: str | None = TOKEN, client: Client | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return (client or Client()).get(reverse("stripe_health") + query, headers=headers)


@pytest.fixture
def pipeline():
    now = timezone.now()
    StripeEventFactory(event_id="evt_waiting", received_at=now - timedelta(hours=2))
    StripeEventFactory(dead=True)
    StripeEventFactory(
        received_at=now - timedelta(seconds=31),
        processed_at=now - timedelta(seconds=30),
        created=now - timedelta(seconds=32),
    )


@override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "HEALTH_TOKENS": TOKEN})
def test_tokens_its_declaration_refuses_are_a_503_json_that_shows_nothing(pipeline, caplog):
    # A lone string is no list of tokens: read as one, each of its characters would be a token.
    with caplog.at_level(logging.ERROR, logger="stripe_idempotency"):
        response = get(token=TOKEN[0])
    assert (response.status_code, response.json()) == (503, {"status": "unavailable"})
    assert "E018" in caplog.text


@TOKENS
def test_with_the_token_the_figures_are_answered_as_json(pipeline):
    response = get()
    body = response.json()
    assert (response.status_code, body["status"], body["alerts"]) == (200, "ok", [])
    assert body["counts"] == {
        "pending": 1,
        "claimed": 0,
        "stale": 0,
        "failed": 0,
        "dead": 1,
        "processed": 1,
    }
    assert body["oldest_unprocessed_event_id"] == "evt_waiting"
    assert 7190 < body["oldest_unprocessed_seconds"] < 7300
    assert body["lag_seconds"]["count"] == 1
    assert "no-cache" in response["Cache-Control"]


@TOKENS
def test_past_a_limit_in_the_query_the_answer_is_503_with_the_alerts(pipeline):
    response = get("?max_oldest_unprocessed=15m&max_dead=0&max_failed=0")
    assert response.status_code == 503
    assert response.json()["status"] == "alert"
    assert response.json()["alerts"] == [
        "the oldest unprocessed event has waited 2h00m (limit 15m)",
        "1 dead events (limit 0)",
    ]
    assert get("?max_oldest_unprocessed=3h&max_dead=1&max_lag_p99=1m").status_code == 200


@TOKENS
def test_dead_effects_and_an_old_pending_effect_are_alerts_too(pipeline):
    event = StripeEvent.objects.filter(processed_at__isnull=False).first()
    for key, fields in (("0", {"attempts": 3, "claimed_at": timezone.now()}), ("1", {})):
        EventEffect.objects.create(
            event=event,
            name="shop.mail",
            key=key,
            idempotency_key=f"{event.event_id}:shop.mail:{key}",
            max_attempts=3,
            scheduled_at=timezone.now() - timedelta(hours=1),
            **fields,
        )
    response = get("?max_dead_effects=0&max_oldest_pending_effect=15m")
    assert response.status_code == 503
    assert response.json()["alerts"] == [
        "1 dead effects (limit 0)",
        "the oldest pending effect has waited 1h00m (limit 15m)",
    ]
    assert response.json()["effects"]["counts"]["pending"] == 1
    assert get("?max_dead_effects=1&max_oldest_pending_effect=2h").status_code == 200


@TOKENS
def test_the_window_bounds_the_lag(pipeline):
    assert get("?window=10s").json()["lag_seconds"] == {"count": 0}
    assert get("?window=1m").json()["lag_seconds"]["count"] == 1


@TOKENS
@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("?max_dead=-1", "max_dead: '-1' is not a whole number from 0 to 1000000000000."),
        # Digits str.isdigit() takes and int() refuses, or reads as another number.
        ("?max_dead=%C2%B2", "max_dead: '²' is not a whole number"),
        ("?max_failed=%D9%A3", "max_failed: '٣' is not a whole number"),
        ("?max_dead=" + "9" * 5000, "max_dead: '9999"),
        ("?window=soon", "window: 'soon' is not a duration"),
        ("?window=99999999999d", "window: '99999999999d' is longer than 3650d, the longest accepted."),
        ("?window=3651d", "window: '3651d' is longer than 3650d"),
        ("?max_lag_p99=...", "max_lag_p99: '...' is not a duration"),
        ("?max_oldest_unprocessed=1e9", "max_oldest_unprocessed: '1e9' is not a duration"),
        ("?max_lag_p99=%C2%B9s", "max_lag_p99: '¹s' is not a duration"),
        ("?max_deads=0", "Unknown parameters: max_deads."),
        ("?max_dead_effects=%C2%B2", "max_dead_effects: '²' is not a whole number"),
        ("?max_oldest_pending_effect=soon", "max_oldest_pending_effect: 'soon' is not a duration"),
    ],
)
def test_a_bad_parameter_is_a_400_that_says_which(query, detail):
    response = get(query)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_parameter"
    assert response.json()["detail"].startswith(detail)


@TOKENS
def test_no_credentials_is_401_and_shows_nothing(pipeline):
    response = get(token=None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="stripe_idempotency"'
    assert response.json() == {"status": "rejected", "error": "authentication_required"}


@TOKENS
@pytest.mark.parametrize("token", ["wrong", TOKEN[:-1], TOKEN + "x", ""])
def test_a_wrong_token_is_403(token, pipeline):
    response = get(token=token)
    assert response.status_code == 403 if token else 401
    assert "counts" not in response.json()


@TOKENS
def test_refusals_are_logged_by_django_as_any_view_s(caplog):
    # The webhook logs its answers itself; the health view does not, so a monitor probing with a
    # wrong token shows in django.request's log as it would on any view.
    caplog.set_level(logging.WARNING, logger="django.request")
    assert get(token="wrong").status_code == 403
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("django.request", "WARNING", "Forbidden: /stripe/health/")
    ]


def test_without_tokens_configured_no_token_opens_it(pipeline):
    assert get(token="anything").status_code == 403
    assert get(token="").status_code == 401


@TOKENS
def test_staff_with_the_view_permission_may_read_it_logged_in(pipeline):
    staff = User.objects.create_user("operator", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert get(token=None, client=client).status_code == 403  # staff, without the permission
    staff.user_permissions.add(Permission.objects.get(codename="view_stripeevent"))
    client.force_login(User.objects.get(pk=staff.pk))  # a fresh user: permissions are cached
    assert get(token=None, client=client).status_code == 200
    member = User.objects.create_user("member")
    member.user_permissions.add(Permission.objects.get(codename="view_stripeevent"))
    client.force_login(member)
    assert get(token=None, client=client).status_code == 403  # not staff


@TOKENS
def test_the_database_down_is_a_503_unavailable():
    with database_unreachable():
        response = get()
    assert (response.status_code, response.json()) == (503, {"status": "unavailable"})


@TOKENS
def test_it_costs_the_status_queries_whatever_the_tokens(pipeline):
    with CaptureQueriesContext(connection) as queries:
        assert get().status_code == 200
    # States, processed count, oldest, the window's counts, each lag's percentiles, the effects
    # by state and the oldest effect still to run.
    assert len(queries) == 8


@TOKENS
def test_only_get_and_head(pipeline):
    assert (
        Client().post(reverse("stripe_health"), headers={"Authorization": f"Bearer {TOKEN}"}).status_code
        == 405
    )
    assert (
        Client().head(reverse("stripe_health"), headers={"Authorization": f"Bearer {TOKEN}"}).status_code
        == 200
    )
