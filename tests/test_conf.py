"""Settings: defaults in one place, read at call time."""

from __future__ import annotations

import os
import socket

import pytest
from django.core.checks import ERROR
from django.test import override_settings

from stripe_idempotency.checks import check_settings
from stripe_idempotency.conf import DEFAULTS, AppSettings, app_settings
from stripe_idempotency.exceptions import SettingInvalid


def test_defaults():
    with override_settings(STRIPE_IDEMPOTENCY={}):
        assert app_settings.WEBHOOK_SECRETS == []
        assert app_settings.TOLERANCE_SECONDS == 300
        assert app_settings.CLAIM_TTL_SECONDS == 300
        assert app_settings.RETRY_AFTER_MAX_SECONDS == 60
        assert app_settings.MAX_BODY_BYTES == 1024 * 1024
        assert app_settings.LIVEMODE is None
        assert app_settings.MAX_ATTEMPTS == 20
        assert app_settings.RETRY_HORIZON_SECONDS == 3 * 24 * 3600
        assert app_settings.PROCESSING == "inline"
        assert app_settings.PENDING_GRACE_SECONDS == 60
        assert app_settings.ENQUEUE == "stripe_idempotency.tasks.enqueue_django_task"
        assert app_settings.HEALTH_TOKENS == []
        assert app_settings.PAYLOAD == "any"
        assert app_settings.ENDPOINTS == {}
        assert app_settings.API_KEY is None
        assert app_settings.API_BASE is None
        assert app_settings.ORDERING == {}
        assert app_settings.ENQUEUE_TIMEOUT_SECONDS == 5
        assert app_settings.EXTRA_EVENT_TYPES == []
        assert f"{socket.gethostname()}:{os.getpid()}" == app_settings.INSTANCE_ID
    assert set(DEFAULTS) == {
        "WEBHOOK_SECRETS",
        "TOLERANCE_SECONDS",
        "CLAIM_TTL_SECONDS",
        "RETRY_AFTER_MAX_SECONDS",
        "MAX_BODY_BYTES",
        "LIVEMODE",
        "INSTANCE_ID",
        "MAX_ATTEMPTS",
        "RETRY_HORIZON_SECONDS",
        "PROCESSING",
        "ENQUEUE_TIMEOUT_SECONDS",
        "EXTRA_EVENT_TYPES",
        "PENDING_GRACE_SECONDS",
        "HEALTH_TOKENS",
        "PAYLOAD",
        "ENDPOINTS",
        "API_KEY",
        "API_BASE",
        "ENQUEUE",
        "ORDERING",
    }


def test_values_are_read_when_asked_for():
    with override_settings(STRIPE_IDEMPOTENCY={"CLAIM_TTL_SECONDS": 12, "INSTANCE_ID": "web-3"}):
        assert app_settings.CLAIM_TTL_SECONDS == 12
        assert app_settings.INSTANCE_ID == "web-3"
    assert app_settings.INSTANCE_ID == "test-instance"


def test_a_lone_secret_string_is_refused_when_read_and_never_repeated():
    # Read as a list it would be one secret per character; the message names the check, not the secret.
    with (
        override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": "whsec_abc"}),
        pytest.raises(SettingInvalid) as raised,
    ):
        _ = app_settings.WEBHOOK_SECRETS
    assert str(raised.value) == (
        "STRIPE_IDEMPOTENCY['WEBHOOK_SECRETS'] must be a list of strings; it is a str "
        "(system check stripe_idempotency.E011)."
    )


def test_an_empty_signing_secret_is_refused_when_read():
    # An HMAC keyed with an empty secret is anybody's to compute: events signed with it are forged.
    with (
        override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": ["whsec_ok", " "]}),
        pytest.raises(SettingInvalid, match="E012"),
    ):
        _ = app_settings.WEBHOOK_SECRETS


#: For each declared setting, values its declaration refuses.
INVALID = {
    "WEBHOOK_SECRETS": ["whsec_a", 42, [None], [""]],
    "TOLERANCE_SECONDS": [0, 1.5, "300", True],
    "CLAIM_TTL_SECONDS": [0, -1, "300", None],
    "RETRY_AFTER_MAX_SECONDS": [0, 2.5],
    "MAX_BODY_BYTES": [0, "1MB"],
    "LIVEMODE": ["live", 1],
    "INSTANCE_ID": ["", 7],
    "MAX_ATTEMPTS": [0, 1.0],
    "RETRY_HORIZON_SECONDS": [0, "3d"],
    "PROCESSING": ["bogus", None],
    "PENDING_GRACE_SECONDS": [-1, "60"],
    "ENQUEUE": [len, ""],
    "ENQUEUE_TIMEOUT_SECONDS": [0, None],
    "HEALTH_TOKENS": ["t" * 40, [""], [None]],
    "PAYLOAD": ["all", None],
    "ENDPOINTS": [["connect"], {"connect": 5}],
    "API_KEY": [5],
    "API_BASE": [["http://127.0.0.1:8420"]],
    "ORDERING": [["charge.*"], {"charge.*": "sorted"}, {"": "serialize"}],
    "EXTRA_EVENT_TYPES": ["invoice.paid", [""], [3]],
}


def test_every_declared_setting_has_refused_values_above():
    assert set(INVALID) == {setting.name for setting in AppSettings.declared()} == set(DEFAULTS)


@pytest.mark.parametrize(
    ("key", "value"), [(key, value) for key, values in INVALID.items() for value in values], ids=repr
)
def test_a_value_a_declaration_refuses_is_a_check_error_and_refused_when_read(key, value):
    config = {"WEBHOOK_SECRETS": ["whsec_ok"], key: value}
    with override_settings(STRIPE_IDEMPOTENCY=config):
        with pytest.raises(SettingInvalid) as raised:
            getattr(app_settings, key)
        errors = [message.id for message in check_settings() if message.level >= ERROR]
    named = str(raised.value).rpartition("system check ")[2].rstrip(").")
    assert named in errors
