"""A read-only view of every event and the state of its processing."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from stripe_idempotency import processing
from stripe_idempotency.conf import app_settings
from stripe_idempotency.exceptions import ClaimRequired
from stripe_idempotency.leases import Duplicate
from stripe_idempotency.models import LedgerBalance, LedgerEntry, StripeEvent
from stripe_idempotency.processing import Failed, Processed

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
    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("processed", _("processed")),
            ("claimed", _("being processed")),
            ("stale", _("waiting (not processed, no live claim)")),
            ("failed", _("failed (waiting, last attempt raised)")),
            ("dead", _("dead (MAX_ATTEMPTS reached; replay by hand)")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[StripeEvent]) -> QuerySet[StripeEvent]:
        states = {
            "processed": StripeEvent.objects.processed,
            "claimed": StripeEvent.objects.claimed,
            "stale": StripeEvent.objects.stale,
            "failed": StripeEvent.objects.failed,
            "dead": StripeEvent.objects.dead,
        }
        state = states.get(self.value() or "")
        return queryset & state() if state else queryset


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
        outcomes: dict[str, list[str]] = {"processed": [], "failed": [], "busy": [], "done": []}
        for event in queryset.order_by("id"):
            try:
                outcome = processing.reprocess(event)
            except ClaimRequired:
                self.message_user(
                    request,
                    _(
                        "Events cannot be claimed inside a transaction (ATOMIC_REQUESTS is on): use "
                        "`manage.py reap_stale_claims --reprocess` or `manage.py replay_stripe_event`."
                    ),
                    messages.ERROR,
                )
                return
            kind = {Processed: "processed", Failed: "failed", Duplicate: "done"}.get(type(outcome), "busy")
            outcomes[kind].append(event.event_id)
        reports = [
            ("processed", messages.SUCCESS, _("Processed: %(ids)s.")),
            ("failed", messages.ERROR, _("Failed again (see each event's last error): %(ids)s.")),
            ("busy", messages.WARNING, _("Skipped, being processed by another process: %(ids)s.")),
            ("done", messages.INFO, _("Skipped, already processed: %(ids)s.")),
        ]
        for kind, level, text in reports:
            if outcomes[kind]:
                self.message_user(request, text % {"ids": ", ".join(outcomes[kind])}, level)

    def has_reprocess_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{StripeEvent._meta.app_label}.change_stripeevent")

    @admin.display(description=_("state"))
    def state(self, event: StripeEvent) -> str:
        if event.processed_at is not None:
            return str(_("processed"))
        if event.claim_expires_at is not None:
            return str(_("claimed by %(holder)s") % {"holder": event.claimed_by})
        if event.attempts >= app_settings.MAX_ATTEMPTS:
            return str(_("dead"))
        return str(_("failed")) if event.last_error else str(_("waiting"))

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
