"""pytest fixtures for projects that receive Stripe events with this app.

Installed with the package and registered through the ``pytest11`` entry point,
so a project that uses pytest-django has them without configuration (the ``testing`` extra
installs pytest-django and factory-boy; a fixture that needs one says so by name)::

    def test_paid_checkout_ships_the_order(stripe_webhook):
        response = stripe_webhook.send("checkout.session.completed", data={"id": "cs_test_1"})
        assert response.json()["status"] == "processed"

``stripe_event`` builds an event dict; ``stripe_webhook`` signs and posts
events to the real webhook view through Django's test client, with the
database in autocommit mode as the view requires; ``stripe_event_factory``
and ``ledger_entry_factory`` store rows directly (factory-boy). Nothing here
touches the network.

Django and the app are imported when a fixture is first used, not when pytest
starts: the plugin stays harmless in a test run that never asks for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from django.test import Client
    from django.test.client import _MonkeyPatchedWSGIResponse as TestResponse

#: The secret ``stripe_webhook`` signs with when the settings list none.
FALLBACK_SECRET = "whsec_pytest_stripe_idempotency"


class StripeWebhook:
    """Posts signed events to the webhook view, as Stripe would.

    ``secret`` is the one it signs with: the first of the configured
    ``WEBHOOK_SECRETS``, or :data:`FALLBACK_SECRET` (added to the settings for
    the test) when there are none.
    """

    def __init__(self, client: Client, secret: str) -> None:
        self.client = client
        self.secret = secret

    def deliver(
        self,
        event: Mapping[str, Any] | str | bytes,
        *,
        secret: str | Iterable[str] | None = None,
        **kwargs: Any,
    ) -> TestResponse:
        """Sign ``event`` (a dict, or a raw body) and post it.

        Keyword arguments are those of :func:`stripe_idempotency.testing.deliver`.
        """
        # Imported on first use, never when pytest starts (see the module's docstring).
        from stripe_idempotency.testing import deliver

        return deliver(self.client, event, secret=self.secret if secret is None else secret, **kwargs)

    def send(self, type: str, *, data: Mapping[str, Any] | None = None, **fields: Any) -> TestResponse:
        """Build an event of ``type`` with ``data`` as its ``data.object``, and deliver it."""
        # Imported on first use, never when pytest starts (see the module's docstring).
        from stripe_idempotency.testing import build_event

        return self.deliver(build_event(type, data=data, **fields))


@pytest.fixture
def stripe_event() -> Callable[..., dict[str, Any]]:
    """:func:`stripe_idempotency.testing.build_event`: ``stripe_event("charge.refunded", data={...})``."""
    # Imported on first use, never when pytest starts (see the module's docstring).
    from stripe_idempotency.testing import build_event

    return build_event


#: What the fixtures that reach the database need, and how to get it.
NEEDS_PYTEST_DJANGO = (
    "The {fixture} fixture of stripe_idempotency needs pytest-django (its client, settings and "
    "database fixtures): pip install 'django-stripe-idempotency[testing]', and set "
    "DJANGO_SETTINGS_MODULE (or --ds)."
)
NEEDS_FACTORY_BOY = (
    "The {fixture} fixture of stripe_idempotency needs factory-boy: "
    "pip install 'django-stripe-idempotency[testing]'."
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Without pytest-django a test asking for stripe_webhook would fail with "fixture 'client'
    # not found", which names neither this plugin nor what to install: say both, first.
    if "stripe_webhook" in getattr(item, "fixturenames", ()) and not item.config.pluginmanager.hasplugin(
        "django"
    ):
        pytest.fail(NEEDS_PYTEST_DJANGO.format(fixture="stripe_webhook"), pytrace=False)


@pytest.fixture
def stripe_webhook(client: Client, transactional_db: None, settings: Any) -> StripeWebhook:
    """A :class:`StripeWebhook` on pytest-django's ``client``, with a transactional database.

    The webhook view commits its claim before the receivers run, which the
    default test transaction cannot allow: this fixture asks for
    ``transactional_db`` itself, so a test needs no ``django_db`` mark.
    """
    # Imported on first use, never when pytest starts (see the module's docstring).
    from stripe_idempotency.conf import app_settings

    secrets = list(app_settings.WEBHOOK_SECRETS)
    if not secrets:
        settings.STRIPE_IDEMPOTENCY = {
            **getattr(settings, "STRIPE_IDEMPOTENCY", {}),
            "WEBHOOK_SECRETS": [FALLBACK_SECRET],
        }
        secrets = [FALLBACK_SECRET]
    return StripeWebhook(client, secrets[0])


@pytest.fixture
def stripe_event_factory() -> type:
    """:class:`stripe_idempotency.factories.StripeEventFactory` (needs factory-boy): stored events in
    any state, ``stripe_event_factory(failed=True)``. Use with a ``django_db`` mark."""
    return _factory("StripeEventFactory", "stripe_event_factory")


@pytest.fixture
def ledger_entry_factory() -> type:
    """:class:`stripe_idempotency.factories.LedgerEntryFactory` (needs factory-boy): entries written
    through the ledger, ``ledger_entry_factory(account="cus_1", amount=500)``."""
    return _factory("LedgerEntryFactory", "ledger_entry_factory")


def _factory(name: str, fixture: str) -> type:
    try:
        import factory  # noqa: F401
    except ImportError:
        pytest.fail(NEEDS_FACTORY_BOY.format(fixture=fixture), pytrace=False)
    # Imported on first use, never when pytest starts (see the module's docstring).
    from stripe_idempotency import factories

    return getattr(factories, name)  # type: ignore[no-any-return]
