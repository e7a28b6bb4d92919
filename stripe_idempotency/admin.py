"""A read-only view of every event and the state of its processing."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from stripe_idempotency import outcomes, processing
from stripe_idempotency.exceptions import ClaimInsideTransaction
from stripe_idempotency.models import EventState, LedgerBalance, LedgerEntry, StripeEvent

# Every field shown, all read-only.
_EVENT_FIELDS = (
    "event_id",
    "type",
    "livemode",
    "api_version",
    "created",
    "received_at",
    "processed_at",
    "attempts",
    "next_attempt_at",
    "claimed_at",
    "claimed_by",
    "claim_expires_at",
    "claim_token",
    "last_error_display",
    "payload_display",
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


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ["event_id", "type", "state", "attempts", "received_at", "processed_at", "livemode"]
    list_filter = [StateFilter, "livemode", "type"]
    search_fields = ["=event_id", "type"]
    date_hierarchy = "received_at"
    ordering = ["-received_at"]
    show_full_result_count = False  # no COUNT(*) over a large table on every page
    actions = ["reprocess_selected"]
    fields = readonly_fields = _EVENT_FIELDS

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
        return str(state.label)

    @admin.display(description=_("payload"))
    def payload_display(self, event: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(event.payload, indent=2, sort_keys=True))

    @admin.display(description=_("last error"))
    def last_error_display(self, event: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", event.last_error) if event.last_error else "-"


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
