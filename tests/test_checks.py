"""System checks: each misconfiguration reported with its stable id."""

from __future__ import annotations

import types

import pytest
from django.core import checks
from django.core.checks import Error, Warning
from django.db import connection
from django.test import Client, override_settings

from stripe_idempotency.checks import check_database_support, check_settings, check_sqlite_transaction_mode
from stripe_idempotency.event_types import known_event_types
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import signal_for
from stripe_idempotency.testing import build_event, deliver


def ids(messages) -> list[str]:
    return [m.id for m in messages]


def with_settings(**values):
    return override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_ok"], **values})


def test_valid_settings_pass():
    with with_settings(CLAIM_TTL_SECONDS=30, LIVEMODE=True, INSTANCE_ID="web-1"):
        assert check_settings() == []


def test_no_secret_is_e001():
    with override_settings(STRIPE_IDEMPOTENCY={}):
        assert check_settings() == [
            Error(
                "STRIPE_IDEMPOTENCY['WEBHOOK_SECRETS'] is empty: every webhook would be rejected.",
                hint="Add the endpoint's signing secret (whsec_...) from the Stripe dashboard "
                "or from `stripe listen`.",
                id="stripe_idempotency.E001",
            )
        ]


def test_missing_settings_dict_is_e001():
    with override_settings():
        from django.conf import settings

        del settings.STRIPE_IDEMPOTENCY
        assert ids(check_settings()) == ["stripe_idempotency.E001"]


@pytest.mark.parametrize("secrets", ["whsec_a_single_string", 42, [None]])
def test_secrets_that_are_not_a_list_of_strings_are_e011(secrets):
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": secrets}):
        assert ids(check_settings()) == ["stripe_idempotency.E011"]


@pytest.mark.parametrize("secrets", [[""], ["whsec_ok", "  "]])
def test_an_empty_or_non_string_secret_is_e012(secrets):
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": secrets}):
        assert ids(check_settings()) == ["stripe_idempotency.E012"]


def test_settings_that_are_not_a_dict_are_e002():
    with override_settings(STRIPE_IDEMPOTENCY=["whsec_x"]):
        assert ids(check_settings()) == ["stripe_idempotency.E002"]


def test_a_secret_that_is_not_a_signing_secret_is_w001():
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_ok", "sk_test_123"]}):
        messages = check_settings()
    assert ids(messages) == ["stripe_idempotency.W001"]
    assert isinstance(messages[0], Warning)


@pytest.mark.parametrize(
    ("key", "value", "check_id"),
    [
        ("CLAIM_TTL_SECONDS", 0, "E003"),
        ("CLAIM_TTL_SECONDS", -5, "E003"),
        ("CLAIM_TTL_SECONDS", "300", "E003"),
        ("TOLERANCE_SECONDS", -1, "E004"),
        ("TOLERANCE_SECONDS", 0, "E004"),
        ("TOLERANCE_SECONDS", 1.5, "E004"),
        ("RETRY_AFTER_MAX_SECONDS", 0, "E005"),
        ("MAX_BODY_BYTES", 0, "E006"),
        ("MAX_BODY_BYTES", True, "E006"),
        ("MAX_ATTEMPTS", 0, "E009"),
        ("MAX_ATTEMPTS", 2.5, "E009"),
        ("RETRY_HORIZON_SECONDS", 0, "E013"),
        ("RETRY_HORIZON_SECONDS", "3d", "E013"),
        ("LIVEMODE", "live", "E007"),
        ("INSTANCE_ID", "", "E008"),
        ("INSTANCE_ID", 7, "E008"),
    ],
)
def test_bad_values(key, value, check_id):
    with with_settings(**{key: value}):
        assert ids(check_settings()) == [f"stripe_idempotency.{check_id}"]


def test_ttl_message_names_the_value_and_the_default():
    with with_settings(CLAIM_TTL_SECONDS=0):
        assert check_settings() == [
            Error(
                "STRIPE_IDEMPOTENCY['CLAIM_TTL_SECONDS'] must be a number greater than 0; it is 0.",
                hint="The default is 300.",
                id="stripe_idempotency.E003",
            )
        ]


def test_a_fractional_lease_is_allowed():
    with with_settings(CLAIM_TTL_SECONDS=0.5):
        assert check_settings() == []


def test_unknown_keys_are_w002():
    with with_settings(CLAIM_TTL=30):
        assert ids(check_settings()) == ["stripe_idempotency.W002"]


# The checks read settings.DATABASES only; no connection is opened with these.
databases_override = pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")


def sqlite_database(**options):
    return {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "x.sqlite3", "OPTIONS": options}}


@databases_override
def test_sqlite_without_immediate_transactions_is_w003():
    with override_settings(DATABASES=sqlite_database()):
        assert check_sqlite_transaction_mode() == [
            Warning(
                "The SQLite database 'default' does not use IMMEDIATE transactions.",
                hint='Add "OPTIONS": {"transaction_mode": "IMMEDIATE"} to it: with deferred '
                "transactions, concurrent webhook deliveries fail with 'database is locked' "
                "instead of waiting their turn.",
                id="stripe_idempotency.W003",
            )
        ]


@databases_override
def test_sqlite_with_immediate_transactions_passes():
    with override_settings(DATABASES=sqlite_database(transaction_mode="IMMEDIATE")):
        assert check_sqlite_transaction_mode() == []


@databases_override
def test_other_databases_are_not_sqlite_checked():
    databases = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "x"}}
    with override_settings(DATABASES=databases):
        assert check_sqlite_transaction_mode() == []


def test_checks_are_registered():
    from django.core import checks

    registered = checks.registry.registry.get_checks()
    assert check_settings in registered
    assert check_sqlite_transaction_mode in registered


@pytest.fixture
def unsupported_vendor(monkeypatch):
    """The default connection claims to be a database we have no backend for (as
    django-cockroachdb's reports "cockroachdb")."""
    monkeypatch.setattr(connection, "vendor", "cockroachdb")


def test_a_database_without_a_backend_is_e010(unsupported_vendor):
    assert check_database_support() == [
        Error(
            "The database 'default' is a 'cockroachdb' database, which stripe_idempotency "
            "cannot claim events or write the ledger on.",
            hint="Use one of: postgresql, mysql, sqlite; or route the app's models away "
            "from this database (a router's db_for_write and allow_migrate).",
            id="stripe_idempotency.E010",
        )
    ]


def test_supported_databases_pass_e010():
    assert check_database_support() == []


class _ElsewhereRouter:
    """Sends the app's tables to no alias but 'default'."""

    def db_for_write(self, model, **hints):
        return "default"

    def allow_migrate(self, db, app_label, **hints):
        return db == "default" if app_label == "stripe_idempotency" else None


def test_e010_looks_only_at_the_aliases_the_app_is_written_to(unsupported_vendor):
    with override_settings(DATABASE_ROUTERS=[_ElsewhereRouter()]):
        assert ids(check_database_support()) == ["stripe_idempotency.E010"]


@pytest.mark.django_db(transaction=True)
def test_a_delivery_to_an_unsupported_database_is_a_json_503(unsupported_vendor, caplog):
    response = deliver(Client(), build_event(id="evt_unsupported"))
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "unavailable", "event_id": "evt_unsupported"}
    assert response["Retry-After"] == "60"
    assert "is a 'cockroachdb' database" in caplog.text
    assert StripeEvent.objects.count() == 0


def test_processing_modes_and_the_tasks_framework(monkeypatch):
    def ids(**values):
        with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], **values}):
            return [m.id for m in check_settings()]

    assert ids(PROCESSING="deferred") == []
    assert ids(PROCESSING="later") == ["stripe_idempotency.E014"]
    assert ids(PENDING_GRACE_SECONDS=-1) == ["stripe_idempotency.E015"]
    assert ids(PENDING_GRACE_SECONDS=0) == []
    assert ids(ENQUEUE_TIMEOUT_SECONDS=0) == ["stripe_idempotency.E024"]
    assert ids(ENQUEUE_TIMEOUT_SECONDS="5") == ["stripe_idempotency.E024"]
    assert ids(ENQUEUE_TIMEOUT_SECONDS=0.5) == []
    monkeypatch.setattr("stripe_idempotency.queueing.tasks_framework", lambda: None)
    assert ids(PROCESSING="deferred") == ["stripe_idempotency.E016"]
    assert ids() == []  # inline mode needs no tasks


def test_the_enqueue_callable_is_checked_where_it_is_used():
    def messages(**values):
        with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_x"], **values}):
            return [(m.id, m.msg) for m in check_settings()]

    celery = "stripe_idempotency.contrib.celery.enqueue"
    assert messages(PROCESSING="deferred", ENQUEUE=celery) == []
    assert messages(PROCESSING="deferred", ENQUEUE="stripe_idempotency.tasks.nowhere") == [
        (
            "stripe_idempotency.E017",
            "STRIPE_IDEMPOTENCY['ENQUEUE'] must name a callable (event_id, database): "
            'Module "stripe_idempotency.tasks" does not define a "nowhere" attribute/class.',
        )
    ]
    assert messages(PROCESSING="deferred", ENQUEUE="stripe_idempotency.conf.SETTINGS_NAME") == [
        (
            "stripe_idempotency.E017",
            "STRIPE_IDEMPOTENCY['ENQUEUE'] must name a callable (event_id, database): "
            "stripe_idempotency.conf.SETTINGS_NAME is not callable.",
        )
    ]
    assert [id for id, _ in messages(PROCESSING="deferred", ENQUEUE=len)] == ["stripe_idempotency.E017"]
    # Set but unused: inline mode queues nothing.
    assert [id for id, _ in messages(ENQUEUE=celery)] == ["stripe_idempotency.W005"]


def test_no_queue_needs_no_tasks_framework_and_the_deploy_check_says_what_must_run(monkeypatch):
    from stripe_idempotency.checks import check_table_queue

    monkeypatch.setattr("stripe_idempotency.queueing.tasks_framework", lambda: None)
    table = {"WEBHOOK_SECRETS": ["whsec_x"], "PROCESSING": "deferred", "ENQUEUE": None}
    with override_settings(STRIPE_IDEMPOTENCY=table):
        assert check_settings() == []
        [info] = check_table_queue()
    assert (info.id, info.level) == ("stripe_idempotency.I001", checks.INFO)
    assert "only `manage.py process_stripe_events` workers process accepted events" in info.msg
    assert "process_stripe_events --follow" in info.hint
    for others in (
        {**table, "ENQUEUE": "stripe_idempotency.contrib.celery.enqueue"},
        {**table, "PROCESSING": "inline"},
    ):
        with override_settings(STRIPE_IDEMPOTENCY=others):
            assert check_table_queue() == []
    # Registered for `check --deploy` only: every other command would print it.
    assert check_table_queue in checks.registry.registry.get_checks(include_deployment_checks=True)
    assert check_table_queue not in checks.registry.registry.get_checks(include_deployment_checks=False)


@pytest.mark.parametrize("tokens", ["a-single-token-string-of-some-length", [""], [None], ["x" * 40, " "], 7])
def test_health_tokens_that_are_not_a_list_of_strings_are_e018(tokens):
    with with_settings(HEALTH_TOKENS=tokens):
        assert ids(check_settings()) == ["stripe_idempotency.E018"]


def test_a_short_health_token_is_w006_and_a_long_one_passes():
    with with_settings(HEALTH_TOKENS=["x" * 40, "short"]):
        assert ids(check_settings()) == ["stripe_idempotency.W006"]
    with with_settings(HEALTH_TOKENS=["x" * 32]):
        assert check_settings() == []


@pytest.mark.parametrize(
    "rules",
    [["customer.subscription.*"], {"invoice.*": "sorted"}, {"": "serialize"}, {3: "serialize"}, "serialize"],
)
def test_ordering_that_is_not_types_to_a_mode_is_e022(rules):
    with with_settings(ORDERING=rules):
        assert ids(check_settings()) == ["stripe_idempotency.E022"]


def test_valid_ordering_passes():
    with with_settings(
        ORDERING={"customer.subscription.*": "skip_superseded", "charge.refunded": "serialize"}
    ):
        assert check_settings() == []


def endpoint_settings(**endpoints):
    return override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_ok"], "ENDPOINTS": endpoints})


def test_valid_endpoints_pass():
    with endpoint_settings(
        connect={"WEBHOOK_SECRETS": ["whsec_connect"], "LIVEMODE": True},
        thin={"WEBHOOK_SECRETS": ["whsec_thin"], "PAYLOAD": "thin", "PROCESSING": "inline"},
    ):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("config", "check_id", "names"),
    [
        ({}, "E001", "STRIPE_IDEMPOTENCY['ENDPOINTS']['connect']['WEBHOOK_SECRETS'] is empty"),
        ({"WEBHOOK_SECRETS": "whsec_connect"}, "E011", "['connect']['WEBHOOK_SECRETS'] must be a list"),
        ({"WEBHOOK_SECRETS": [""]}, "E012", "['connect']['WEBHOOK_SECRETS'] contains an empty"),
        ({"WEBHOOK_SECRETS": ["whsec_c"], "LIVEMODE": "live"}, "E007", "['connect']['LIVEMODE'] must be"),
        ({"WEBHOOK_SECRETS": ["whsec_c"], "PAYLOAD": "full"}, "E021", "['connect']['PAYLOAD'] must be"),
        (
            {"WEBHOOK_SECRETS": ["whsec_c"], "PROCESSING": "later"},
            "E014",
            "['connect']['PROCESSING'] must be",
        ),
        (
            {"WEBHOOK_SECRETS": ["whsec_c"], "LIVE_MODE": True},
            "W007",
            "['connect'] has unknown keys: LIVE_MODE",
        ),
    ],
)
def test_each_endpoint_is_checked_and_named(config, check_id, names):
    with endpoint_settings(connect=config):
        [message] = check_settings()
    assert message.id == f"stripe_idempotency.{check_id}"
    assert names in message.msg


def test_a_secret_on_two_endpoints_is_e020():
    with endpoint_settings(
        connect={"WEBHOOK_SECRETS": ["whsec_ok"]}, thin={"WEBHOOK_SECRETS": ["whsec_thin"]}
    ):
        [message] = check_settings()
    assert message.id == "stripe_idempotency.E020"
    assert "the default endpoint and 'connect'" in message.msg


@pytest.mark.parametrize(
    "endpoints", [["connect"], {"connect": "whsec_x"}, {"with/slash": {"WEBHOOK_SECRETS": ["whsec_x"]}}]
)
def test_endpoints_that_are_not_named_dicts_are_e019(endpoints):
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_ok"], "ENDPOINTS": endpoints}):
        assert "stripe_idempotency.E019" in ids(check_settings())


def test_with_named_endpoints_the_default_one_may_have_no_secrets():
    with override_settings(STRIPE_IDEMPOTENCY={"ENDPOINTS": {"connect": {"WEBHOOK_SECRETS": ["whsec_c"]}}}):
        assert check_settings() == []


def test_a_deferred_endpoint_needs_a_queue_even_when_the_default_is_inline(monkeypatch):
    monkeypatch.setattr("stripe_idempotency.queueing.tasks_framework", lambda: None)
    with endpoint_settings(later={"WEBHOOK_SECRETS": ["whsec_later"], "PROCESSING": "deferred"}):
        assert ids(check_settings()) == ["stripe_idempotency.E016"]


# -- W008: a receiver of a type Stripe never sends ---------------------------------------------


def noop(sender, event, **kwargs):
    pass


def test_a_receiver_of_a_misspelt_type_is_w008_with_the_type_meant(connect):
    connect(signal_for("invoice.payment_succeded"), noop)
    with with_settings():
        assert check_settings() == [
            Warning(
                "A receiver is connected to signal_for('invoice.payment_succeded'), a type the installed "
                "stripe library does not list: its events would be processed without it.",
                hint="Did you mean 'invoice.payment_succeeded'? If Stripe does send it (a type newer than "
                "the library, or your own), add it to STRIPE_IDEMPOTENCY['EXTRA_EVENT_TYPES'].",
                id="stripe_idempotency.W008",
            )
        ]


@pytest.mark.parametrize(
    "event_type",
    ["invoice.payment_succeeded", "checkout.session.completed", "v1.invoice.paid", "v2.core.account.created"],
)
def test_receivers_of_types_stripe_sends_pass(connect, event_type):
    connect(signal_for(event_type), noop)
    with with_settings():
        assert check_settings() == []


def test_a_declared_type_passes_and_a_type_without_receivers_is_not_judged(connect):
    signal_for("shop.nobody_listens")  # asked for, never connected
    connect(signal_for("invoice.tomorrows_type"), noop)
    with with_settings(EXTRA_EVENT_TYPES=["invoice.tomorrows_type"]):
        assert check_settings() == []
    with with_settings():
        assert ids(check_settings()) == ["stripe_idempotency.W008"]


@pytest.mark.parametrize("value", ["invoice.paid", [""], [1], {"invoice.paid": True}])
def test_extra_event_types_not_a_list_of_names_is_e023(value):
    with with_settings(EXTRA_EVENT_TYPES=value):
        assert ids(check_settings()) == ["stripe_idempotency.E023"]


def test_the_list_of_types_comes_from_the_installed_stripe():
    known = known_event_types()
    assert {"invoice.payment_succeeded", "charge.refunded", "v1.invoice.paid"} <= known
    assert "*" not in known
    assert "invoice.payment_succeded" not in known


# -- deferred through Django's Tasks framework, misconfigured -----------------------------------

DEFERRED = {"WEBHOOK_SECRETS": ["whsec_x"], "PROCESSING": "deferred"}


def deferred_ids(**django_settings) -> list[str]:
    with override_settings(STRIPE_IDEMPOTENCY=DEFERRED, **django_settings):
        return [m.id for m in check_settings()]


@pytest.mark.parametrize(
    "tasks",
    [
        None,  # not set: Django's default backend runs tasks at once
        {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}},
        {"default": {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}},
    ],
)
def test_deferred_with_a_backend_that_runs_tasks_in_the_request_is_w009(tasks):
    with override_settings(STRIPE_IDEMPOTENCY=DEFERRED):
        from django.conf import settings

        if tasks is None:
            saved = settings.TASKS
            del settings.TASKS
            try:
                messages = check_settings()
            finally:
                settings.TASKS = saved
        else:
            with override_settings(TASKS=tasks):
                messages = check_settings()
    [message] = messages
    assert message.id == "stripe_idempotency.W009"
    assert "Stripe is answered 'accepted' only after the receivers ran" in message.msg
    assert ("TASKS is not set" in message.msg) is (tasks is None)
    assert "django_tasks_db.DatabaseBackend" in message.hint


def test_deferred_with_a_backend_that_cannot_be_imported_is_w011():
    tasks = {"default": {"BACKEND": "django_tasks_dbx.DatabaseBackend"}}
    assert deferred_ids(TASKS=tasks) == ["stripe_idempotency.W011"]


def test_deferred_with_the_database_backend_and_its_app_missing_is_w011():
    tasks = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}
    assert deferred_ids(TASKS=tasks) == ["stripe_idempotency.W011"]
    from django.conf import settings

    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "django_tasks_db"]):
        assert deferred_ids(TASKS=tasks) == []


def test_deferred_through_the_backport_not_in_installed_apps_is_w010(monkeypatch):
    from django.conf import settings

    backport = types.ModuleType("django_tasks")
    monkeypatch.setattr("stripe_idempotency.queueing.tasks_framework", lambda: backport)
    apps = [app for app in settings.INSTALLED_APPS if app != "django_tasks"]
    with override_settings(INSTALLED_APPS=apps):
        assert deferred_ids() == ["stripe_idempotency.W010"]
    with override_settings(INSTALLED_APPS=[*apps, "django_tasks"]):
        assert deferred_ids() == []


def test_with_named_endpoints_an_empty_default_list_passes_and_a_wrong_kind_does_not():
    # [] switches the default endpoint off; "" is a lone string the app refuses to read.
    endpoints = {"connect": {"WEBHOOK_SECRETS": ["whsec_connect"]}}
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": [], "ENDPOINTS": endpoints}):
        assert check_settings() == []
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": "", "ENDPOINTS": endpoints}):
        assert ids(check_settings()) == ["stripe_idempotency.E011"]
