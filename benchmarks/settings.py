"""Settings for the benchmarks: a real database of its own (PostgreSQL by default), never the tests'."""

from __future__ import annotations

import os

import environ

DATABASES = {
    "default": environ.Env.db_url_config(
        os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/stripe_idempotency_bench"
    )
}
SECRET_KEY = "benchmarks-only"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "stripe_idempotency"]
STRIPE_IDEMPOTENCY = {"WEBHOOK_SECRETS": ["whsec_benchmarks"]}
