"""The app's tables."""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from stripe_idempotency.exceptions import LedgerEntryImmutable
from stripe_idempotency.ledger import LEDGER_WRITE, LedgerEntryManager, LedgerEntryQuerySet


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

    def dead(self) -> StripeEventQuerySet:
        """Stale events that reached ``MAX_ATTEMPTS``: the reaper no longer retries them."""
        from stripe_idempotency.conf import app_settings

        return self.stale().filter(attempts__gte=app_settings.MAX_ATTEMPTS)


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


class LedgerBalance(models.Model):
    """The running balance of one account in one currency.

    Every credit and debit locks this row first (``SELECT ... FOR UPDATE``), so
    writers to one account serialise here and entries are appended in the
    order they are applied.
    """

    account = models.CharField(_("account"), max_length=255)
    currency = models.CharField(_("currency"), max_length=3)
    balance = models.BigIntegerField(_("balance"), default=0, help_text=_("In minor units (cents)."))
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("ledger balance")
        verbose_name_plural = _("ledger balances")
        constraints = [
            models.UniqueConstraint(fields=["account", "currency"], name="stripe_ledger_one_balance"),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.currency}: {self.balance}"


class LedgerEntry(models.Model):
    """One movement of money for an account: append-only, in integer minor units.

    ``balance_after`` is the account's balance in ``currency`` once this entry
    is applied: the running sum of ``amount`` in primary-key order. Write
    entries with ``LedgerEntry.objects.credit()`` and ``.debit()`` only.
    """

    account = models.CharField(_("account"), max_length=255, help_text=_("The project's own key."))
    currency = models.CharField(_("currency"), max_length=3, help_text=_("ISO 4217, lower case."))
    amount = models.BigIntegerField(_("amount"), help_text=_("Minor units; negative for a debit."))
    balance_after = models.BigIntegerField(_("balance after"))
    entry_type = models.CharField(_("entry type"), max_length=64)
    # NULL, not "": NULLs never collide in the unique constraint, on every backend.
    reference = models.CharField(  # noqa: DJ001
        _("reference"),
        max_length=255,
        null=True,
        blank=True,
        help_text=_("Idempotency key within account, currency and type; none never collides."),
    )
    event = models.ForeignKey(
        StripeEvent,
        verbose_name=_("Stripe event"),
        null=True,
        blank=True,
        on_delete=models.PROTECT,  # the money trail outlives any clean-up of events
        related_name="ledger_entries",
    )
    created_at = models.DateTimeField(_("created at"), default=timezone.now)
    metadata = models.JSONField(_("metadata"), default=dict, blank=True)

    objects = LedgerEntryManager.from_queryset(LedgerEntryQuerySet)()

    class Meta:
        verbose_name = _("ledger entry")
        verbose_name_plural = _("ledger entries")
        constraints = [
            # NULL references are distinct on every backend, so entries without
            # a reference repeat freely; a partial index would not be enforced
            # on MySQL.
            models.UniqueConstraint(
                fields=["account", "currency", "entry_type", "reference"],
                name="stripe_ledger_unique_reference",
            ),
        ]
        indexes = [
            # The running-sum order that verify_ledger walks.
            models.Index(fields=["account", "currency", "id"], name="stripe_ledger_chain_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.entry_type} {self.amount} {self.currency} for {self.account} ({self.reference})"

    def save(self, *args: Any, ledger_write: object = None, **kwargs: Any) -> None:
        if ledger_write is not LEDGER_WRITE or not self._state.adding:
            raise LedgerEntryImmutable(
                "Ledger entries are written by LedgerEntry.objects.credit()/debit() and never changed."
            )
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise LedgerEntryImmutable("Ledger entries are never deleted; record a reversing entry.")
