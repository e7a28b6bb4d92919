"""Settings: defaults in one place, read at call time."""

from __future__ import annotations

import os
import socket

from django.test import override_settings

from stripe_idempotency.conf import DEFAULTS, app_settings


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


def test_a_lone_secret_string_is_not_split_into_characters():
    with override_settings(STRIPE_IDEMPOTENCY={"WEBHOOK_SECRETS": "whsec_abc"}):
        assert app_settings.WEBHOOK_SECRETS == ["whsec_abc"]
