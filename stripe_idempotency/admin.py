"""A read-only view of every event and the state of its processing."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.db import router
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from stripe_idempotency import effects, endpoints, outcomes, processing, status
from stripe_idempotency.conf import app_settings
from stripe_idempotency.exceptions import ClaimInsideTransaction
from stripe_idempotency.models import (
    EventEffect,
    EventState,
    EventSyncWatermark,
    LedgerBalance,
    LedgerEntry,
    StripeEvent,
)
from stripe_idempotency.outcomes import error_summary

if TYPE_CHECKING:
    from django.contrib.admin.options import _FieldsetSpec

# Every field shown, all read-only, in the order an operator asks: what is it, where does it
# stand, what went wrong, what did Stripe send.
_EVENT_FIELDSETS: _FieldsetSpec = (
    (
        None,
        {
            "fields": (
                "event_id",
                "type",
                "livemode",
                "api_version",
                "created",
                "received_at",
                "endpoint",
                "account",
                "object_id",
            )
        },
    ),
    (
        _("Processing"),
        {
            "fields": (
                "state",
                "processed_at",
                "superseded_by",
                "attempts_display",
                "next_attempt_at",
                "claimed_by",
                "claimed_at",
                "claim_expires_at",
                "claim_token",
            )
        },
    ),
    (_("Last error"), {"fields": ("error_summary", "last_error_display")}),
    (_("Payload"), {"classes": ("collapse",), "fields": ("payload_display",)}),
)
_ENTRY_FIELDS = (
    "account",
    "currency",
    "amount",
    "balance_after",
    "entry_type",
    "reference",
    "event",
    "created_at",
    "metadata",
)


class StateFilter(admin.SimpleListFilter):
    """The states of :class:`~stripe_idempotency.models.EventState`, as the reaper sees them."""

    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(state.value, _STATE_HELP[state]) for state in EventState]

    def queryset(self, request: HttpRequest, queryset: QuerySet[StripeEvent]) -> QuerySet[StripeEvent]:
        value = self.value()
        if value not in EventState.values:
            return queryset
        return queryset.in_state(value)  # type: ignore[attr-defined,no-any-return]


class EndpointFilter(admin.SimpleListFilter):
    """The configured endpoints, from the settings: no scan of the table for its distinct values."""

    title = _("endpoint")
    parameter_name = "endpoint"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(e.name or "-", e.name or _("default")) for e in endpoints.endpoints()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[StripeEvent]) -> QuerySet[StripeEvent]:
        value = self.value()
        if value is None:
            return queryset
        return queryset.filter(endpoint="" if value == "-" else value)


_STATE_HELP = {
    EventState.PENDING: _("pending (stored, waiting for a worker)"),
    EventState.CLAIMED: _("being processed"),
    EventState.STALE: _("stale (lease expired, not processed)"),
    EventState.FAILED: _("failed (last attempt raised; will be retried)"),
    EventState.DEAD: _("dead (MAX_ATTEMPTS reached; replay by hand)"),
    EventState.PROCESSED: _("processed"),
}


class ReadOnlyAdmin(admin.ModelAdmin):  # type: ignore[type-arg]
    """Shown, never edited: these rows are written by the app's own operations only."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EffectColumns:
    """The columns an effect is shown with, in its list and on its event's page."""

    @admin.display(description=_("state"), ordering="state")
    def state(self, effect: EventEffect) -> str:
        return str(EventState(effect.state).label)  # type: ignore[attr-defined]

    @admin.display(description=_("error"))
    def error(self, effect: EventEffect) -> str:
        if not effect.last_error:
            return "-"
        return Truncator(error_summary(effect.last_error)).chars(ERROR_SUMMARY_CHARS)


class EventEffectInline(EffectColumns, admin.TabularInline):  # type: ignore[type-arg]
    """The effects the event's receivers scheduled, on the event's page."""

    model = EventEffect
    fields = readonly_fields = ("name", "key", "state", "attempts", "completed_at", "error")
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[EventEffect]:
        return super().get_queryset(request).with_state().order_by("pk")  # type: ignore[attr-defined,no-any-return]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = [
        "event_id",
        "type",
        "state",
        "attempts",
        "received_at",
        "processed_at",
        "livemode",
        "endpoint",
        "account",
        "error_summary",
    ]
    list_filter = [
        StateFilter,
        EndpointFilter,
        ("account", admin.EmptyFieldListFilter),
        ("superseded_by", admin.EmptyFieldListFilter),
        "livemode",
        "type",
    ]
    # An account or an object by its exact id: through their indexes.
    search_fields = ["=event_id", "type", "=account", "=object_id"]
    date_hierarchy = "received_at"
    ordering = ["-received_at"]
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    actions = ["reprocess_selected"]
    inlines = [EventEffectInline]
    fieldsets = _EVENT_FIELDSETS
    readonly_fields = flatten_fieldsets(_EVENT_FIELDSETS)
    change_list_template = "admin/stripe_idempotency/stripeevent/change_list.html"

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        """The list, under an overview of the whole table: events by state, the oldest unprocessed."""
        return super().changelist_view(request, {**(extra_context or {}), "overview": _overview()})

    @admin.action(description=_("Reprocess selected events"), permissions=["reprocess"])
    def reprocess_selected(self, request: HttpRequest, queryset: QuerySet[StripeEvent]) -> None:
        """Claim and process each selected event: the path of a delivery and of the reaper."""
        done: dict[outcomes.Report, list[str]] = {}
        for event in queryset.order_by("id"):
            try:
                outcome = processing.reprocess(event)
            except ClaimInsideTransaction:
                self.message_user(
                    request,
                    _(
                        "Events cannot be claimed inside a transaction (ATOMIC_REQUESTS is on): use "
                        "`manage.py reap_stale_claims --reprocess` or `manage.py replay_stripe_event`."
                    ),
                    messages.ERROR,
                )
                return
            done.setdefault(outcomes.report(outcome), []).append(event.event_id)
        # In the table's order; Busy and Fenced share one report, and one message.
        for report in dict.fromkeys(outcomes.REPORTS.values()):
            if report in done:
                ids = ", ".join(done[report])
                self.message_user(request, report.admin_message % {"ids": ids}, report.admin_level)

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{StripeEvent._meta.app_label}.change_stripeevent")

    def get_queryset(self, request: HttpRequest) -> QuerySet[StripeEvent]:
        return super().get_queryset(request).with_state()  # type: ignore[attr-defined,no-any-return]

    @admin.display(description=_("state"), ordering="state")
    def state(self, event: StripeEvent) -> str:
        state = EventState(event.state)  # type: ignore[attr-defined]
        if state is EventState.CLAIMED:
            return str(_("claimed by %(holder)s") % {"holder": event.claimed_by})
        if state is EventState.PROCESSED and event.superseded_by:
            return str(_("superseded by %(later)s (receivers not run)") % {"later": event.superseded_by})
        return str(state.label)

    @admin.display(description=_("attempts"))
    def attempts_display(self, event: StripeEvent) -> str:
        limit = app_settings.MAX_ATTEMPTS
        text = _("%(attempts)s of %(limit)s") % {"attempts": event.attempts, "limit": limit}
        if event.processed_at is None and event.attempts >= limit:
            text += " " + _("(dead: the reaper no longer retries it; a delivery or a replay still may)")
        return str(text)

    @admin.display(description=_("error"))
    def error_summary(self, event: StripeEvent) -> str:
        """The line that names the exception: the last line of the recorded traceback."""
        if not event.last_error:
            return "-"
        return Truncator(error_summary(event.last_error)).chars(ERROR_SUMMARY_CHARS)

    @admin.display(description=_("payload"))
    def payload_display(self, event: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    @admin.display(description=_("last error"))
    def last_error_display(self, event: StripeEvent) -> str:
        if not event.last_error:
            return "-"
        return format_html('<pre style="white-space: pre-wrap">{}</pre>', event.last_error)


ERROR_SUMMARY_CHARS = 100


_EFFECT_RUN_MESSAGES = {
    "processed": (_("Ran: %(keys)s."), messages.SUCCESS),
    "failed": (_("Failed again (see their last error): %(keys)s."), messages.ERROR),
    "dead": (_("Failed again, and dead (see their last error): %(keys)s."), messages.ERROR),
    "fenced": (_("Ran, but another run took them over meanwhile: %(keys)s."), messages.WARNING),
    "busy": (_("Left alone (another process holds them, or they are done): %(keys)s."), messages.WARNING),
}


@admin.register(EventEffect)
class EventEffectAdmin(EffectColumns, ReadOnlyAdmin):
    """Every effect, where it stands, and an action that runs the selected ones now."""

    list_display = ["idempotency_key", "name", "state", "attempts", "scheduled_at", "completed_at", "error"]
    list_filter = [StateFilter, "name"]
    search_fields = ["=idempotency_key", "name"]
    ordering = ["-pk"]
    show_full_result_count = False
    list_select_related = False
    actions = ["run_selected"]
    fields = readonly_fields = (
        "event",
        "name",
        "key",
        "idempotency_key",
        "arguments",
        "state",
        "scheduled_at",
        "attempts",
        "max_attempts",
        "next_attempt_at",
        "claimed_by",
        "claimed_at",
        "claim_expires_at",
        "completed_at",
        "last_error",
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[EventEffect]:
        return super().get_queryset(request).with_state()  # type: ignore[attr-defined,no-any-return]

    @admin.action(description=_("Run the selected effects now"), permissions=["run"])
    def run_selected(self, request: HttpRequest, queryset: QuerySet[EventEffect]) -> None:
        """Claim and run each selected effect (dead ones too): a run like any other, so one held
        by another process, or done, is left alone."""
        ran: dict[str, list[str]] = {}
        for row in queryset.order_by("pk"):
            try:
                outcome = effects.run(row, dead_too=True)
            except ClaimInsideTransaction:
                self.message_user(
                    request, _("Effects cannot be claimed inside a transaction."), messages.ERROR
                )
                return
            ran.setdefault(outcome, []).append(row.idempotency_key)
        for ended, keys in ran.items():
            text, level = _EFFECT_RUN_MESSAGES[ended]
            self.message_user(request, text % {"keys": ", ".join(keys)}, level)

    def has_run_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{EventEffect._meta.app_label}.change_eventeffect")


_ALARMING = (EventState.STALE, EventState.FAILED, EventState.DEAD)
# The overview counts the events processed in the last hour (its caption says so): a count of
# every processed event would read the whole table on each page load (why
# show_full_result_count is off).
OVERVIEW_PROCESSED_SINCE = timedelta(hours=1)


def _overview() -> dict[str, Any]:
    """What the changelist shows above the list: three queries over the unprocessed rows and the
    last hour's, through the events' index; never a count of the whole table."""
    using = router.db_for_read(StripeEvent)
    changelist = reverse("admin:stripe_idempotency_stripeevent_changelist")
    by_state = status.unprocessed_counts(using=using)
    by_state[EventState.PROCESSED] = status.processed_since(using=using, since=OVERVIEW_PROCESSED_SINCE)
    oldest = status.oldest_unprocessed(using=using)
    return {
        "states": [
            {
                "label": _STATE_HELP[state],
                "name": state.label,
                "count": by_state[state],
                "url": f"{changelist}?{urlencode({StateFilter.parameter_name: state.value})}",
                "alarming": state in _ALARMING and by_state[state] > 0,
            }
            for state in EventState
        ],
        "oldest": oldest
        and {
            "event_id": oldest[0],
            "age": status.format_duration(oldest[1]),
            "url": f"{changelist}?{urlencode({'q': oldest[0]})}",
        },
    }


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "account",
        "currency",
        "amount",
        "balance_after",
        "entry_type",
        "reference",
        "created_at",
    ]
    list_filter = ["currency", "entry_type"]
    search_fields = ["=account", "=reference"]
    list_select_related = ["event"]
    ordering = ["-id"]
    show_full_result_count = False
    fields = readonly_fields = _ENTRY_FIELDS


@admin.register(LedgerBalance)
class LedgerBalanceAdmin(ReadOnlyAdmin):
    list_display = ["account", "currency", "balance", "updated_at"]
    list_filter = ["currency"]
    search_fields = ["=account"]
    ordering = ["account", "currency"]
    readonly_fields = ["account", "currency", "balance", "updated_at"]


@admin.register(EventSyncWatermark)
class EventSyncWatermarkAdmin(ReadOnlyAdmin):
    """Where ``sync_stripe_events`` resumes, per endpoint: written by the command only."""

    list_display = ["endpoint_name", "synced_until", "updated_at"]
    fields = readonly_fields = ("endpoint", "synced_until", "updated_at")

    @admin.display(description=_("endpoint"), ordering="endpoint")
    def endpoint_name(self, mark: EventSyncWatermark) -> str:
        return mark.endpoint or str(_("default"))
