"""The app's tables."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce
from operator import or_
from typing import Any, ClassVar

from django.db import models
from django.db.models import Case, ExpressionWrapper, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from stripe_idempotency import fetching
from stripe_idempotency.conf import app_settings
from stripe_idempotency.events import is_thin
from stripe_idempotency.exceptions import LedgerEntryImmutable
from stripe_idempotency.ledger import LedgerEntryManager


class EventState(models.TextChoices):
    """Where an event stands. One definition (:func:`state_conditions`), used everywhere."""

    #: Stored, never claimed (deferred processing: waiting for a worker).
    PENDING = "pending", _("pending")
    #: Under a live lease: being processed right now.
    CLAIMED = "claimed", _("claimed")
    #: Not processed, its lease expired: its holder died or was too slow.
    STALE = "stale", _("stale")
    #: Released after a receiver raised; will be retried.
    FAILED = "failed", _("failed")
    #: ``MAX_ATTEMPTS`` dispatches started and none succeeded: the reaper stops retrying.
    DEAD = "dead", _("dead")
    PROCESSED = "processed", _("processed")


def state_conditions() -> dict[EventState, Q]:
    """Each state as a filter on the database clock; the filters exclude one another.

    Written on the indexed columns (``processed_at``, ``claim_expires_at``)
    so that asking for the unprocessed states uses ``stripe_event_unprocessed_idx``.
    """
    max_attempts = app_settings.MAX_ATTEMPTS
    unprocessed = Q(processed_at__isnull=True)
    no_live_lease = _no_live_lease()
    ever_claimed = Q(claimed_at__isnull=False)
    return {
        EventState.PROCESSED: Q(processed_at__isnull=False),
        EventState.CLAIMED: unprocessed & Q(claim_expires_at__gt=Now()),
        EventState.PENDING: unprocessed & Q(claimed_at__isnull=True, claim_expires_at__isnull=True),
        EventState.DEAD: unprocessed & no_live_lease & ever_claimed & Q(attempts__gte=max_attempts),
        EventState.FAILED: unprocessed
        & ever_claimed
        & Q(claim_expires_at__isnull=True, attempts__lt=max_attempts),
        EventState.STALE: unprocessed & Q(claim_expires_at__lte=Now(), attempts__lt=max_attempts),
    }


class StripeEventQuerySet(models.QuerySet["StripeEvent"]):
    """The states of events, judged in SQL on the database clock."""

    def with_state(self) -> StripeEventQuerySet:
        """Annotate each event with ``state``, an :class:`EventState` value."""
        whens = [When(condition, then=Value(state.value)) for state, condition in state_conditions().items()]
        return self.annotate(state=Case(*whens, output_field=models.CharField()))

    def in_state(self, *states: EventState | str) -> StripeEventQuerySet:
        """Only events in one of ``states``."""
        conditions = state_conditions()
        return self.filter(reduce(or_, (conditions[EventState(state)] for state in states)))

    def claimable(self) -> StripeEventQuerySet:
        """Not processed and not under a live lease: pending, stale, failed or dead. What a claim may take."""
        return self.without_live_lease().filter(processed_at__isnull=True)

    def without_live_lease(self) -> StripeEventQuerySet:
        """No lease, or one that has run out, on the database clock: nobody is processing them."""
        return self.filter(_no_live_lease())

    def processed(self) -> StripeEventQuerySet:
        return self.in_state(EventState.PROCESSED)

    def claimed(self) -> StripeEventQuerySet:
        return self.in_state(EventState.CLAIMED)

    def pending(self) -> StripeEventQuerySet:
        return self.in_state(EventState.PENDING)

    def stale(self) -> StripeEventQuerySet:
        return self.in_state(EventState.STALE)

    def failed(self) -> StripeEventQuerySet:
        return self.in_state(EventState.FAILED)

    def dead(self) -> StripeEventQuerySet:
        return self.in_state(EventState.DEAD)

    def leases_left(self) -> models.QuerySet[StripeEvent, timedelta | None]:
        """Each event's lease left, on the database clock, as a flat list: negative once it has
        run out, ``None`` for an event under no lease."""
        left = ExpressionWrapper(models.F("claim_expires_at") - Now(), output_field=models.DurationField())
        return self.values_list(left, flat=True)

    def about_same_object(self, event: StripeEvent) -> StripeEventQuerySet:
        """The other events about ``event``'s object (none for an event about no object)."""
        if event.object_id is None:
            return self.none()
        return self.filter(object_id=event.object_id).exclude(pk=event.pk)

    def processed_later_than(self, event: StripeEvent) -> StripeEventQuerySet:
        """The processed events about ``event``'s object that Stripe created in a later second than
        it, latest first; none for an event with no ``created``. Events of one second are
        ordered by no one: Stripe's ``created`` has one-second resolution
        (:mod:`stripe_idempotency.ordering`)."""
        if event.created is None:
            return self.none()
        return (
            self.about_same_object(event)
            .filter(created__gte=_next_second(event.created), processed_at__isnull=False)
            .order_by(models.F("created").desc(), models.F("processed_at").desc())
        )


def _no_live_lease() -> Q:
    return Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lte=Now())


def _next_second(when: datetime) -> datetime:
    return when.replace(microsecond=0) + timedelta(seconds=1)


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
    endpoint = models.CharField(
        _("endpoint"),
        max_length=64,
        blank=True,
        default="",
        db_default="",  # raw INSERTs (the benchmarks' baselines, a project's own) need no change
        help_text=_("The endpoint that received it (a name of ENDPOINTS); empty for the default one."),
    )
    # NULL, not "": the platform's own events have no account and some events no object;
    # NULL says "none", as Stripe's null does.
    account = models.CharField(  # noqa: DJ001
        _("connected account"),
        max_length=255,
        null=True,
        blank=True,
        help_text=_("Connect: the account the event is about (account, or a thin event's context)."),
    )
    object_id = models.CharField(  # noqa: DJ001
        _("object id"),
        max_length=255,
        null=True,
        blank=True,
        help_text=_("The object the event is about (data.object.id, or related_object.id)."),
    )

    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    claimed_by = models.CharField(_("claimed by"), max_length=255, blank=True, default="")
    claim_expires_at = models.DateTimeField(_("claim expires at"), null=True, blank=True)
    claim_token = models.UUIDField(_("claim token"), null=True, blank=True)

    processed_at = models.DateTimeField(_("processed at"), null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        _("next attempt"),
        null=True,
        blank=True,
        help_text=_("After a failure: when the reaper tries again (deliveries do not wait)."),
    )
    attempts = models.PositiveIntegerField(
        _("attempts"), default=0, help_text=_("Dispatches started, successful or not.")
    )
    last_error = models.TextField(_("last error"), blank=True, default="")
    superseded_by = models.CharField(  # noqa: DJ001
        _("superseded by"),
        max_length=255,
        null=True,
        blank=True,
        help_text=_(
            "Completed without running its receivers: this later event about the same object "
            "was processed first (ORDERING 'skip_superseded')."
        ),
    )

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
            # A connected account's events (the admin's filter, a receiver's scope).
            models.Index(fields=["account", "received_at"], name="stripe_event_account_idx"),
            # An object's events in Stripe's order.
            models.Index(fields=["object_id", "created"], name="stripe_event_object_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_id} ({self.type})"

    @property
    def is_processed(self) -> bool:
        return self.processed_at is not None

    @property
    def is_thin(self) -> bool:
        """Whether the event is a thin event notification (``"object": "v2.core.event"``)."""
        return is_thin(self.payload)

    def latest_processed(self) -> StripeEvent | None:
        """The processed event about the same object (``object_id``) that Stripe created last,
        other than this one; ``None`` if there is none, or if this event is about no object.
        Ties in ``created`` go to the one processed last. Inside a receiver, this reads what
        is committed (and this transaction's own work)."""
        return (
            StripeEvent.objects.using(self._state.db)
            .about_same_object(self)
            .filter(processed_at__isnull=False)
            .order_by(models.F("created").desc(nulls_last=True), models.F("processed_at").desc())
            .first()
        )

    def superseded(self) -> bool:
        """Whether an event about the same object, created in a later second than this one, is
        processed already: the object's state in this event's payload is older than what the
        receivers saw last. Events of one second supersede neither one another (Stripe's
        ``created`` has one-second resolution). ``False`` for an event about no object."""
        return StripeEvent.objects.using(self._state.db).processed_later_than(self).exists()

    def fetch_event(self, *, api_key: str | None = None) -> Any:
        """The event as Stripe's API has it now, through a ``stripe.StripeClient`` with the
        ``API_KEY`` setting (or ``api_key``): a thin event's full event, with its ``data`` and
        ``changes``; a snapshot event's ``/v1/events`` object. A request to Stripe each call."""
        return fetching.fetch_event(self.payload, account=self.account, api_key=api_key)

    def fetch_related_object(self, *, api_key: str | None = None) -> Any:
        """A thin event's object (``related_object``) as Stripe's API has it now; ``None`` for a
        thin event about no object. A request to Stripe each call."""
        return fetching.fetch_related_object(self.payload, api_key=api_key)


_USE_CREDIT_OR_DEBIT = "Write ledger entries with LedgerEntry.objects.credit() or .debit()."


class LedgerEntryQuerySet(models.QuerySet["LedgerEntry"]):
    """Ledger entries are append-only: no bulk updates or deletes."""

    def update(self, **kwargs: Any) -> int:
        raise LedgerEntryImmutable("Ledger entries are never updated; record a reversing entry.")

    def bulk_update(self, *args: Any, **kwargs: Any) -> int:
        raise LedgerEntryImmutable("Ledger entries are never updated; record a reversing entry.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise LedgerEntryImmutable("Ledger entries are never deleted; record a reversing entry.")

    delete.queryset_only = True  # type: ignore[attr-defined]

    # The generic ways to write rows would skip the balance: refuse them.
    def create(self, **kwargs: Any) -> LedgerEntry:
        raise LedgerEntryImmutable(_USE_CREDIT_OR_DEBIT)

    def bulk_create(self, *args: Any, **kwargs: Any) -> list[LedgerEntry]:
        raise LedgerEntryImmutable(_USE_CREDIT_OR_DEBIT)

    def get_or_create(self, *args: Any, **kwargs: Any) -> tuple[LedgerEntry, bool]:
        raise LedgerEntryImmutable(_USE_CREDIT_OR_DEBIT)

    def update_or_create(self, *args: Any, **kwargs: Any) -> tuple[LedgerEntry, bool]:
        raise LedgerEntryImmutable(_USE_CREDIT_OR_DEBIT)


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
    #: The running balances these entries move: the manager's rules lock and update its rows.
    balance_model: ClassVar[type[LedgerBalance]] = LedgerBalance

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

    def save(self, *args: Any, **kwargs: Any) -> None:
        # The ledger's rules insert entries themselves, past this method: every caller of it is
        # refused, so no code but theirs writes an entry, and none changes one.
        raise LedgerEntryImmutable(
            "Ledger entries are written by LedgerEntry.objects.credit()/debit() and never changed."
        )

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise LedgerEntryImmutable("Ledger entries are never deleted; record a reversing entry.")


class EventSyncWatermark(models.Model):
    """How far ``sync_stripe_events`` has caught up with Stripe's Events API, per endpoint: every
    event Stripe created before ``synced_until`` was listed and is stored (processed, or left to
    the reaper). A scheduled run without ``--since`` starts here."""

    endpoint = models.CharField(
        _("endpoint"),
        max_length=64,
        unique=True,
        blank=True,
        help_text=_("The endpoint the events were fed to (a name of ENDPOINTS); empty for the default one."),
    )
    synced_until = models.DateTimeField(_("synced until"))
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("events sync watermark")
        verbose_name_plural = _("events sync watermarks")

    def __str__(self) -> str:
        return f"{self.endpoint or 'default'}: {self.synced_until:%Y-%m-%d %H:%M:%S}"


class PruneWatermark(models.Model):
    """The latest cutoff ``prune_stripe_events`` deleted processed events before (one row): their
    ids are forgotten, so ``sync_stripe_events`` never lists events Stripe created before it
    (it would run them again)."""

    pruned_before = models.DateTimeField(_("pruned before"))
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        verbose_name = _("prune watermark")
        verbose_name_plural = _("prune watermarks")

    def __str__(self) -> str:
        return f"pruned before {self.pruned_before:%Y-%m-%d %H:%M:%S}"
