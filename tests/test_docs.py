"""Docs are code: every Python snippet in the README and docs/ runs here, as pasted.

Each snippet is taken from the Markdown at test time, so an edit to a page is
an edit to its test. A new snippet without a runner below fails
``test_every_snippet_has_a_runner``: nothing a user would paste goes unrun.
The names a snippet takes from the reader's project (``Order``, ``send_receipt``,
``warehouse``...) are given here, as the shop of ``tests.testapp``.
"""

from __future__ import annotations

import importlib
import io
import re
import tempfile
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import stripe
from django.core import mail
from django.core.management import call_command
from django.db import IntegrityError, transaction
from django.dispatch import receiver
from django.test import Client, override_settings
from django.urls import reverse

from stripe_idempotency.asgi import WebhookBodyLimit
from stripe_idempotency.checks import check_settings
from stripe_idempotency.fetching import client
from stripe_idempotency.log import fields
from stripe_idempotency.models import EventEffect, LedgerEntry, StripeEvent
from stripe_idempotency.pytest_plugin import StripeWebhook
from stripe_idempotency.signals import event_dead, event_failed, event_rejected, signal_for
from stripe_idempotency.testing import build_event, build_thin_event, deliver
from tests.servers import LocalStripe
from tests.settings import WEBHOOK_SECRET
from tests.testapp.models import Coupon, Order, Shipment, Subscription

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))]


def snippets(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.DOTALL)


class Shop:
    """The reader's project, as the snippets assume it: models, tasks, a warehouse."""

    def __init__(self) -> None:
        self.receipts: list[str] = []
        self.shipped: list[str] = []
        self.receivers: list[tuple[Any, Callable[..., Any]]] = []

    def namespace(self, **extra: Any) -> dict[str, Any]:
        shop = self

        def send_receipt(session_id: str) -> None:
            shop.receipts.append(session_id)

        send_receipt.delay = send_receipt  # type: ignore[attr-defined]  # a task queue's spelling
        warehouse = types.SimpleNamespace(ship=lambda session_id: shop.shipped.append(session_id))
        return {
            "Order": Order,
            "Shipment": Shipment,
            "Coupon": Coupon,
            "LedgerEntry": LedgerEntry,
            "send_receipt": send_receipt,
            "warehouse": warehouse,
            "receiver": receiver,
            "signal_for": signal_for,
            "transaction": transaction,
            "IntegrityError": IntegrityError,
            **extra,
        }

    def run(self, source: str, **extra: Any) -> dict[str, Any]:
        namespace = self.namespace(**extra)
        exec(compile(source, "<snippet>", "exec"), namespace)
        return namespace

    def connect(self, signal: Any, func: Callable[..., Any]) -> None:
        signal.connect(func, weak=False)
        self.receivers.append((signal, func))

    def close(self) -> None:
        for signal, func in self.receivers:
            signal.disconnect(func)


@pytest.fixture
def shop():
    shop = Shop()
    yield shop
    shop.close()


def keep(shop: Shop, namespace: dict[str, Any], name: str, *types_: str) -> None:
    """Connect the snippet's receiver strongly (the snippet's @receiver holds it weakly) and
    have it disconnected after the test."""
    for event_type in types_:
        signal_for(event_type).disconnect(namespace[name])
        shop.connect(signal_for(event_type), namespace[name])


# -- runners, one per snippet ---------------------------------------------------------------


def settings_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    # The variable unset (a fresh checkout, a CI job, any other manage.py command): the
    # settings load, and the check says what is missing.
    monkeypatch.delenv("STRIPE_WEBHOOK_SECRET", raising=False)
    unset = shop.run(code, INSTALLED_APPS=["django.contrib.contenttypes"])["STRIPE_IDEMPOTENCY"]
    with override_settings(STRIPE_IDEMPOTENCY=unset):
        assert [m.id for m in check_settings()] == ["stripe_idempotency.E001"]
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_from_the_environment")
    namespace = shop.run(code, INSTALLED_APPS=["django.contrib.contenttypes"])
    assert namespace["INSTALLED_APPS"][-1] == "stripe_idempotency"
    with override_settings(STRIPE_IDEMPOTENCY=namespace["STRIPE_IDEMPOTENCY"]):
        assert check_settings() == []
    assert namespace["STRIPE_IDEMPOTENCY"]["WEBHOOK_SECRETS"] == ["whsec_from_the_environment"]
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_new whsec_old")  # while rolling the secret
    rolling = shop.run(code, INSTALLED_APPS=[])["STRIPE_IDEMPOTENCY"]
    assert rolling["WEBHOOK_SECRETS"] == ["whsec_new", "whsec_old"]


def table_queue_settings_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)
    config = {**namespace["STRIPE_IDEMPOTENCY"], "WEBHOOK_SECRETS": [WEBHOOK_SECRET]}
    monkeypatch.setattr("stripe_idempotency.queueing.enqueue", lambda *args: pytest.fail("queued"))
    with override_settings(STRIPE_IDEMPOTENCY=config):
        assert check_settings() == []
        answer = deliver(Client(), build_event(id="evt_table_queue"))
        assert answer.json()["status"] == "accepted"
        assert StripeEvent.objects.get().processed_at is None  # waiting in the table
        out = io.StringIO()
        call_command("process_stripe_events", stdout=out)  # the console snippet, without --follow
    assert out.getvalue().startswith("Done: 1 event run (1 processed")
    assert StripeEvent.objects.get().processed_at is not None


def deferred_settings_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)
    assert namespace["STRIPE_IDEMPOTENCY"]["PROCESSING"] == "deferred"
    assert namespace["TASKS"]["default"]["BACKEND"] == "django_tasks_db.DatabaseBackend"
    with override_settings(STRIPE_IDEMPOTENCY=namespace["STRIPE_IDEMPOTENCY"]):
        assert check_settings() == []  # the Tasks framework is installed here


def celery_settings_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)
    with override_settings(STRIPE_IDEMPOTENCY=namespace["STRIPE_IDEMPOTENCY"]):
        assert check_settings() == []
    # What the workers import defines the task the web process sends.
    (module,) = namespace["CELERY_IMPORTS"]
    task = importlib.import_module(module).process_stripe_event
    assert task.name == "stripe_idempotency.process_stripe_event"
    assert (task.acks_late, task.reject_on_worker_lost) == (True, True)


def celery_app_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    app = shop.run(code)["app"]
    assert app.main == "proj"
    with override_settings(CELERY_TASK_PUBLISH_RETRY=False):
        assert app.conf.task_publish_retry is False  # the CELERY_ settings are read


def monitoring_signals(shop: Shop, code: str, monkeypatch: Any) -> None:
    counted: list[tuple[str, dict[str, str]]] = []
    paged: list[str] = []
    metrics = types.SimpleNamespace(increment=lambda name, tags: counted.append((name, tags)))
    alerts = types.SimpleNamespace(page=paged.append)
    namespace = shop.run(code, metrics=metrics, alerts=alerts)
    for signal, name in [
        (event_failed, "count_failure"),
        (event_dead, "page_someone"),
        (event_rejected, "count_rejection"),
    ]:
        signal.disconnect(namespace[name])
        shop.connect(signal, namespace[name])

    def fail(sender, event, **kwargs):
        raise RuntimeError("down")

    shop.connect(signal_for("invoice.paid"), fail)
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "MAX_ATTEMPTS": 1}):
        deliver(Client(), build_event("invoice.paid", id="evt_monitored"))
    Client().post("/stripe/webhook/", b"{}", content_type="application/json")
    assert counted == [
        ("stripe.webhook.failed", {"type": "invoice.paid"}),
        ("stripe.webhook.rejected", {"code": "missing_signature"}),
    ]
    assert paged == ["Stripe event evt_monitored is dead after 1 attempts"]


def monitoring_otel_setup(shop: Shop, code: str, monkeypatch: Any) -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    # A process sets its providers once; the pasted setup's are kept here, not installed.
    installed: dict[str, Any] = {}
    monkeypatch.setattr(trace, "set_tracer_provider", lambda p: installed.setdefault("tracer", p))
    monkeypatch.setattr(metrics, "set_meter_provider", lambda p: installed.setdefault("meter", p))
    shop.run(code)
    tracer_provider, meter_provider = installed["tracer"], installed["meter"]
    assert isinstance(tracer_provider, TracerProvider)
    assert isinstance(meter_provider, MeterProvider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


def monitoring_health_urls(shop: Shop, code: str, monkeypatch: Any) -> None:
    urlconf = types.ModuleType("pasted_urls")
    urlconf.urlpatterns = shop.run(code)["urlpatterns"]  # type: ignore[attr-defined]
    token = "a-token-for-the-monitor-0123456789abcdef"
    with override_settings(
        ROOT_URLCONF=urlconf,
        STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "HEALTH_TOKENS": [token]},
    ):
        assert reverse("stripe_health") == "/stripe/health/"
        response = Client().get("/stripe/health/?max_dead=0", headers={"Authorization": f"Bearer {token}"})
        assert (response.status_code, response.json()["status"]) == (200, "ok")
        assert Client().get("/stripe/health/").status_code == 401
        assert deliver(Client(), build_event())["Content-Type"] == "application/json"


def endpoints_settings(shop: Shop, code: str, monkeypatch: Any) -> None:
    secrets = {"STRIPE_WEBHOOK_SECRET": "whsec_platform", "STRIPE_CONNECT_WEBHOOK_SECRET": "whsec_connect",
               "STRIPE_THIN_WEBHOOK_SECRET": "whsec_thin"}  # fmt: skip
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    configured = shop.run(code)["STRIPE_IDEMPOTENCY"]
    with override_settings(STRIPE_IDEMPOTENCY=configured):
        assert check_settings() == []
        live = build_event(livemode=True)
        assert deliver(Client(), live, endpoint="connect").json()["status"] == "processed"
        assert (
            deliver(Client(), build_event(livemode=False), endpoint="connect").json()["status"] == "ignored"
        )
        assert deliver(Client(), build_thin_event(), endpoint="thin").json()["status"] == "processed"
        assert deliver(Client(), build_event(), endpoint="thin").json()["error"] == "payload_not_accepted"


def endpoints_connect_receiver(shop: Shop, code: str, monkeypatch: Any) -> None:
    synced: list[tuple[str, dict[str, str]]] = []
    subscriptions = types.SimpleNamespace(
        update_or_create=lambda stripe_id, defaults: synced.append((stripe_id, defaults))
    )
    namespace = shop.run(code, Subscription=types.SimpleNamespace(objects=subscriptions))
    keep(shop, namespace, "sync_subscription", "customer.subscription.updated")
    subscription = {"id": "sub_1", "status": "active"}
    deliver(Client(), build_event("customer.subscription.updated", data=subscription, account="acct_1C"))
    deliver(Client(), build_event("customer.subscription.updated", data=subscription))  # the platform's
    assert synced == [("sub_1", {"account": "acct_1C", "status": "active"})]


def ledger_connected_accounts(shop: Shop, code: str, monkeypatch: Any) -> None:
    keep(shop, shop.run(code), "record_payout", "payout.paid")
    payout = {"id": "po_1", "amount": 700, "currency": "usd"}
    deliver(Client(), build_event("payout.paid", data=payout, account="acct_1C"))
    deliver(Client(), build_event("payout.paid", data=payout, account="acct_2C"))
    assert LedgerEntry.objects.balance(account="acct_1C:payouts", currency="usd") == -700
    assert LedgerEntry.objects.balance(account="acct_2C:payouts", currency="usd") == -700


def thin_receiver(shop: Shop, code: str, monkeypatch: Any) -> None:
    from tests.test_thin_events import FakeStripeAPI, serving

    emails: list[tuple[str, str]] = []
    customers = types.SimpleNamespace(
        filter=lambda stripe_id: types.SimpleNamespace(update=lambda email: emails.append((stripe_id, email)))
    )
    keep(shop, shop.run(code, Customer=types.SimpleNamespace(objects=customers)), "refresh_customer",
         "v1.customer.updated")  # fmt: skip
    with (
        serving(FakeStripeAPI) as base,
        override_settings(
            STRIPE_IDEMPOTENCY={
                "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
                "API_KEY": "rk_test_docs",
                "API_BASE": base,
            }
        ),
    ):
        assert deliver(Client(), build_thin_event("v1.customer.updated")).json()["status"] == "processed"
    assert emails == [("cus_test_1", "b@example.com")]


def urls_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code, urlpatterns=[])
    urlconf = types.ModuleType("pasted_urls")
    urlconf.urlpatterns = namespace["urlpatterns"]  # type: ignore[attr-defined]
    with override_settings(ROOT_URLCONF=urlconf):
        assert reverse("stripe_idempotency:webhook") == "/stripe/webhook/"


def deliver_checkout(session: dict[str, Any], event_type: str = "checkout.session.completed") -> dict:
    return deliver(Client(), build_event(event_type, data=session)).json()


def readme_receiver(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)
    keep(shop, namespace, "fulfil", "checkout.session.completed", "checkout.session.async_payment_succeeded")
    Order.objects.create(checkout_session="cs_paid")
    Order.objects.create(checkout_session="cs_later")
    assert deliver_checkout({"id": "cs_paid", "payment_status": "paid"})["status"] == "processed"
    assert deliver_checkout({"id": "cs_later", "payment_status": "unpaid"})["status"] == "processed"
    assert list(Order.objects.filter(paid=True).values_list("checkout_session", flat=True)) == ["cs_paid"]
    later = {"id": "cs_later", "payment_status": "paid"}
    assert deliver_checkout(later, "checkout.session.async_payment_succeeded")["status"] == "processed"
    assert Order.objects.filter(paid=True).count() == 2
    assert shop.receipts == ["cs_paid", "cs_later"]


def effects_page_receipt(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code, __name__="shop.receivers")
    keep(shop, namespace, "fulfil", "checkout.session.completed")
    order = Order.objects.create(checkout_session="cs_mail")
    mail.outbox.clear()
    assert deliver_checkout({"id": "cs_mail"})["status"] == "processed"  # returns once effects ran
    effect = EventEffect.objects.get()
    assert effect.name == "shop.receivers.send_receipt"
    assert effect.completed_at is not None
    assert [(m.to, m.subject, m.extra_headers) for m in mail.outbox] == [
        (["customer@example.com"], f"Your order {order.pk}", {"Idempotency-Key": effect.idempotency_key})
    ]


def effects_page_stripe_api(shop: Shop, code: str, monkeypatch: Any) -> None:
    # Against localstripe, a Stripe that is not ours: the customer exists there, its
    # customer.created arrives here, and the effect changes the customer there.
    sent_keys: list[str | None] = []
    requestor = type(stripe.StripeClient("sk_test_local")._requestor)
    real_request = requestor.request

    def recording(
        self: Any, method: str, url: str, params: Any = None, options: Any = None, **kw: Any
    ) -> Any:
        if method == "post" and "/customers/" in url:  # an update, not the creation
            sent_keys.append((options or {}).get("idempotency_key"))
        return real_request(self, method, url, params, options, **kw)

    log_dir = tempfile.TemporaryDirectory()
    localstripe = LocalStripe(Path(log_dir.name))
    try:
        page = {"WEBHOOK_SECRETS": [WEBHOOK_SECRET], "API_KEY": "sk_test_local", "API_BASE": localstripe.url}
        with override_settings(STRIPE_IDEMPOTENCY=page):
            monkeypatch.setattr(requestor, "request", recording)
            namespace = shop.run(code, __name__="shop.receivers")
            keep(shop, namespace, "welcome", "customer.created")
            customer = client().v1.customers.create({"email": "ada@example.com"})
            event = build_event("customer.created", data={"id": customer.id, "email": "ada@example.com"})
            assert deliver(Client(), event).json()["status"] == "processed"  # returns once effects ran
            assert client().v1.customers.retrieve(customer.id).metadata["welcomed"] == "yes"
    finally:
        localstripe.stop()
        log_dir.cleanup()
    effect = EventEffect.objects.get()
    assert effect.completed_at is not None
    assert sent_keys == [effect.idempotency_key]


def receivers_page_effect(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code, __name__="shop.receivers")
    keep(shop, namespace, "fulfil", "checkout.session.completed")
    Order.objects.create(checkout_session="cs_ship")
    assert deliver_checkout({"id": "cs_ship"})["status"] == "processed"
    assert Order.objects.get().paid
    assert shop.shipped == ["cs_ship"]
    assert EventEffect.objects.get().idempotency_key.endswith(":shop.receivers.ship:0")


def simple_receiver(name: str) -> Callable[[Shop, str, Any], None]:
    def run(shop: Shop, code: str, monkeypatch: Any) -> None:
        namespace = shop.run(code)
        keep(shop, namespace, name, "checkout.session.completed")
        Order.objects.create(checkout_session="cs_1")
        assert deliver_checkout({"id": "cs_1"})["status"] == "processed"
        assert Order.objects.get().paid
        assert shop.receipts in (["cs_1"], [Order.objects.get().pk])

    return run


def readme_ledger(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)  # as pasted: every name it uses, it defines
    assert namespace["created"] is True
    assert LedgerEntry.objects.balance(account="cus_123", currency="usd") == 1000


def ledger_page_first(shop: Shop, code: str, monkeypatch: Any) -> None:
    shop.run(code)
    assert LedgerEntry.objects.balance(account="cus_123", currency="usd") == 1000


def ledger_scoped_references(shop: Shop, code: str, monkeypatch: Any) -> None:
    shop.run(code)
    assert LedgerEntry.objects.filter(reference="batch_7").count() == 2


def subscription_update(status: str, created: int) -> dict[str, Any]:
    subscription = {"id": "sub_1", "object": "subscription", "status": status}
    return build_event("customer.subscription.updated", data=subscription, created=created)


def ordering_check_in_the_receiver(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code, Subscription=Subscription)
    keep(shop, namespace, "sync_subscription", "customer.subscription.updated")
    assert deliver(Client(), subscription_update("active", 1_790_000_100)).json()["status"] == "processed"
    assert deliver(Client(), subscription_update("incomplete", 1_790_000_000)).json()["status"] == "processed"
    assert Subscription.objects.get(stripe_id="sub_1").status == "active"


def ordering_settings(shop: Shop, code: str, monkeypatch: Any) -> None:
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)
    configured = shop.run(code)["STRIPE_IDEMPOTENCY"]
    with override_settings(STRIPE_IDEMPOTENCY=configured):
        assert check_settings() == []
        assert deliver(Client(), subscription_update("active", 1_790_000_100)).json()["status"] == "processed"
        late = deliver(Client(), subscription_update("incomplete", 1_790_000_000)).json()
        assert late["status"] == "superseded"


def ordering_refund_waits(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)
    keep(shop, namespace, "record_refund", "charge.refunded")

    def refunded(amount_refunded: int, **charge: Any) -> dict[str, Any]:
        # As Stripe sends it: the whole charge, amount_refunded the refunds so far.
        fields = {"id": "ch_1", "customer": "cus_r", "amount": 1500, "amount_refunded": amount_refunded}
        return build_event("charge.refunded", data={**fields, "refunded": amount_refunded == 1500, **charge})

    first = refunded(500)
    assert deliver(Client(), first).status_code == 500  # before its payment: retried later
    LedgerEntry.objects.credit(
        account="cus_r", amount=1500, currency="usd", entry_type="charge", reference="ch_1"
    )
    assert deliver(Client(), first).json()["status"] == "processed"
    assert LedgerEntry.objects.balance(account="cus_r", currency="usd") == 1000
    # A second partial refund: the charge's total refunded grows; only the new part is debited.
    assert deliver(Client(), refunded(1200)).json()["status"] == "processed"
    assert LedgerEntry.objects.balance(account="cus_r", currency="usd") == 300
    # The first refund's event, delivered again late (another event id: a resend): nothing more.
    assert deliver(Client(), refunded(500)).json()["status"] == "processed"
    assert LedgerEntry.objects.balance(account="cus_r", currency="usd") == 300
    # A guest's charge (no customer) is refunded with nothing to debit.
    assert deliver(Client(), refunded(1500, id="ch_guest", customer=None)).json()["status"] == "processed"
    assert LedgerEntry.objects.filter(entry_type="refund").count() == 2


def ledger_receiver(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code)
    keep(
        shop,
        namespace,
        "credit_store",
        "checkout.session.completed",
        "checkout.session.async_payment_succeeded",
    )
    session = {"id": "cs_credit", "customer": "cus_9", "amount_total": 1500, "currency": "usd"}
    assert deliver_checkout(session)["status"] == "processed"
    assert deliver_checkout(session)["status"] == "processed"  # another event id, same session
    assert LedgerEntry.objects.balance(account="cus_9", currency="usd") == 1500
    # Shaped as Stripe sends them, each processed and none credited twice or wrongly:
    # a guest checkout (no customer), a session with no amount, a delayed payment (a bank
    # debit: unpaid at completion, paid by async_payment_succeeded).
    assert deliver_checkout({"id": "cs_guest", "customer": None})["status"] == "processed"
    nothing = {
        "id": "cs_free",
        "customer": "cus_9",
        "amount_total": None,
        "payment_status": "no_payment_required",
    }
    assert deliver_checkout(nothing)["status"] == "processed"
    later = {"id": "cs_later", "customer": "cus_9", "amount_total": 700, "payment_status": "unpaid"}
    assert deliver_checkout(later)["status"] == "processed"
    assert LedgerEntry.objects.balance(account="cus_9", currency="usd") == 1500
    paid = {**later, "payment_status": "paid"}
    assert deliver_checkout(paid, "checkout.session.async_payment_succeeded")["status"] == "processed"
    assert LedgerEntry.objects.balance(account="cus_9", currency="usd") == 2200
    assert LedgerEntry.objects.count() == 2


def coupon_in_a_savepoint(shop: Shop, code: str, monkeypatch: Any) -> None:
    order = Order.objects.create(checkout_session="cs_coupon")
    with transaction.atomic():
        shop.run(code, code="WELCOME", order=order)
        shop.run(code, code="WELCOME", order=order)  # exists: only the savepoint rolls back
        Shipment.objects.create(checkout_session="cs_coupon")  # the transaction is still usable
    assert (Coupon.objects.count(), Shipment.objects.count()) == (1, 1)


def asgi_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    assert isinstance(shop.run(code)["application"], WebhookBodyLimit)


def databases_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    namespace = shop.run(code, DATABASES={"default": {}})
    assert namespace["DATABASES"]["default"]["OPTIONS"]


def logging_snippet(shop: Shop, code: str, monkeypatch: Any) -> None:
    import logging.config

    names = ["stripe_idempotency", "django.request"]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    try:
        logging.config.dictConfig(shop.run(code)["LOGGING"])
        assert logging.getLogger("django.request").propagate is False
        [handler] = logging.getLogger("stripe_idempotency").handlers
        record = logging.LogRecord("stripe_idempotency", logging.ERROR, "", 1, "A receiver failed", (), None)
        record.__dict__.update(fields(event_id="evt_1", outcome="failed"))
        formatted = handler.format(record)
        assert formatted == "ERROR stripe_idempotency: A receiver failed event_id=evt_1 outcome=failed"
    finally:
        for logger, (handlers, level, propagate) in zip(loggers, saved, strict=True):
            logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def webhook(client: Client) -> StripeWebhook:
    return StripeWebhook(client, WEBHOOK_SECRET)


def readme_plugin_test(shop: Shop, code: str, monkeypatch: Any) -> None:
    # Against the README's own receiver: the test's event must carry what the receiver reads.
    keep(shop, shop.run(snippets("README.md")[2]), "fulfil", "checkout.session.completed")
    Order.objects.create(checkout_session="cs_test_1")
    shop.run(code)["test_fulfils_the_order"](webhook(Client()))
    assert Order.objects.get().paid


def quickstart_test(shop: Shop, code: str, monkeypatch: Any) -> None:
    receiver_code = snippets("docs/quickstart.md")[2]
    keep(shop, shop.run(receiver_code), "fulfil", "checkout.session.completed")
    shop.run(code)["test_paid_checkout_marks_the_order_paid"](webhook(Client()))


def page_testing_first(shop: Shop, code: str, monkeypatch: Any) -> None:
    def mark_paid(sender: Any, event: Any, **kwargs: Any) -> None:
        Order.objects.filter(checkout_session=event.payload["data"]["object"]["id"]).update(paid=True)

    shop.connect(signal_for("checkout.session.completed"), mark_paid)
    Order.objects.create(checkout_session="cs_test_1")
    shop.run(code)["test_paid_checkout_fulfils_the_order"](Client())


def page_testing_plugin(shop: Shop, code: str, monkeypatch: Any) -> None:
    def ship(sender: Any, event: Any, **kwargs: Any) -> None:
        Shipment.objects.create(checkout_session=event.payload["data"]["object"]["id"])

    def refund_before_payment(sender: Any, event: Any, **kwargs: Any) -> None:
        raise LookupError("the charge's payment is not known yet")

    shop.connect(signal_for("checkout.session.completed"), ship)
    shop.connect(signal_for("charge.refunded"), refund_before_payment)
    namespace = shop.run(code)
    namespace["test_paid_checkout_ships_once"](webhook(Client()), build_event)
    namespace["test_refund_before_payment_is_retried"](webhook(Client()))


def page_testing_retry(shop: Shop, code: str, monkeypatch: Any) -> None:
    def explode(session_id: str) -> None:
        raise ConnectionError("the warehouse is down")

    namespace = shop.run(code, explode=explode)
    warehouse = namespace["warehouse"]
    shop.connect(
        signal_for("checkout.session.completed"),
        lambda sender, event, **kwargs: warehouse.ship(event.payload["data"]["object"]["id"]),
    )
    namespace["test_a_failed_fulfilment_is_retried"](Client(), monkeypatch)
    assert shop.shipped == ["cs_test_2"]


def page_testing_localstripe(shop: Shop, code: str, monkeypatch: Any) -> None:
    # The page's loop with the webhook left out (its server is down): the catch-up, with the
    # page's settings, finds the page's customer and runs the receivers on it.
    created: list[str] = []

    def welcome(sender: Any, event: Any, **kwargs: Any) -> None:
        created.append(event.payload["data"]["object"]["email"])

    shop.connect(signal_for("customer.created"), welcome)
    log_dir = tempfile.TemporaryDirectory()
    localstripe = LocalStripe(Path(log_dir.name))
    try:
        page_settings = {"WEBHOOK_SECRETS": ["whsec_local"], "API_KEY": "sk_test_local"}
        with override_settings(STRIPE_IDEMPOTENCY={**page_settings, "API_BASE": localstripe.url}):
            customer = shop.run(code.replace("http://localhost:8420", localstripe.url))["customer"]
            call_command("sync_stripe_events", "--since", "10m", stdout=io.StringIO())
    finally:
        localstripe.stop()
        log_dir.cleanup()
    assert created == ["ada@example.com"]
    event = StripeEvent.objects.get(type="customer.created")
    assert (event.payload["data"]["object"]["id"], event.is_processed) == (customer.id, True)


RUNNERS: dict[tuple[str, int], Callable[[Shop, str, Any], None]] = {
    ("README.md", 0): settings_snippet,
    ("README.md", 1): urls_snippet,
    ("README.md", 2): readme_receiver,
    ("README.md", 3): readme_ledger,
    ("README.md", 4): readme_plugin_test,
    ("docs/deferred.md", 0): table_queue_settings_snippet,
    ("docs/deferred.md", 1): deferred_settings_snippet,
    ("docs/deferred.md", 2): celery_settings_snippet,
    ("docs/deferred.md", 3): celery_app_snippet,
    ("docs/deployment.md", 0): asgi_snippet,
    ("docs/deployment.md", 1): databases_snippet,
    ("docs/deployment.md", 2): databases_snippet,
    ("docs/deployment.md", 3): databases_snippet,
    ("docs/deployment.md", 4): logging_snippet,
    ("docs/ledger.md", 0): ledger_page_first,
    ("docs/monitoring.md", 0): monitoring_signals,
    ("docs/monitoring.md", 1): monitoring_otel_setup,
    ("docs/monitoring.md", 2): monitoring_health_urls,
    ("docs/ledger.md", 1): ledger_scoped_references,
    ("docs/ledger.md", 2): ledger_receiver,
    ("docs/ledger.md", 3): ledger_connected_accounts,
    ("docs/endpoints.md", 0): endpoints_settings,
    ("docs/endpoints.md", 1): endpoints_connect_receiver,
    ("docs/thin-events.md", 0): thin_receiver,
    ("docs/ordering.md", 0): ordering_check_in_the_receiver,
    ("docs/ordering.md", 1): ordering_settings,
    ("docs/ordering.md", 2): ordering_refund_waits,
    ("docs/quickstart.md", 0): settings_snippet,
    ("docs/quickstart.md", 1): urls_snippet,
    ("docs/quickstart.md", 2): simple_receiver("fulfil"),
    ("docs/quickstart.md", 3): quickstart_test,
    ("docs/receivers.md", 0): receivers_page_effect,
    ("docs/effects.md", 0): effects_page_receipt,
    ("docs/effects.md", 1): effects_page_stripe_api,
    ("docs/receivers.md", 1): coupon_in_a_savepoint,
    ("docs/testing.md", 0): page_testing_first,
    ("docs/testing.md", 1): page_testing_plugin,
    ("docs/testing.md", 2): page_testing_retry,
    ("docs/testing.md", 3): page_testing_localstripe,
}


def test_every_snippet_has_a_runner():
    found = {(page, n) for page in PAGES for n in range(len(snippets(page)))}
    assert found == set(RUNNERS)


@pytest.mark.parametrize(("page", "index"), sorted(RUNNERS))
def test_the_snippet_runs_as_pasted(page, index, shop, monkeypatch):
    RUNNERS[page, index](shop, snippets(page)[index], monkeypatch)


@pytest.mark.parametrize("page", ["README.md", "docs/settings.md"])
def test_the_settings_table_has_every_declared_setting_with_its_default(page):
    from stripe_idempotency.conf import AppSettings

    rows = {}
    for line in (ROOT / page).read_text().splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`") and cells[0].strip("`").isupper():
            rows[cells[0].strip("`")] = cells[1]
    declared = AppSettings.declared()
    assert sorted(rows) == sorted(setting.name for setting in declared)
    wrong = {s.name: rows[s.name] for s in declared if not rows[s.name].startswith(f"`{s.shown_default}`")}
    assert wrong == {}


def test_every_check_id_a_setting_declares_is_on_the_checks_page():
    from stripe_idempotency.conf import AppSettings

    page = (ROOT / "docs" / "checks.md").read_text()
    ids = {s.check_id for s in AppSettings.declared()} | {
        s.item_check_id for s in AppSettings.declared() if getattr(s, "item_check_id", "")
    }
    assert sorted(i for i in ids if f"| `stripe_idempotency.{i}` |" not in page) == []
