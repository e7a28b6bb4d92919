"""Settings of the example shop, from the environment (django-environ).

DATABASE_URL           default: sqlite:///example.sqlite3 (beside manage.py)
DATABASE_TIMEOUT       seconds a statement or a lock wait may take (default 30): a database
                       that stops answering gets 503s within it, not hung workers
DATABASE_POOL_SIZE     PostgreSQL only: use Django's connection pool of this many
                       connections per process instead of persistent connections
                       (the shape for ASGI servers; see docs/deployment.md)
STRIPE_WEBHOOK_SECRET  the endpoint's signing secret; `stripe listen` prints one
STRIPE_PROCESSING      "inline" (default: receivers run inside Stripe's request) or
                       "deferred" (stored, answered, processed by a worker's task)
TASK_QUEUE             who runs deferred tasks: "immediate" (default: at once, in the
                       request; no worker), "table" (no queue but the events table;
                       workers: `python manage.py process_stripe_events --follow`),
                       "database" (django-tasks-db; workers: `python manage.py
                       db_worker`) or "celery" (workers: `celery -A example_project
                       worker`; broker: CELERY_BROKER_URL)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from example_project import mail

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env")  # optional; absent is fine

DEBUG = env.bool("DEBUG", default=True)
SECRET_KEY = env("SECRET_KEY", default="example-project-only-not-a-secret")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1"])

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'example.sqlite3'}")}
# Persistent connections: opening a PostgreSQL connection costs more than a whole
# webhook delivery (see BENCHMARKS.md). Health checks drop a connection the
# server closed (a restart, a killed backend) before a request uses it.
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if pool_size := env.int("DATABASE_POOL_SIZE", default=0):
    if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
        # Said at startup: otherwise every request fails with "'pool' is an invalid keyword".
        raise ImproperlyConfigured(
            "DATABASE_POOL_SIZE needs PostgreSQL (Django's connection pool is psycopg's); "
            f"DATABASE_URL points at {DATABASES['default']['ENGINE'].rsplit('.', 1)[-1]}. "
            "Unset DATABASE_POOL_SIZE, or set CONN_MAX_AGE=0 under ASGI instead."
        )
    # Under ASGI each request runs the view in a thread of its own, and a
    # persistent connection belongs to its thread: connections pile up until the
    # server refuses more. A pool hands connections back after every request.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 1, "max_size": pool_size}
# A database that stops answering must not hold every worker until the server's
# own timeout kills it (the client then gets nothing): bound the wait for a
# connection, a lock and a statement, so a delivery is answered 503 within it.
_wait = env.int("DATABASE_TIMEOUT", default=30)
_options = DATABASES["default"].setdefault("OPTIONS", {})
_engine = DATABASES["default"]["ENGINE"]
if _engine.endswith("postgresql"):
    _options.setdefault("connect_timeout", 5)
    _options.setdefault("options", f"-c statement_timeout={_wait}s -c lock_timeout={_wait}s")
elif _engine.endswith("mysql"):
    _options.setdefault("connect_timeout", 5)
    # MariaDB's names; on MySQL, max_execution_time (milliseconds, SELECTs only).
    _options.setdefault(
        "init_command",
        f"SET SESSION max_statement_time={_wait}, lock_wait_timeout={_wait}, "
        f"innodb_lock_wait_timeout={_wait}",
    )
elif _engine.endswith("sqlite3"):
    # Concurrent deliveries wait their turn for SQLite's single writer
    # instead of failing with "database is locked" (system check W003),
    # for at most _wait seconds.
    _options["transaction_mode"] = "IMMEDIATE"
    _options.setdefault("timeout", _wait)

STRIPE_IDEMPOTENCY = {
    # The local default lets `stripe_demo` sign its own events; for real
    # deliveries set STRIPE_WEBHOOK_SECRET to what `stripe listen` prints.
    "WEBHOOK_SECRETS": env.list("STRIPE_WEBHOOK_SECRET", default=["whsec_example_local_only"]),
    "CLAIM_TTL_SECONDS": env.float("STRIPE_CLAIM_TTL_SECONDS", default=300),
    # None: "<hostname>:<pid>". Name instances when several run on one host.
    "INSTANCE_ID": env("STRIPE_INSTANCE_ID", default=None),
    "PROCESSING": env("STRIPE_PROCESSING", default="inline"),
    # Reaper: how long an accepted event waits for its task before the reaper takes it.
    "PENDING_GRACE_SECONDS": env.float("STRIPE_PENDING_GRACE_SECONDS", default=60),
    # Monitors read /stripe/health/ with this bearer token (none: staff logged in only).
    "HEALTH_TOKENS": env.list("STRIPE_HEALTH_TOKEN", default=[]),
    # Only for fetching from Stripe (a thin event's object); receiving never needs it.
    "API_KEY": env("STRIPE_API_KEY", default=None),
    "API_BASE": env("STRIPE_API_BASE", default=None),
}
# A second endpoint, /stripe/webhook/connect/, for a Connect destination: its own secret.
if env("STRIPE_CONNECT_WEBHOOK_SECRET", default=""):
    STRIPE_IDEMPOTENCY["ENDPOINTS"] = {
        "connect": {"WEBHOOK_SECRETS": env.list("STRIPE_CONNECT_WEBHOOK_SECRET")},
    }

# Deferred processing: the events table itself, Django's Tasks framework (django.tasks on
# Django 6, the django-tasks backport on 5.2), or Celery.
TASK_QUEUE = env("TASK_QUEUE", default="immediate")
_TASKS = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"
TASKS = {
    "default": {
        "BACKEND": {
            "immediate": f"{_TASKS}.backends.immediate.ImmediateBackend",
            "database": "django_tasks_db.DatabaseBackend",
        }.get(TASK_QUEUE, f"{_TASKS}.backends.immediate.ImmediateBackend")
    }
}
if TASK_QUEUE == "table":
    STRIPE_IDEMPOTENCY["ENQUEUE"] = None  # the events table is the queue: no broker to run
if TASK_QUEUE == "celery":
    STRIPE_IDEMPOTENCY["ENQUEUE"] = "stripe_idempotency.contrib.celery.enqueue"
    CELERY_IMPORTS = ["stripe_idempotency.contrib.celery"]  # the workers load the task
    CELERY_BROKER_URL = env("CELERY_BROKER_URL", default="amqp://guest:guest@127.0.0.1:5672//")
    CELERY_TASK_DEFAULT_QUEUE = env("CELERY_QUEUE", default="celery")
    # A broker that is down must not hold the request: one try, then the reaper's turn.
    CELERY_TASK_PUBLISH_RETRY = False
    CELERY_BROKER_CONNECTION_TIMEOUT = 2
    # One message at a time per worker process: a killed process hands back only its own.
    CELERY_WORKER_PREFETCH_MULTIPLIER = 1

# Stands in for the time a real fulfilment takes (calling a warehouse, say).
SHOP_FULFILMENT_SECONDS = env.float("SHOP_FULFILMENT_SECONDS", default=0.05)
# The server tests hold the order email until this file exists (unset: it is sent at once).
SHOP_MAIL_GATE = env("SHOP_MAIL_GATE", default="")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.messages",
    "django.contrib.sessions",
    "django.contrib.staticfiles",
    "stripe_idempotency",
    "example_project.shop",
]
if _TASKS == "django_tasks":
    INSTALLED_APPS.append("django_tasks")
if TASK_QUEUE == "database":
    INSTALLED_APPS.append("django_tasks_db")

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "example_project.urls"
WSGI_APPLICATION = "example_project.wsgi.application"

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

globals().update(
    mail.backend_settings(env("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend"))
)
DEFAULT_FROM_EMAIL = "shop@example.com"

USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # The app's lines carry their fields (event_id, outcome...) in `extra`; this formatter
    # writes them after the message as key=value. A JSON formatter would show them as keys.
    "formatters": {
        "plain": {
            "()": "stripe_idempotency.log.FieldsFormatter",
            "format": "%(levelname)s %(name)s: %(message)s",
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        # Each refused, failed, busy or unavailable delivery: one line with the event id.
        "stripe_idempotency": {"handlers": ["console"], "level": env("LOG_LEVEL", default="WARNING")},
        # Django's own 5xx (a bug outside the app's view, a crash in middleware): with
        # DEBUG off, Django's default logging would only mail them to ADMINS.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
