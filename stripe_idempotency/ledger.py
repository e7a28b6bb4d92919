"""The ledger's rules: credit, debit, balance. Money that moves once per reference.

Every write to an account locks its balance row first, so writers to one
(account, currency) serialise and the entries' ``balance_after`` chain is the
running sum in primary-key order. The unique constraint on (account, currency,
entry_type, reference) decides whether a reference is new. The entry is
written *before* the balance, so a balance change never commits without its
entry, and a repeated reference returns the existing entry with nothing
changed. The statements are each database's own (:mod:`stripe_idempotency.backends`);
the decisions (new account, overdraft, repeat, conflict, retry) are here.

The rules are the manager of the entries' table, ``LedgerEntry.objects``: ``credit()``,
``debit()``, ``balance()`` and ``verify_balances()``. Like any Django manager module this one
sits below the models: the manager works on the tables its model names (``self.model``, and
the balances it moves, ``LedgerEntry.balance_model``) and imports none of them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import OperationalError, connections, models, router, transaction
from django.db.models.functions import Now

from stripe_idempotency import storable
from stripe_idempotency.backends import DatabaseBackend, for_connection
from stripe_idempotency.exceptions import InsufficientFunds, InvalidLedgerEntry, LedgerConflict, LedgerError

if TYPE_CHECKING:
    from stripe_idempotency.models import LedgerBalance, LedgerEntry, StripeEvent

T = TypeVar("T")

_CURRENCY = re.compile(r"[a-z]{3}")
#: The largest amount one entry moves: what a 64-bit column holds. Past it, the
#: database would refuse the row and poison the caller's transaction.
MAX_AMOUNT = 2**63 - 1
# How many times a transaction the ledger owns is run when the database asks
# for it again (a deadlock, a serialisation failure, a lock timeout).
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class _Refused:
    error: LedgerError


class LedgerEntryManager(models.Manager["LedgerEntry"]):
    """``LedgerEntry.objects``: the only way entries are written, and the ledger's rules."""

    def credit(
        self,
        *,
        account: str,
        amount: int,
        currency: str,
        entry_type: str,
        reference: str | None = None,
        event: StripeEvent | None = None,
        metadata: dict[str, Any] | None = None,
        using: str | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """Add ``amount`` (positive, minor units) to ``account``'s balance in ``currency``.

        Returns ``(entry, created)``. With a ``reference``, a second call with the
        same (account, currency, entry_type, reference) returns the first entry
        with ``created=False`` and changes nothing; with a different amount it
        raises :class:`~stripe_idempotency.exceptions.LedgerConflict`. Runs inside
        the caller's transaction when there is one (a receiver's), so it commits
        or rolls back with it. ``event`` is the :class:`~stripe_idempotency.models.StripeEvent`
        the money moved for, if any.
        """
        entry = self._entry(account, _positive(amount), currency, entry_type, reference, event, metadata)
        # A credit never overdraws.
        return _apply(entry, self.model.balance_model, allow_negative=True, using=using)

    def debit(
        self,
        *,
        account: str,
        amount: int,
        currency: str,
        entry_type: str,
        reference: str | None = None,
        event: StripeEvent | None = None,
        metadata: dict[str, Any] | None = None,
        allow_negative: bool = False,
        using: str | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """Take ``amount`` (positive, minor units) from the balance; stored as a negative amount.

        Raises :class:`~stripe_idempotency.exceptions.InsufficientFunds`, writing
        nothing, when the balance would go below zero, unless
        ``allow_negative=True``. A repeated reference behaves as for
        :meth:`credit` (and is returned even if the balance could not pay for it again).
        """
        entry = self._entry(account, -_positive(amount), currency, entry_type, reference, event, metadata)
        return _apply(entry, self.model.balance_model, allow_negative=allow_negative, using=using)

    def balance(self, *, account: str, currency: str, using: str | None = None) -> int:
        """The balance of ``account`` in ``currency`` (0 for an account never written to)."""
        balances = self.model.balance_model
        value = (
            balances.objects.using(using or router.db_for_read(balances))
            .filter(account=account, currency=_currency(currency))
            .values_list("balance", flat=True)
            .first()
        )
        return value or 0

    def verify_balances(
        self, *, account: str | None = None, using: str | None = None
    ) -> Iterator[AccountCheck]:
        """Check every balance against its entries, one (account, currency) at a time.

        The balance must equal the sum of the amounts, and each entry's
        ``balance_after`` the running sum in primary-key order. Streams the
        entries in that order, so memory does not grow with their number.
        """
        using = using or router.db_for_read(self.model)
        balances_query = self.model.balance_model.objects.using(using)
        entries_query = self.using(using)
        if account is not None:
            balances_query = balances_query.filter(account=account)
            entries_query = entries_query.filter(account=account)
        rows = entries_query.order_by("account", "currency", "id").values_list(
            "account", "currency", "id", "amount", "balance_after"
        )
        return _verify(
            {(a, c): b for a, c, b in balances_query.values_list("account", "currency", "balance")},
            rows.iterator(chunk_size=5000),
        )

    def _entry(
        self,
        account: Any,
        amount: int,
        currency: Any,
        entry_type: Any,
        reference: Any,
        event: StripeEvent | None,
        metadata: Any,
    ) -> LedgerEntry:
        """The entry to write, every argument checked before any SQL runs (``balance_after`` is
        set under the balance's lock)."""
        account = _text("account", account, 255)
        currency = _currency(currency)
        entry_type = _text("entry_type", entry_type, 64)
        if reference is not None:
            reference = _text("reference", reference, 255)
        if metadata is not None and not isinstance(metadata, dict):
            raise InvalidLedgerEntry("metadata must be a dict or None.")
        return self.model(
            account=account,
            amount=amount,
            currency=currency,
            entry_type=entry_type,
            reference=reference,
            event=event,
            metadata=_metadata(metadata or {}),
            balance_after=0,
        )


def _apply(
    entry: LedgerEntry, balances: type[LedgerBalance], *, allow_negative: bool, using: str | None
) -> tuple[LedgerEntry, bool]:
    using = using or router.db_for_write(type(entry))
    backend = for_connection(connections[using])
    result = _retrying(backend, using, lambda: _apply_locked(backend, using, entry, balances, allow_negative))
    if isinstance(result, _Refused):
        # Raised outside the atomic block, so a caller's transaction that
        # catches it is still usable.
        raise result.error
    return result


def _apply_locked(
    backend: DatabaseBackend,
    using: str,
    entry: LedgerEntry,
    balances: type[LedgerBalance],
    allow_negative: bool,
) -> tuple[LedgerEntry, bool] | _Refused:
    """Write ``entry`` under its balance's lock, or decide why not. Runs in a transaction.

    Inside a caller's transaction, no savepoint of our own: nothing is written
    before the last refusal is decided, and a database error must take the
    caller's transaction down with it.
    """
    account, currency, amount, reference = entry.account, entry.currency, entry.amount, entry.reference
    with transaction.atomic(using=using, savepoint=False):
        if backend.apply_in_one_statement(entry, balances, allow_negative=allow_negative):
            return entry, True
        # The general path: a new account, a refusal, a repeated reference, or a
        # database that cannot say it all in one statement (which, where it
        # tried, already holds the balance's lock if the row exists).
        locked = balances.objects.using(using).select_for_update()
        row = locked.filter(account=account, currency=currency).first()
        if row is None and amount < 0 and not allow_negative:
            # No balance row, so no entries: nothing to find, nothing to pay with.
            return _Refused(InsufficientFunds(account=account, currency=currency, balance=0, amount=-amount))
        if row is None:
            # Concurrent first writers to an account both land here; one
            # inserts the row, and both then queue on its lock.
            backend.create_balance_row(balances, account, currency)
            row = locked.get(account=account, currency=currency)
        if reference is not None and backend.looks_up_reference_first:
            existing = _existing(using, entry)
            if existing is not None:
                return _repeat(existing, amount)
        balance_after = row.balance + amount
        if amount < 0 and balance_after < 0 and not allow_negative:
            if reference is not None and not backend.looks_up_reference_first:
                # A repeat is returned even when the balance could not pay for it again.
                existing = _existing(using, entry)
                if existing is not None:
                    return _repeat(existing, amount)
            return _Refused(
                InsufficientFunds(account=account, currency=currency, balance=row.balance, amount=-amount)
            )
        entry.balance_after = balance_after
        if not backend.insert_entry(entry):
            # The reference exists: written before us, or by a writer that did
            # not take the balance lock (the insert waited for it). Nothing was
            # written; the balance is not touched.
            existing = _existing(using, entry)
            if existing is None:
                raise LookupError(f"Ledger reference {reference!r} vanished while being written.")
            return _repeat(existing, amount)
        balances.objects.using(using).filter(pk=row.pk).update(balance=balance_after, updated_at=Now())
        return entry, True


def _existing(using: str, entry: LedgerEntry) -> LedgerEntry | None:
    """The stored entry with ``entry``'s reference, read with a lock.

    A locking read sees the newest committed row even under REPEATABLE READ.
    """
    return (
        type(entry)
        .objects.using(using)
        .select_for_update()
        .filter(
            account=entry.account,
            currency=entry.currency,
            entry_type=entry.entry_type,
            reference=entry.reference,
        )
        .first()
    )


def _repeat(existing: LedgerEntry, amount: int) -> tuple[LedgerEntry, bool] | _Refused:
    """A repeated reference: the stored entry if it moved the same amount, a conflict otherwise."""
    if existing.amount != amount:
        return _Refused(LedgerConflict(existing=existing, amount=amount))
    return existing, False


def _retrying(backend: DatabaseBackend, using: str, apply: Callable[[], T]) -> T:
    """Run ``apply``; if the ledger owns the transaction, repeat what the database asks to repeat."""
    if connections[using].in_atomic_block:
        # A deadlock aborts the caller's whole transaction: only the caller can retry.
        return apply()
    for attempt in range(_ATTEMPTS):
        try:
            with transaction.atomic(using=using):
                return apply()
        except OperationalError as exc:
            if attempt == _ATTEMPTS - 1 or not backend.is_retryable(exc):
                raise
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class AccountCheck:
    """The invariants of one (account, currency), as ``LedgerEntry.objects.verify_balances()`` found them."""

    account: str
    currency: str
    entries: int
    balance: int | None  # the stored balance; None when the balance row is missing
    total: int  # the sum of the entries' amounts
    chain_break: tuple[int, int, int] | None  # (entry pk, stored balance_after, running sum)

    @property
    def ok(self) -> bool:
        return (
            (self.balance or 0) == self.total
            and self.chain_break is None
            and (self.balance is not None or self.entries == 0)
        )


def _verify(
    balances: dict[tuple[str, str], int], rows: Iterable[tuple[str, str, int, int, int]]
) -> Iterator[AccountCheck]:
    """Each (account, currency) of ``rows`` (entries in running-sum order) checked against ``balances``."""
    key: tuple[str, str] | None = None
    count = total = 0
    chain_break: tuple[int, int, int] | None = None
    for row_account, row_currency, pk, amount, balance_after in rows:
        if (row_account, row_currency) != key:
            if key is not None:
                yield AccountCheck(*key, count, balances.pop(key, None), total, chain_break)
            key, count, total, chain_break = (row_account, row_currency), 0, 0, None
        count += 1
        total += amount
        if chain_break is None and balance_after != total:
            chain_break = (pk, balance_after, total)
    if key is not None:
        yield AccountCheck(*key, count, balances.pop(key, None), total, chain_break)
    for (row_account, row_currency), balance in sorted(balances.items()):
        # Balances with no entry at all: fine at zero (a refused first debit writes none).
        yield AccountCheck(row_account, row_currency, 0, balance, 0, None)


def _positive(amount: Any) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_AMOUNT:
        raise InvalidLedgerEntry(
            f"amount must be a positive integer of minor units, at most {MAX_AMOUNT}, not {amount!r}."
        )
    return amount


def _currency(currency: Any) -> str:
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency.lower()):
        raise InvalidLedgerEntry(f"currency must be a three-letter ISO code such as 'usd', not {currency!r}.")
    return currency.lower()


def _metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` if every database can store it as JSON; checked before any SQL runs."""
    reason = storable.problem(metadata)
    if reason is not None:
        raise InvalidLedgerEntry(f"metadata cannot be stored: {reason}.")
    return metadata


def _text(name: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length or "\x00" in value:
        raise InvalidLedgerEntry(
            f"{name} must be a non-empty string of at most {max_length} characters, without NUL."
        )
    return value
