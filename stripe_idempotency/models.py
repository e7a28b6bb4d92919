"""The app's tables."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import reduce
from operator import or_
from typing import Any, ClassVar, Protocol, Self, TypeVar, cast

from django.db import models
from django.db.models import Case, ExpressionWrapper, F, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from stripe_idempotency import fetching
from stripe_idempotency.conf import app_settings
from stripe_idempotency.events import is_thin
from stripe_idempotency.exceptions import LedgerEntryImmutable
from stripe_idempotency.ledger import LedgerEntryManager

_Row = TypeVar("_Row", bound=models.Model)


class EventState(models.TextChoices):
    """Where an event (or an effect) stands. One definition (:func:`state_conditions`), used
    everywhere."""

    #: Stored, never claimed (deferred processing, or an effect: waiting for a worker).
    PENDING = "pending", _("pending")
    #: Under a live lease: being processed right now.
    CLAIMED = "claimed", _("claimed")
    #: Not processed, its lease expired: its holder died or was too slow.
    STALE = "stale", _("stale")
    #: Released after a receiver (an effect) raised; will be retried.
    FAILED = "failed", _("failed")
    #: ``MAX_ATTEMPTS`` runs started and none succeeded: the reaper stops retrying.
    DEAD = "dead", _("dead")
    PROCESSED = "processed", _("processed")


def state_conditions(*, done: str = "processed_at", dead_after: int | F | None = None) -> dict[EventState, Q]:
    """Each state as a filter on the database clock; the filters exclude one another.

    ``done`` is the column set when the work is done (an event's ``processed_at``, an effect's
    ``completed_at``), ``dead_after`` the attempts that make a row dead (``MAX_ATTEMPTS``, or
    an effect's own ``max_attempts`` column). Written on the indexed columns (``done``,
    ``claim_expires_at``) so that asking for the unfinished states uses their index.
    """
    limit = app_settings.MAX_ATTEMPTS if dead_after is None else dead_after
    unfinished = Q(**{f"{done}__isnull": True})
    no_live_lease = _no_live_lease()
    ever_claimed = Q(claimed_at__isnull=False)
    return {
        EventState.PROCESSED: Q(**{f"{done}__isnull": False}),
        EventState.CLAIMED: unfinished & Q(claim_expires_at__gt=Now()),
        EventState.PENDING: unfinished & Q(claimed_at__isnull=True, claim_expires_at__isnull=True),
        EventState.DEAD: unfinished & no_live_lease & ever_claimed & Q(attempts__gte=limit),
        EventState.FAILED: unfinished & ever_claimed & Q(claim_expires_at__isnull=True, attempts__lt=limit),
        EventState.STALE: unfinished & Q(claim_expires_at__lte=Now(), attempts__lt=limit),
    }


class Leased(Protocol):
    """What the states need of a table worked under leases (events, effects)."""

    #: The column set when the row's work is done.
    done_field: ClassVar[str]

    @classmethod
    def dead_after(cls) -> int | F:
        """The attempts after which a row is dead."""
        ...


class LeasedQuerySet(models.QuerySet[_Row]):
    """The states of rows worked under leases, judged in SQL on the database clock."""

    def _conditions(self) -> dict[EventState, Q]:
        model = cast("type[Leased]", self.model)
        return state_conditions(done=model.done_field, dead_after=model.dead_after())

    def with_state(self) -> Self:
        """Annotate each row with ``state``, an :class:`EventState` value."""
        whens = [When(condition, then=Value(state.value)) for state, condition in self._conditions().items()]
        return self.annotate(state=Case(*whens, output_field=models.CharField()))

    def in_state(self, *states: EventState | str) -> Self:
        """Only rows in one of ``states``."""
        conditions = self._conditions()
        return self.filter(reduce(or_, (conditions[EventState(state)] for state in states)))

    def claimable(self) -> Self:
        """Not done and not under a live lease: pending, stale, failed or dead. What a claim may take."""
        done = cast("type[Leased]", self.model).done_field
        return self.without_live_lease().filter(**{f"{done}__isnull": True})

    def without_live_lease(self) -> Self:
        """No lease, or one that has run out, on the database clock: nobody is working on them."""
        return self.filter(_no_live_lease())

    def processed(self) -> Self:
        return self.in_state(EventState.PROCESSED)

    def claimed(self) -> Self:
        return self.in_state(EventState.CLAIMED)

    def pending(self) -> Self:
        return self.in_state(EventState.PENDING)

    def stale(self) -> Self:
        return self.in_state(EventState.STALE)

    def failed(self) -> Self:
        return self.in_state(EventState.FAILED)

    def dead(self) -> Self:
        return self.in_state(EventState.DEAD)

    def leases_left(self) -> models.QuerySet[_Row, timedelta | None]:
        """Each row's lease left, on the database clock, as a flat list: negative once it has
        run out, ``None`` for a row under no lease."""
        left = ExpressionWrapper(models.F("claim_expires_at") - Now(), output_field=models.DurationField())
        return self.values_list(left, flat=True)


class StripeEventQuerySet(LeasedQuerySet["StripeEvent"]):
    """The states of events, and the questions ordering asks about an object's events."""

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
    done_field: ClassVar[str] = "processed_at"

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

    @classmethod
    def dead_after(cls) -> int:
        """An event is dead after ``MAX_ATTEMPTS`` dispatches."""
        return app_settings.MAX_ATTEMPTS

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


class EventEffectQuerySet(LeasedQuerySet["EventEffect"]):
    """The states of effects, and the ones a worker should run now."""

    def due(self) -> EventEffectQuerySet:
        """Effects to run now: not done, under no live lease, not dead, and past their backoff
        after a failure. Served by ``stripe_effect_unfinished_idx``."""
        return (
            self.claimable()
            .filter(attempts__lt=F("max_attempts"))
            .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=Now()))
        )


class EventEffect(models.Model):
    """Work outside the database that an event's receivers scheduled (an email, a call to an
    API): stored in their transaction, run after it commits, until one run succeeds.

    A row exists exactly when the receivers' work committed. Its runs are claimed as events
    are (``claimed_at``, ``claimed_by``, ``claim_expires_at``, ``claim_token``, written only
    by :mod:`stripe_idempotency.leases`); ``completed_at`` is set, fenced by the claim, when a
    run succeeded. ``idempotency_key`` is the same on every run: the target's guard against
    the one repeat a lease cannot prevent (a run that did the work and died before recording it).
    """

    event = models.ForeignKey(
        StripeEvent,
        verbose_name=_("Stripe event"),
        on_delete=models.CASCADE,  # pruning deletes an event's effects only once all are done
        related_name="effects",
    )
    name = models.CharField(_("effect"), max_length=200, help_text=_("The registered effect's name."))
    key = models.CharField(
        _("key"), max_length=100, help_text=_("Tells one event's effects of a name apart.")
    )
    idempotency_key = models.CharField(
        _("idempotency key"),
        max_length=255,
        unique=True,
        help_text=_("<event id>:<effect>:<key>, passed to the effect on every run."),
    )
    arguments = models.JSONField(_("arguments"), default=dict, blank=True)
    scheduled_at = models.DateTimeField(_("scheduled at"), db_default=Now())
    max_attempts = models.PositiveIntegerField(
        _("max attempts"),
        help_text=_("Runs after which the effect is dead (the effect's own, or MAX_ATTEMPTS)."),
    )

    claimed_at = models.DateTimeField(_("claimed at"), null=True, blank=True)
    claimed_by = models.CharField(_("claimed by"), max_length=255, blank=True, default="")
    claim_expires_at = models.DateTimeField(_("claim expires at"), null=True, blank=True)
    claim_token = models.UUIDField(_("claim token"), null=True, blank=True)

    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    next_attempt_at = models.DateTimeField(
        _("next attempt"), null=True, blank=True, help_text=_("After a failure: when it is run again.")
    )
    attempts = models.PositiveIntegerField(_("attempts"), default=0, help_text=_("Runs started."))
    last_error = models.TextField(_("last error"), blank=True, default="")

    objects = EventEffectQuerySet.as_manager()
    done_field: ClassVar[str] = "completed_at"

    class Meta:
        verbose_name = _("event effect")
        verbose_name_plural = _("event effects")
        indexes = [
            # What the workers and the reaper ask for: not completed, lease absent or expired.
            models.Index(fields=["completed_at", "claim_expires_at"], name="stripe_effect_unfinished_idx"),
        ]

    def __str__(self) -> str:
        return self.idempotency_key

    @classmethod
    def dead_after(cls) -> F:
        """An effect is dead after its own ``max_attempts`` runs."""
        return F("max_attempts")


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
