"""System checks for the ``STRIPE_IDEMPOTENCY`` settings.

Ids are stable: ``stripe_idempotency.E001`` means the same thing in every release.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Error, Info, Tags, Warning, register
from django.db import connections, router
from django.utils.module_loading import import_string

from stripe_idempotency import queueing
from stripe_idempotency.backends import SUPPORTED_VENDORS, mysql
from stripe_idempotency.conf import DEFAULTS, SETTINGS_NAME, AppSettings, Setting
from stripe_idempotency.endpoints import ENDPOINT_KEYS, ENDPOINT_NAME, INHERITED, where_of
from stripe_idempotency.event_types import known_event_types
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.signals import connected_types

_ID = "stripe_idempotency.{}"


@register()
def check_settings(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    raw = getattr(settings, SETTINGS_NAME, {})
    if not isinstance(raw, dict):
        return [
            Error(
                f"{SETTINGS_NAME} must be a dict.",
                hint=f'Set {SETTINGS_NAME} = {{"WEBHOOK_SECRETS": ["whsec_..."]}}.',
                id=_ID.format("E002"),
            )
        ]
    messages: list[CheckMessage] = []
    named = raw.get("ENDPOINTS", {})
    for setting in AppSettings.declared():
        if setting is AppSettings.WEBHOOK_SECRETS:
            # With named endpoints, the default one may go unused: no secrets then switch it off.
            messages += _check_secrets(raw, SETTINGS_NAME, required=not named)
        else:
            messages += _problems(setting, raw, SETTINGS_NAME)
    if AppSettings.ENDPOINTS.accepts(named):
        messages += _check_endpoints(named, raw)
    messages += _check_processing(raw)
    messages += _check_health_tokens(raw)
    messages += _check_event_types(raw)
    messages += _unknown_keys(raw, DEFAULTS, SETTINGS_NAME, "W002")
    return messages


def _problems(setting: Setting[Any], config: dict[str, Any], where: str) -> list[CheckMessage]:
    """``setting``'s value in ``config`` (its own, or the default), judged by its declaration."""
    problem = setting.problem(setting.raw(config), where)
    if problem is None:
        return []
    return [Error(problem.message, hint=problem.hint, id=_ID.format(problem.check_id))]


def _unknown_keys(
    config: dict[str, Any], known: Iterable[str], where: str, check_id: str
) -> list[CheckMessage]:
    """A typo in a key would be a setting silently ignored."""
    unknown = sorted(map(str, set(config) - set(known)))
    if not unknown:
        return []
    return [
        Warning(
            f"{where} has unknown keys: {', '.join(unknown)}.",
            hint=f"Known keys: {', '.join(known)}.",
            id=_ID.format(check_id),
        )
    ]


def _check_secrets(config: dict[str, Any], where: str, *, required: bool = True) -> list[CheckMessage]:
    """``config`` holds them: the settings, or one endpoint's dict (``where`` names it). Only a
    ``required`` list must not be empty."""
    messages = _problems(AppSettings.WEBHOOK_SECRETS, config, where)
    secrets = config.get("WEBHOOK_SECRETS", [])
    if messages:
        return messages
    if not secrets and required:
        return [
            Error(
                f"{where}['WEBHOOK_SECRETS'] is empty: every webhook would be rejected.",
                hint="Add the endpoint's signing secret (whsec_...) from the Stripe dashboard "
                "or from `stripe listen`.",
                id=_ID.format("E001"),
            )
        ]
    return [
        Warning(
            f"A value in {where}['WEBHOOK_SECRETS'] does not start with 'whsec_'.",
            hint="Webhook signing secrets start with 'whsec_'; an API key (sk_...) is not a signing secret.",
            id=_ID.format("W001"),
        )
        for secret in secrets
        if not secret.startswith("whsec_")
    ]


def _check_endpoints(named: dict[str, dict[str, Any]], raw: dict[str, Any]) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    owners: dict[str, list[str]] = {}
    for secret in raw.get("WEBHOOK_SECRETS", []) if isinstance(raw.get("WEBHOOK_SECRETS"), list) else []:
        owners.setdefault(secret, []).append("the default endpoint")
    for name, config in named.items():
        where = where_of(name)
        if not isinstance(name, str) or not ENDPOINT_NAME.fullmatch(name):
            messages.append(
                Error(
                    f"{SETTINGS_NAME}['ENDPOINTS'] has the name {name!r}: a name is 1 to 64 letters, "
                    "digits, '-' or '_' (it is a URL segment).",
                    hint="For example 'connect' or 'thin-events'.",
                    id=_ID.format("E019"),
                )
            )
            continue
        messages += _check_secrets(config, where)
        for setting in INHERITED:  # the endpoint's own values; the top-level ones are judged above
            messages += _problems(setting, config, where)
        processing = AppSettings.PROCESSING
        if config.get(processing.name) == "deferred" and processing.raw(raw) != "deferred":
            messages += _check_enqueue(raw)
        messages += _unknown_keys(config, ENDPOINT_KEYS, where, "W007")
        secrets = config.get("WEBHOOK_SECRETS", [])
        for secret in secrets if isinstance(secrets, list) else []:
            owners.setdefault(secret, []).append(f"{name!r}")
    for secret, holders in owners.items():
        if len(holders) > 1 and isinstance(secret, str):
            messages.append(
                Error(
                    f"One signing secret is configured for {' and '.join(holders)}: an event signed for "
                    "one endpoint would be accepted on the other.",
                    hint="Each endpoint (each Stripe event destination) has its own secret: copy each "
                    "from its destination in the Stripe dashboard.",
                    id=_ID.format("E020"),
                )
            )
    return messages


# A token that guards figures about payments: as long as a random 128-bit secret in hex.
HEALTH_TOKEN_MIN_LENGTH = 32


def _check_health_tokens(raw: dict[str, Any]) -> list[CheckMessage]:
    tokens = AppSettings.HEALTH_TOKENS.raw(raw)
    if not AppSettings.HEALTH_TOKENS.accepts(tokens):
        return []  # its declaration's problem, reported already
    if any(len(token) < HEALTH_TOKEN_MIN_LENGTH for token in tokens):
        return [
            Warning(
                f"A token in {SETTINGS_NAME}['HEALTH_TOKENS'] is shorter than "
                f"{HEALTH_TOKEN_MIN_LENGTH} characters: it could be guessed.",
                hint="Make one with `python -c 'import secrets; print(secrets.token_hex(32))'`.",
                id=_ID.format("W006"),
            )
        ]
    return []


def _check_event_types(raw: dict[str, Any]) -> list[CheckMessage]:
    """A receiver of a type Stripe never sends is never called: its events are processed
    without it and are duplicates ever after, the work lost without an error."""
    extra = AppSettings.EXTRA_EVENT_TYPES.raw(raw)
    if not AppSettings.EXTRA_EVENT_TYPES.accepts(extra):
        return []  # its declaration's problem, reported already
    known = known_event_types()
    if not known:  # the installed stripe names no types: nothing to judge against
        return []
    messages: list[CheckMessage] = []
    for event_type in connected_types():
        if event_type in known or event_type in extra:
            continue
        close = difflib.get_close_matches(event_type, known, n=1)
        guess = f"Did you mean {close[0]!r}? " if close else ""
        messages.append(
            Warning(
                f"A receiver is connected to signal_for({event_type!r}), a type the installed stripe "
                "library does not list: its events would be processed without it.",
                hint=f"{guess}If Stripe does send it (a type newer than the library, or your own), "
                f"add it to {SETTINGS_NAME}['EXTRA_EVENT_TYPES'].",
                id=_ID.format("W008"),
            )
        )
    return messages


def _check_processing(raw: dict[str, Any]) -> list[CheckMessage]:
    mode = AppSettings.PROCESSING.raw(raw)
    if mode != "deferred":  # inline, or a value its declaration's check reports
        if "ENQUEUE" in raw:
            return [
                Warning(
                    f"{SETTINGS_NAME}['ENQUEUE'] is set, but PROCESSING is 'inline': nothing is queued.",
                    hint="Set 'PROCESSING': 'deferred' to process events in workers, or remove ENQUEUE.",
                    id=_ID.format("W005"),
                )
            ]
        return []
    messages = _check_enqueue(raw)
    if not messages and AppSettings.ENQUEUE.raw(raw) == AppSettings.ENQUEUE.default:
        messages += _check_tasks_backend()
    return messages


@register(Tags.compatibility, deploy=True)
def check_table_queue(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[CheckMessage]:
    """``manage.py check --deploy``: with no queue, what must run for events to be processed.
    Deploy-time only: every other command would print it too."""
    raw = getattr(settings, SETTINGS_NAME, {})
    if not isinstance(raw, dict) or AppSettings.PROCESSING.raw(raw) != "deferred":
        return []
    if "ENQUEUE" not in raw or raw["ENQUEUE"] is not None:
        return []
    return [
        Info(
            "PROCESSING is 'deferred' with ENQUEUE None: the events table is the queue, and only "
            "`manage.py process_stripe_events` workers process accepted events (no worker running "
            "is the one way for them to wait).",
            hint="Run `python manage.py process_stripe_events --follow` under a supervisor (systemd, "
            "a container), one or more per host; alert on `stripe_events_status "
            "--max-oldest-unprocessed`, which reports the oldest event still waiting.",
            id=_ID.format("I001"),
        )
    ]


def _check_tasks_backend() -> list[CheckMessage]:
    """Deferred through Django's Tasks framework: a configuration that would run the task in
    the request (or not at all) answers Stripe ``accepted`` and then does the work anyway."""
    framework = queueing.tasks_framework()
    assert framework is not None  # _check_enqueue reported its absence
    messages: list[CheckMessage] = []
    if framework.__name__ == "django_tasks" and "django_tasks" not in settings.INSTALLED_APPS:
        messages.append(
            Warning(
                "PROCESSING is 'deferred' through the django-tasks backport, which is not in INSTALLED_APPS.",
                hint="Add 'django_tasks' to INSTALLED_APPS.",
                id=_ID.format("W010"),
            )
        )
    tasks_setting = getattr(settings, "TASKS", None)
    default = tasks_setting.get("default", {}) if isinstance(tasks_setting, dict) else {}
    backend = default.get("BACKEND", "") if isinstance(default, dict) else ""
    if not backend or backend.rpartition(".")[2] == "ImmediateBackend":
        messages.append(
            Warning(
                "PROCESSING is 'deferred', but the TASKS backend runs each task at once, in the "
                f"request that queues it ({'TASKS is not set: ' if not backend else ''}the "
                "ImmediateBackend): Stripe is answered 'accepted' only after the receivers ran.",
                hint="Set TASKS = {'default': {'BACKEND': 'django_tasks_db.DatabaseBackend'}} (pip install "
                "django-tasks-db, add 'django_tasks_db' to INSTALLED_APPS) and run its workers, or "
                "queue through Celery ('ENQUEUE': 'stripe_idempotency.contrib.celery.enqueue').",
                id=_ID.format("W009"),
            )
        )
        return messages
    try:
        import_string(backend)
    except ImportError as exc:
        messages.append(
            Warning(
                f"PROCESSING is 'deferred', but the TASKS backend {backend!r} cannot be imported ({exc}): "
                "every delivery's task is refused, and events wait for the reaper.",
                hint="Install the package that provides it (pip install django-tasks-db for "
                "'django_tasks_db.DatabaseBackend') and add its app to INSTALLED_APPS.",
                id=_ID.format("W011"),
            )
        )
        return messages
    app = backend.partition(".")[0]
    if app == "django_tasks_db" and app not in settings.INSTALLED_APPS:
        messages.append(
            Warning(
                f"PROCESSING is 'deferred' through {backend!r}, but 'django_tasks_db' is not in "
                "INSTALLED_APPS: its table is never created, and every task is refused.",
                hint="Add 'django_tasks_db' to INSTALLED_APPS and run migrate.",
                id=_ID.format("W011"),
            )
        )
    return messages


def _check_enqueue(raw: dict[str, Any]) -> list[CheckMessage]:
    """Deferred processing: the ``ENQUEUE`` callable can be imported (and Django's Tasks are there
    when it is the default)."""
    path = AppSettings.ENQUEUE.raw(raw)
    if path is None or not AppSettings.ENQUEUE.accepts(path):
        return []  # no queue to import (the events table is one), or its declaration's problem
    if path == AppSettings.ENQUEUE.default and queueing.tasks_framework() is None:
        return [
            Error(
                f"{SETTINGS_NAME}['PROCESSING'] is 'deferred', but Django's Tasks framework is missing.",
                hint="Django 6 has django.tasks; on Django 5.2 install django-tasks and add "
                "'django_tasks' to INSTALLED_APPS. Then configure TASKS with a backend that runs "
                "tasks in workers (django-tasks-db, for one), or queue through Celery with "
                "'ENQUEUE': 'stripe_idempotency.contrib.celery.enqueue'.",
                id=_ID.format("E016"),
            )
        ]
    try:
        found = import_string(path)
        if not callable(found):
            raise TypeError(f"{path} is not callable")
    except (ImportError, TypeError) as exc:
        return [
            Error(
                f"{SETTINGS_NAME}['ENQUEUE'] must name a callable (event_id, database): {exc}.",
                hint=AppSettings.ENQUEUE.hint,
                id=_ID.format(AppSettings.ENQUEUE.check_id),
            )
        ]
    return []


@register()
def check_sqlite_transaction_mode(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    alias = router.db_for_write(StripeEvent)
    database = settings.DATABASES.get(alias, {})
    if not database.get("ENGINE", "").endswith("sqlite3"):
        return []
    if str(database.get("OPTIONS", {}).get("transaction_mode", "")).upper() == "IMMEDIATE":
        return []
    return [
        Warning(
            f"The SQLite database {alias!r} does not use IMMEDIATE transactions.",
            hint='Add "OPTIONS": {"transaction_mode": "IMMEDIATE"} to it: with deferred '
            "transactions, concurrent webhook deliveries fail with 'database is locked' "
            "instead of waiting their turn.",
            id=_ID.format("W003"),
        )
    ]


@register(Tags.database)
def check_database_support(
    app_configs: Sequence[AppConfig] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """Every database the app's tables may be written to must have a backend here.

    Without it the first delivery would fail; this says so at deploy time.
    Needs no connection: a backend is chosen by the engine's ``vendor``.
    """
    messages: list[CheckMessage] = []
    for alias in sorted(_writable_aliases()):
        vendor = connections[alias].vendor
        if vendor not in SUPPORTED_VENDORS:
            messages.append(
                Error(
                    f"The database {alias!r} is a {vendor!r} database, which stripe_idempotency "
                    "cannot claim events or write the ledger on.",
                    hint=f"Use one of: {', '.join(SUPPORTED_VENDORS)}; or route the app's models away "
                    "from this database (a router's db_for_write and allow_migrate).",
                    id=_ID.format("E010"),
                )
            )
    return messages


def _writable_aliases() -> set[str]:
    """The aliases a router sends the app's writes to, and those its tables are migrated into."""
    from django.apps import apps

    models = apps.get_app_config("stripe_idempotency").get_models()
    aliases: set[str] = set()
    for model in models:
        aliases.add(router.db_for_write(model))
        aliases.update(alias for alias in connections if router.allow_migrate_model(alias, model))
    return aliases


@register(Tags.database)
def check_identifier_collations(
    app_configs: Sequence[AppConfig] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """On MySQL and MariaDB, every identifier column must compare byte for byte (migration 0003).

    A database check: it runs with ``check --database`` and before ``migrate``, and reads
    the live columns. A warning, not an error, so that ``migrate`` itself can still run and fix it.
    """
    from django.apps import apps

    messages: list[CheckMessage] = []
    for alias in sorted(set(databases or ()) & _writable_aliases()):
        connection = connections[alias]
        if connection.vendor != "mysql":
            continue
        fields = [
            apps.get_model("stripe_idempotency", model)._meta.get_field(name)
            for model, name in mysql.IDENTIFIER_COLUMNS
        ]
        columns = [(field.model._meta.db_table, field.column) for field in fields]
        for (table, column), (_, collation, wanted) in sorted(
            mysql.collations_to_fix(connection, columns).items()
        ):
            messages.append(
                Warning(
                    f"{table}.{column} on the database {alias!r} has the collation {collation}: "
                    "identifiers that differ in case, accents or trailing spaces compare equal there.",
                    hint=f"Run `manage.py migrate stripe_idempotency` (it sets {wanted}).",
                    id=_ID.format("W004"),
                )
            )
    return messages
