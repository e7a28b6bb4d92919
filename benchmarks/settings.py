"""The example project's settings, on a database of the benchmarks' own (PostgreSQL by default)."""

from __future__ import annotations

import os

import environ

from example_project.settings import *  # noqa: F403

DATABASES = {
    "default": environ.Env.db_url_config(
        os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/stripe_idempotency_bench"
    )
}
# As the example project: persistent connections, checked before use.
DATABASES["default"].update(CONN_MAX_AGE=int(os.environ.get("CONN_MAX_AGE", "60")), CONN_HEALTH_CHECKS=True)
DEBUG = False
# A receiver's own time (the deferred burst gives it 100 ms); none by default.
SHOP_FULFILMENT_SECONDS = float(os.environ.get("SHOP_FULFILMENT_SECONDS", "0"))
# The deferred benchmarks' database queue, migrated with the rest.
if "django_tasks_db" not in INSTALLED_APPS:  # noqa: F405
    INSTALLED_APPS.append("django_tasks_db")  # noqa: F405
LOGGING = {"version": 1, "disable_existing_loggers": False, "root": {"level": "ERROR"}}
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]  # testserver: the in-process figure
# The deferred benchmark's acknowledgement with a queue that takes no time.
if os.environ.get("STRIPE_ENQUEUE"):
    STRIPE_IDEMPOTENCY["ENQUEUE"] = os.environ["STRIPE_ENQUEUE"]  # noqa: F405
