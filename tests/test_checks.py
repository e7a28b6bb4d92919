"""System checks: each misconfiguration reported with its stable id."""

from __future__ import annotations

import pytest
from django.core.checks import Error, Warning
from django.test import override_settings

from stripe_idempotency.checks import check_settings, check_sqlite_transaction_mode


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


@pytest.mark.parametrize("secrets", ["whsec_a_single_string", [""], [None], 42])
def test_secrets_of_the_wrong_shape_are_e002(secrets):
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": secrets}):
        assert ids(check_settings()) == ["stripe_idempotency.E002"]


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
