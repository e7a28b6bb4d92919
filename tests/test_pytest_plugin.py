"""The fixtures users get from the ``pytest11`` entry point: in this suite, and in a fresh project."""

from __future__ import annotations

import pytest

from stripe_idempotency.models import StripeEvent
from stripe_idempotency.pytest_plugin import FALLBACK_SECRET
from tests.settings import WEBHOOK_SECRET
from tests.testapp.models import Effect

pytestmark = pytest.mark.usefixtures("record_effects")


def test_stripe_webhook_delivers_once_and_answers_duplicates(stripe_webhook, stripe_event):
    event = stripe_event("checkout.session.completed", data={"id": "cs_test_plugin"})
    assert stripe_webhook.secret == WEBHOOK_SECRET
    assert stripe_webhook.deliver(event).json() == {"status": "processed", "event_id": event["id"]}
    assert stripe_webhook.deliver(event).json() == {"status": "duplicate", "event_id": event["id"]}
    assert Effect.objects.filter(event_id=event["id"]).count() == 2  # "received" and "typed", once each
    assert StripeEvent.objects.get(event_id=event["id"]).payload["data"]["object"]["id"] == "cs_test_plugin"


def test_send_builds_the_event(stripe_webhook):
    response = stripe_webhook.send("invoice.paid", data={"id": "in_1"}, livemode=True)
    stored = StripeEvent.objects.get(event_id=response.json()["event_id"])
    assert (stored.type, stored.livemode) == ("invoice.paid", True)
    assert stored.payload["data"]["object"]["id"] == "in_1"
    assert stored.payload["data"]["object"]["object"] == "invoice"


def test_a_wrong_secret_is_refused(stripe_webhook, stripe_event):
    response = stripe_webhook.deliver(stripe_event(), secret="whsec_someone_else")
    assert response.status_code == 400
    assert StripeEvent.objects.count() == 0


@pytest.fixture
def no_secrets(settings):
    settings.STRIPE_IDEMPOTENCY = {"INSTANCE_ID": "test-instance"}


@pytest.mark.usefixtures("no_secrets")
def test_without_configured_secrets_it_signs_with_its_own(stripe_webhook, settings):
    assert stripe_webhook.secret == FALLBACK_SECRET
    assert settings.STRIPE_IDEMPOTENCY["WEBHOOK_SECRETS"] == [FALLBACK_SECRET]
    assert stripe_webhook.send("charge.refunded").json()["status"] == "processed"


PROJECT_SETTINGS = """
SECRET_KEY = "plugin-check"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "stripe_idempotency", "orders"]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3",
                         "OPTIONS": {"transaction_mode": "IMMEDIATE"}}}
ROOT_URLCONF = "urls"
USE_TZ = True
STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": ["whsec_users_own"]}
"""

PROJECT_URLS = """
from django.urls import include, path

urlpatterns = [path("stripe/", include("stripe_idempotency.urls"))]
"""

PROJECT_RECEIVERS = """
from django.apps import AppConfig


class OrdersConfig(AppConfig):
    name = "orders"

    def ready(self):
        from orders import PAID
        from stripe_idempotency.signals import signal_for

        signal_for("checkout.session.completed").connect(
            lambda sender, event, **kwargs: PAID.append(event.payload["data"]["object"]["id"]), weak=False
        )
"""

PROJECT_TEST = """
import orders


def test_paid_checkout_is_handled_once(stripe_webhook, stripe_event):
    event = stripe_event("checkout.session.completed", data={"id": "cs_1"})
    assert stripe_webhook.deliver(event).json()["status"] == "processed"
    assert stripe_webhook.deliver(event).json()["status"] == "duplicate"
    assert orders.PAID == ["cs_1"]
    assert stripe_webhook.secret == "whsec_users_own"
"""


@pytest.fixture
def users_project(pytester):
    pytester.makepyfile(settings=PROJECT_SETTINGS, urls=PROJECT_URLS)
    orders = pytester.mkpydir("orders")
    orders.joinpath("__init__.py").write_text("PAID = []\n")
    orders.joinpath("apps.py").write_text(PROJECT_RECEIVERS)
    pytester.makepyfile(test_orders=PROJECT_TEST)
    pytester.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = settings\npythonpath = .\n")
    return pytester


def test_a_fresh_project_gets_the_fixtures_from_the_entry_point(users_project):
    # No conftest, no pytest_plugins: the installed package's entry point provides them.
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "--ds", "settings")
    result.assert_outcomes(passed=1)


def test_the_fixtures_come_from_the_stripe_idempotency_plugin(users_project):
    result = users_project.runpytest_subprocess(
        "-p", "no:cacheprovider", "--ds", "settings", "-p", "no:stripe_idempotency"
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'stripe_webhook' not found*"])


def test_without_pytest_django_the_fixture_names_what_to_install(users_project):
    result = users_project.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:django")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            # (fnmatch reads [testing] as a character class: [[] is a literal bracket)
            "*The stripe_webhook fixture of stripe_idempotency needs pytest-django*"
            "pip install 'django-stripe-idempotency[[]testing]'*"
        ]
    )
    result.stdout.no_fnmatch_line("*fixture 'client' not found*")
