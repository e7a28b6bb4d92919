"""Settings for the test suite.

``DATABASE_URL`` picks the backend (SQLite in a temporary file by default):

    pytest
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/stripe_idempotency pytest
    DATABASE_URL=mysql://root@127.0.0.1:3306/stripe_idempotency pytest

``DATABASE_POOL`` runs PostgreSQL the way pooled deployments do:

    DATABASE_POOL=psycopg     Django's own connection pool (psycopg_pool)
    DATABASE_POOL=pgbouncer   through PgBouncer in transaction pooling mode
                              (DATABASE_URL pointing at it; see .ci/pgbouncer)
"""

from __future__ import annotations

import os
import tempfile

import environ

from example_project.mail import backend_settings

env = environ.Env()

_SQLITE_URL = f"sqlite:///{os.path.join(tempfile.gettempdir(), 'stripe_idempotency.sqlite3')}"
DATABASES = {"default": env.db_url_config(os.environ.get("DATABASE_URL") or _SQLITE_URL)}
_database = DATABASES["default"]
# One test database per run, so that two runs on one machine never share one.
_suffix = os.getpid()
if _database["ENGINE"].endswith("sqlite3"):
    _database["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 3}
    # A file, not ":memory:": concurrency tests open one connection per thread
    # and per process, and they must all see the same database.
    _database["TEST"] = {
        "NAME": os.path.join(tempfile.gettempdir(), f"test_stripe_idempotency_{_suffix}.sqlite3")
    }
else:
    _database["TEST"] = {"NAME": f"test_{_database['NAME']}_{_suffix}"}

DATABASE_POOL = os.environ.get("DATABASE_POOL", "")
if DATABASE_POOL == "psycopg":
    # Every thread of a concurrency test holds one connection while it delivers.
    _database["OPTIONS"] = {"pool": {"min_size": 2, "max_size": 24, "timeout": 5}}
elif DATABASE_POOL == "pgbouncer":
    # Consecutive transactions of one client may run on different server
    # connections: nothing may outlive a transaction on the server.
    _database["OPTIONS"] = {"prepare_threshold": None}
    _database["DISABLE_SERVER_SIDE_CURSORS"] = True
elif DATABASE_POOL:
    raise ValueError(f"DATABASE_POOL must be 'psycopg' or 'pgbouncer', not {DATABASE_POOL!r}.")

# A second database on the same server, for projects that keep payments apart (a router, or
# using=): only tests that ask for it (databases=[..., "payments"]) create and use it.
DATABASES["payments"] = {**_database, "TEST": {**_database["TEST"]}}
if _database["ENGINE"].endswith("sqlite3"):
    DATABASES["payments"]["NAME"] = _database["NAME"].replace(".sqlite3", "_payments.sqlite3")
    DATABASES["payments"]["TEST"]["NAME"] = _database["TEST"]["NAME"].replace(".sqlite3", "_payments.sqlite3")
else:
    DATABASES["payments"]["NAME"] = f"{_database['NAME']}_payments"
    DATABASES["payments"]["TEST"]["NAME"] = f"{_database['TEST']['NAME']}_payments"

SECRET_KEY = "tests-only-not-secret"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
ROOT_URLCONF = "tests.urls"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.sessions",
    "stripe_idempotency",
    "tests.testapp",
]

# Deferred processing's tasks: Django 6's own framework, or the backport on 5.2. The tests
# hold tasks in memory (the dummy backend, its results shared by every thread) and run them
# by hand; the worker suites start real workers with a backend of their own.
try:
    import django.tasks  # noqa: F401
except ImportError:
    INSTALLED_APPS.append("django_tasks")
TASKS = {"default": {"BACKEND": "tests.testapp.task_backends.SharedDummyBackend"}}

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

WEBHOOK_SECRET = "whsec_test_secret"

STRIPE_IDEMPOTENCY = {
    "WEBHOOK_SECRETS": [WEBHOOK_SECRET],
    "INSTANCE_ID": "test-instance",
}

# Email through Django's in-memory backend (mail.outbox), said the way the running Django
# expects (6.1 warns without MAILERS): the effects the docs show send mail.
globals().update(backend_settings("django.core.mail.backends.locmem.EmailBackend"))
