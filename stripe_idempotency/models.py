"""The app's tables."""

from __future__ import annotations

from django.db import models
from django.db.models.functions import Now
from django.utils.translation import gettext_lazy as _


class StripeEventQuerySet(models.QuerySet["StripeEvent"]):
    """The states of an event, judged on the database clock."""

    def processed(self) -> StripeEventQuerySet:
        return self.filter(processed_at__isnull=False)

    def claimed(self) -> StripeEventQuerySet:
        """Being processed right now, under a live lease."""
        return self.filter(processed_at__isnull=True, claim_expires_at__gt=Now())

    def stale(self) -> StripeEventQuerySet:
        """Not processed and not under a live lease: released after a failure, or its lease expired."""
        return self.filter(
            models.Q(claim_expires_at__isnull=True) | models.Q(claim_expires_at__lte=Now()),
            processed_at__isnull=True,
        )

    def failed(self) -> StripeEventQuerySet:
        """Stale events whose last dispatch raised."""
        return self.stale().exclude(last_error="")


class StripeEvent(models.Model):
    """One row per Stripe event id: the stored event and the state of its processing.

    The claim columns (``claimed_at``, ``claimed_by``, ``claim_expires_at``,
    ``claim_token``) are written only by :mod:`stripe_idempotency.leases`. An event
    is *processed* when ``processed_at`` is set, *claimed* while
    ``claim_expires_at`` lies in the future, and *stale* otherwise.
    """

    event_id = models.CharField(_("Stripe event id"), max_length=255, unique=True)
    type = models.CharField(_("type"), max_length=255)
    livemode = models.BooleanField(_("live mode"), default=False)
    api_version = models.CharField(_("API version"), max_length=64, blank=True, default="")
    created = models.DateTimeField(
        _("created at Stripe"), null=True, blank=True, help_text=_("The event's own timestamp.")
    )
    payload = models.JSONField(_("payload"), help_text=_("The whole event as Stripe sent it."))
    received_at = models.DateTimeField(_("first received"), db_default=Now())

    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    claimed_by = models.CharField(_("claimed by"), max_length=255, blank=True, default="")
    claim_expires_at = models.DateTimeField(_("claim expires at"), null=True, blank=True)
    claim_token = models.UUIDField(_("claim token"), null=True, blank=True)

    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)
    attempts = models.PositiveIntegerField(
        _("attempts"), default=0, help_text=_("Dispatches started, successful or not.")
    )
    last_error = models.TextField(_("last error"), blank=True, default="")

    objects = StripeEventQuerySet.as_manager()

    class Meta:
        verbose_name = _("Stripe event")
        verbose_name_plural = _("Stripe events")
        indexes = [
            # The reaper asks for "processed_at IS NULL and the lease absent or
            # expired": this index makes that cost what the unprocessed rows
            # cost, whatever the number of processed ones. A plain composite
            # index rather than a partial one, because MySQL has no partial
            # indexes and must be served too.
            models.Index(
                fields=["processed_at", "claim_expires_at"],
                name="stripe_event_unprocessed_idx",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.type})"

    @property
    def is_processed(self) -> bool:
        return self.processed_at is not None
