"""Every failure the app reports has a type, and all of them share one base."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from stripe_idempotency.events import IncomingEvent


class StripeIdempotencyError(Exception):
    """Base class of every exception raised by stripe_idempotency."""


class WebhookRejected(StripeIdempotencyError):
    """A request that is not a well-formed, authentic Stripe event.

    ``code`` is the stable, machine-readable reason sent back in the JSON body;
    ``status`` the HTTP status it is answered with. Nothing is stored for it.
    ``event_id`` is set when the body was authentic (its signature verified) and
    named an id: Stripe sent an event that is refused, which an operator must
    hear of (the view logs it at ERROR).
    """

    def __init__(self, code: str, message: str, *, status: int = 400, event_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.event_id = event_id


class SettingInvalid(StripeIdempotencyError, ImproperlyConfigured):
    """A ``STRIPE_IDEMPOTENCY`` value its declaration refuses, found when it was read.

    The system check the message names reports it at deploy time; a request that meets it
    is answered 503 ``unavailable``, so Stripe keeps the event until it is fixed.
    """


class EventIgnored(StripeIdempotencyError):
    """An authentic, well-formed event its endpoint does not take: one of the live mode the
    endpoint is not for (``reason``: ``livemode_mismatch``). Nothing is stored; it is answered 200,
    so that Stripe neither retries it nor disables the endpoint."""

    def __init__(self, event: IncomingEvent, reason: str) -> None:
        super().__init__(f"{event.id} is ignored: {reason}.")
        self.event = event
        self.reason = reason


class ClaimInsideTransaction(StripeIdempotencyError):
    """A claim was asked for inside ``transaction.atomic()``.

    A claim must commit before any receiver runs (otherwise a crash or a
    rollback would take the claim with it and other instances would wait on
    an uncommitted row), so it has to be made in autocommit mode.
    """


class EventsListingInvalid(StripeIdempotencyError):
    """Stripe's Events API answered a listing ``sync_stripe_events`` cannot follow: an entry that
    is not an event object, or a page that brings nothing new while saying there is more.

    Nothing after it is fed and the watermark stays before it, so a later run lists it again.
    """


class UnsupportedDatabase(StripeIdempotencyError):
    """The database behind a connection has no backend here (see ``stripe_idempotency.E010``).

    Raised before any SQL runs, so nothing is half-written; the webhook view
    answers it 503 ``unavailable``, so Stripe keeps the event until the
    configuration is fixed.
    """

    def __init__(self, alias: str, vendor: str, *, supported: Iterable[str]) -> None:
        super().__init__(
            f"The database {alias!r} is a {vendor!r} database; "
            f"stripe_idempotency supports {', '.join(supported)}."
        )
        self.alias = alias
        self.vendor = vendor


class LeaseLost(StripeIdempotencyError):
    """The fenced commit found that another instance now owns the event.

    Raised inside the dispatch transaction so that everything the receivers
    did rolls back.
    """


class InvalidEffect(StripeIdempotencyError, ValueError):
    """An effect scheduled with arguments it cannot be run with: a value that is not JSON every
    supported database stores, a keyword the function does not take, a key used twice in one
    dispatch. Nothing was stored; raised in the receiver, it fails the delivery as any receiver
    error does (the attempt rolls back and is retried)."""


class EffectOutsideDispatch(StripeIdempotencyError):
    """``schedule()`` was called outside the dispatch of the event it names: an effect is
    stored in the receivers' transaction of its event, so that it exists exactly when their
    work committed."""


class LedgerError(StripeIdempotencyError):
    """Base class of the ledger's refusals."""


class InvalidLedgerEntry(LedgerError, ValueError):
    """An argument to ``credit()`` or ``debit()`` is not valid (nothing was written)."""


class InsufficientFunds(LedgerError):
    """A debit would take the balance below zero and ``allow_negative`` was not set.

    Nothing was written.
    """

    def __init__(self, *, account: str, currency: str, balance: int, amount: int) -> None:
        super().__init__(f"Debit of {amount} {currency} from {account!r} refused: the balance is {balance}.")
        self.account = account
        self.currency = currency
        self.balance = balance
        self.amount = amount


class LedgerConflict(LedgerError):
    """An entry with this reference exists with a different amount.

    A repeated reference is a retry of the same money movement; a different
    amount means two different movements were given one reference, which is
    a bug in the caller, never something to resolve silently.
    """

    def __init__(self, *, existing: object, amount: int) -> None:
        super().__init__(
            f"{existing} already exists with amount {getattr(existing, 'amount', '?')}; "
            f"this request has amount {amount}."
        )
        self.existing = existing
        self.amount = amount


class LedgerEntryImmutable(LedgerError):
    """Ledger entries are append-only: they are never updated or deleted through the ORM."""
