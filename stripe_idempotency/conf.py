"""The ``STRIPE_IDEMPOTENCY`` settings, each declared once.

A declaration (a :class:`Setting` attribute of :class:`AppSettings`) gives a key its default,
the values it takes, the system check that reports any other (``stripe_idempotency.E0xx``) and a
line saying what it does. The typed accessors, the checks of each value's type and bounds, and
the settings tables of the README and ``docs/settings.md`` (checked by a test) all come from it.

Every value is read from ``django.conf.settings`` when it is asked for, never frozen at import
time, so ``override_settings`` works in tests. A value the declaration refuses raises
:class:`~stripe_idempotency.exceptions.SettingInvalid` when it is read: never a silent fallback.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Self, TypeVar, overload

from django.conf import settings

from stripe_idempotency.exceptions import SettingInvalid

T = TypeVar("T")

SETTINGS_NAME = "STRIPE_IDEMPOTENCY"

#: The values of ``PROCESSING``.
PROCESSING_MODES = ("inline", "deferred")
#: The values of ``PAYLOAD``: which payload family an endpoint takes.
PAYLOAD_FAMILIES = ("snapshot", "thin", "any")
OrderingMode = Literal["serialize", "skip_superseded"]
#: The values of ``ORDERING`` (:mod:`stripe_idempotency.ordering`).
ORDERING_MODES: tuple[OrderingMode, ...] = ("serialize", "skip_superseded")

# The host name does not change while a process runs; the pid does change
# across fork (gunicorn preloads, then forks its workers), so it is read per call.
_HOSTNAME = socket.gethostname()
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Problem:
    """Why a value is refused, as its system check says it."""

    check_id: str
    message: str
    hint: str


class Setting(Generic[T]):
    """One key of ``STRIPE_IDEMPOTENCY``: its default, the values it takes (``must`` says which),
    the check id that reports any other, and what it does (``doc``). A ``secret`` value is never
    repeated in a message."""

    name: str

    def __init__(
        self, default: Any, *, check_id: str, must: str, doc: str, hint: str = "", secret: bool = False
    ) -> None:
        self.default = default
        self.check_id = check_id
        self.must = must
        self.doc = doc
        self.hint = hint or f"The default is {default!r}."
        self.secret = secret

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Self: ...

    @overload
    def __get__(self, instance: AppSettings, owner: type) -> T: ...

    def __get__(self, instance: AppSettings | None, owner: type) -> Self | T:
        if instance is None:
            return self
        return self.read(instance.user_settings())

    def read(
        self,
        config: Mapping[str, Any],
        *,
        inherit: Mapping[str, Any] | None = None,
        where: str = SETTINGS_NAME,
    ) -> T:
        """The value ``config`` gives this key (else ``inherit`` does, else the default), converted;
        :class:`SettingInvalid` if it is not one the key takes (``where`` names ``config`` then)."""
        value = self.raw(config, inherit=inherit)
        problem = self.problem(value, where)
        if problem is not None:
            raise SettingInvalid(
                f"{problem.message.removesuffix('.')} (system check stripe_idempotency.{problem.check_id})."
            )
        return self.convert(value)

    def raw(self, config: Mapping[str, Any], *, inherit: Mapping[str, Any] | None = None) -> Any:
        """The value as configured, unconverted: ``config``'s, else ``inherit``'s, else the default."""
        value = config.get(self.name, _MISSING)
        if value is _MISSING and inherit is not None:
            value = inherit.get(self.name, _MISSING)
        return self.default if value is _MISSING else value

    def problem(self, value: Any, where: str) -> Problem | None:
        """Why ``value``, under ``where`` (the settings, or one endpoint's dict), is refused;
        ``None`` if it is one this key takes."""
        return None if self.accepts(value) else self.refusal(value, where)

    def refusal(self, value: Any, where: str) -> Problem:
        """The declared check's message for ``value``: what the key must be, and what it is."""
        shown = f"a {type(value).__name__}" if self.secret else repr(value)
        message = f"{where}['{self.name}'] must be {self.must}; it is {shown}."
        return Problem(self.check_id, message, self.hint)

    def accepts(self, value: Any) -> bool:
        raise NotImplementedError

    @property
    def shown_default(self) -> str:
        """The default as the settings tables of the README and the docs show it."""
        return "None" if self.default is None else json.dumps(self.default)

    def convert(self, value: Any) -> T:
        return value  # type: ignore[no-any-return]


class Number(Setting[float]):
    """Seconds, fractions allowed: greater than ``minimum`` (durations), or at least it."""

    def __init__(self, default: float, *, minimum: float, strict: bool, **declared: Any) -> None:
        bound = f"greater than {minimum}" if strict else f"at least {minimum}"
        super().__init__(default, must=f"a number {bound}", **declared)
        self.minimum, self.strict = minimum, strict

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return value > self.minimum if self.strict else value >= self.minimum

    def convert(self, value: Any) -> float:
        return float(value)


class WholeNumber(Setting[int]):
    """A count or a size: a whole number, at least ``minimum``."""

    def __init__(self, default: int, *, minimum: int, **declared: Any) -> None:
        super().__init__(default, must=f"a whole number at least {minimum}", **declared)
        self.minimum = minimum

    def accepts(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum


class Choice(Setting[str]):
    """One of ``choices``."""

    def __init__(self, default: str, *, choices: tuple[str, ...], **declared: Any) -> None:
        *first, last = map(repr, choices)
        super().__init__(default, must=f"{', '.join(first)} or {last}", **declared)
        self.choices = choices

    def accepts(self, value: Any) -> bool:
        return value in self.choices


class Mode(Setting["bool | None"]):
    """``None``, ``True`` or ``False``."""

    def __init__(self, **declared: Any) -> None:
        super().__init__(None, must="None, True or False", **declared)

    def accepts(self, value: Any) -> bool:
        return value is None or isinstance(value, bool)


class OptionalText(Setting["str | None"]):
    """A string, or ``None``; an empty string is ``None`` (an environment variable left empty)."""

    def __init__(self, **declared: Any) -> None:
        super().__init__(None, must="a string or None", **declared)

    def accepts(self, value: Any) -> bool:
        return value is None or isinstance(value, str)

    def convert(self, value: Any) -> str | None:
        return value or None


class InstanceId(Setting[str]):
    """A non-empty string, or ``None`` for ``"<hostname>:<pid>"`` (the pid read per call: it changes
    across fork)."""

    def __init__(self, **declared: Any) -> None:
        super().__init__(None, must="a non-empty string or None", **declared)

    def accepts(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and bool(value))

    def convert(self, value: Any) -> str:
        return str(value) if value else f"{_HOSTNAME}:{os.getpid()}"

    @property
    def shown_default(self) -> str:
        return '"<hostname>:<pid>"'


class Texts(Setting[list[str]]):
    """A list (or tuple) of strings, never a lone string (it would be read character by
    character). With ``item_check_id``, each string must hold more than blanks: an empty signing
    secret is one anybody can sign with."""

    def __init__(self, *, must: str, item_check_id: str = "", item_hint: str = "", **declared: Any) -> None:
        super().__init__([], must=must, **declared)
        self.item_check_id, self.item_hint = item_check_id, item_hint

    def problem(self, value: Any, where: str) -> Problem | None:
        if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
            return self.refusal(value, where)
        if self.item_check_id and not all(item.strip() for item in value):
            return Problem(
                self.item_check_id, f"{where}['{self.name}'] contains an empty value.", self.item_hint
            )
        return None

    def accepts(self, value: Any) -> bool:
        return self.problem(value, SETTINGS_NAME) is None

    def convert(self, value: Any) -> list[str]:
        return list(value)


class Table(Setting[dict[str, Any]]):
    """A dict whose every entry ``entry(key, value)`` accepts."""

    def __init__(self, *, must: str, entry: Callable[[Any, Any], bool], **declared: Any) -> None:
        super().__init__({}, must=must, **declared)
        self.entry = entry

    def accepts(self, value: Any) -> bool:
        return isinstance(value, dict) and all(self.entry(key, item) for key, item in value.items())


class DottedPath(Setting[str | None]):
    """The dotted path of a callable (imported, and so checked, by the system checks only), or
    ``None`` where ``none`` says what ``None`` means."""

    def __init__(self, default: str, *, none: str, **declared: Any) -> None:
        super().__init__(default, must=f"a dotted path to a callable, or None ({none})", **declared)

    def accepts(self, value: Any) -> bool:
        return value is None or (isinstance(value, str) and bool(value))


class AppSettings:
    """The declared settings, read from the ``STRIPE_IDEMPOTENCY`` dict each time one is asked for."""

    WEBHOOK_SECRETS = Texts(
        must="a list of strings",
        check_id="E011",
        hint='Write ["whsec_..."], even for a single secret.',
        item_check_id="E012",
        item_hint="Each secret is a string such as 'whsec_...'.",
        secret=True,
        doc="Signing secrets (``whsec_...``); an event signed with any of them is accepted, so a "
        "secret can be rolled without losing events.",
    )
    TOLERANCE_SECONDS = WholeNumber(
        300, minimum=1, check_id="E004", doc="How old a signature's timestamp may be (replay protection)."
    )
    CLAIM_TTL_SECONDS = Number(
        300,
        minimum=0,
        strict=True,
        check_id="E003",
        doc="The lease: how long one instance owns an event it is processing.",
    )
    RETRY_AFTER_MAX_SECONDS = WholeNumber(
        60, minimum=1, check_id="E005", doc="The cap on the ``Retry-After`` header of a 503 answer."
    )
    MAX_BODY_BYTES = WholeNumber(
        1024 * 1024,
        minimum=1,
        check_id="E006",
        doc="Larger request bodies are answered 413 without being read in full.",
    )
    LIVEMODE = Mode(
        check_id="E007",
        hint="None accepts both live and test events.",
        doc="``True`` or ``False`` accepts only live or only test events; ``None`` both.",
    )
    INSTANCE_ID = InstanceId(
        check_id="E008",
        hint="None uses '<hostname>:<pid>'.",
        doc="Written to ``claimed_by``: which process holds a claim (``None``: ``<hostname>:<pid>``).",
    )
    MAX_ATTEMPTS = WholeNumber(
        20,
        minimum=1,
        check_id="E009",
        doc="Dispatches after which the reaper stops reprocessing an event and reports it dead.",
    )
    RETRY_HORIZON_SECONDS = Number(
        3 * 24 * 3600,
        minimum=0,
        strict=True,
        check_id="E013",
        doc="The span of the reaper's retries of a failing event, its delays doubling (default 3 days, "
        "Stripe's own retry window).",
    )
    PROCESSING = Choice(
        "inline",
        choices=PROCESSING_MODES,
        check_id="E014",
        hint="'inline' (the default) runs the receivers inside Stripe's request.",
        doc="``'inline'``: receivers run inside Stripe's request. ``'deferred'``: the event is stored, "
        "acknowledged, and processed by a task (:mod:`stripe_idempotency.tasks`).",
    )
    PENDING_GRACE_SECONDS = Number(
        60,
        minimum=0,
        strict=False,
        check_id="E015",
        doc="How long the reaper leaves an accepted, never-claimed event to its task before it takes "
        "the event itself (the task may be queued still, or lost).",
    )
    ENQUEUE = DottedPath(
        "stripe_idempotency.tasks.enqueue_django_task",
        none="the events table is the queue",
        check_id="E017",
        hint="'stripe_idempotency.tasks.enqueue_django_task' (the default), "
        "'stripe_idempotency.contrib.celery.enqueue' (Celery installed), or None (no queue: "
        "run manage.py process_stripe_events).",
        doc="The callable ``(event_id, database)`` that queues an accepted event's task: Django's "
        "Tasks framework by default, Celery through ``'stripe_idempotency.contrib.celery.enqueue'``; "
        "``None``: nothing is queued, accepted events wait in the events table for "
        "``manage.py process_stripe_events`` (:mod:`stripe_idempotency.worker`).",
    )
    ENQUEUE_TIMEOUT_SECONDS = Number(
        5,
        minimum=0,
        strict=True,
        check_id="E024",
        doc="How long a deferred delivery waits for its queue to take the event: past it the delivery "
        "is answered ``accepted`` anyway (the row is committed; the reaper takes it).",
    )
    HEALTH_TOKENS = Texts(
        must="a list of non-empty strings",
        check_id="E018",
        hint="Write [env('STRIPE_HEALTH_TOKEN')], even for a single token.",
        item_check_id="E018",
        item_hint="Write [env('STRIPE_HEALTH_TOKEN')], even for a single token.",
        secret=True,
        doc="Bearer tokens that may read :class:`~stripe_idempotency.health.HealthView` (monitors); "
        "staff with the permission to view events may read it logged in.",
    )
    PAYLOAD = Choice(
        "any",
        choices=PAYLOAD_FAMILIES,
        check_id="E021",
        hint="'snapshot': events with data.object (\"object\": \"event\"); 'thin': event "
        'notifications ("object": "v2.core.event"); \'any\' (the default): both.',
        doc='Which event payloads the default endpoint takes: ``\'snapshot\'`` (``"object": "event"``), '
        "``'thin'`` (``\"object\": \"v2.core.event\"``) or ``'any'``.",
    )
    ENDPOINTS = Table(
        must="a dict: endpoint name -> a dict of its settings",
        entry=lambda name, config: isinstance(config, dict),
        check_id="E019",
        hint='{"connect": {"WEBHOOK_SECRETS": ["whsec_..."]}}',
        doc="Named endpoints, each served at ``webhook/<name>/``: name -> a dict with its own "
        "``WEBHOOK_SECRETS`` and, defaulting to the top-level ones, ``LIVEMODE``, ``PAYLOAD`` and "
        "``PROCESSING`` (:mod:`stripe_idempotency.endpoints`).",
    )
    API_KEY = OptionalText(
        check_id="E025",
        secret=True,
        hint="A restricted key that can read events and the objects you fetch is enough.",
        doc="A secret or restricted API key, for fetching from Stripe only (a thin event's event and "
        "object); never needed to receive events.",
    )
    API_BASE = OptionalText(
        check_id="E026",
        hint="None is Stripe's own API.",
        doc="Where the API is, for fetching: ``None`` is Stripe's; a local fake Stripe (stripe-mock, "
        "localstripe) in development and tests.",
    )
    ORDERING = Table(
        must="a dict: event type or pattern -> 'serialize' or 'skip_superseded'",
        entry=lambda pattern, mode: isinstance(pattern, str) and bool(pattern) and mode in ORDERING_MODES,
        check_id="E022",
        hint="'serialize' runs one event of an object at a time; 'skip_superseded' also completes "
        "an event without its receivers once a later event of its object is processed.",
        doc="Event type (or ``fnmatch`` pattern such as ``'customer.subscription.*'``) -> "
        "``'serialize'`` or ``'skip_superseded'``: per-object ordering (:mod:`stripe_idempotency.ordering`).",
    )
    EXTRA_EVENT_TYPES = Texts(
        must="a list of event type names",
        check_id="E023",
        hint="For example ['invoice.overdue'] for a type newer than the installed stripe library.",
        item_check_id="E023",
        item_hint="For example ['invoice.overdue'] for a type newer than the installed stripe library.",
        doc="Event types the project receives that the installed ``stripe`` does not list (newer than "
        "it, or the project's own): receivers may connect to them without warning W008.",
    )

    @classmethod
    def declared(cls) -> list[Setting[Any]]:
        """Every declared setting, in declaration order."""
        return [value for value in vars(cls).values() if isinstance(value, Setting)]

    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, SETTINGS_NAME, {})
        return value if isinstance(value, dict) else {}


#: Every key the app reads, with its default.
DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in AppSettings.declared()}

app_settings = AppSettings()
