"""The ledger's operations: credit, debit, balance. Money that moves once per reference.

Every write to an account locks its balance row first, so writers to one
(account, currency) serialise and the entries' ``balance_after`` chain is the
running sum in primary-key order. The unique constraint on (account, currency,
entry_type, reference) decides whether a reference is new: on PostgreSQL and
SQLite the entry is inserted with ``ON CONFLICT DO NOTHING``; on MySQL the
reference is looked up under the lock and the insert runs in a savepoint, so
that a writer that slipped past the check (one that did not take the lock)
costs only the savepoint. Either way the entry is written *before* the
balance, so a balance change never commits without its entry, and a repeated
reference returns the existing entry with nothing changed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from django.db import IntegrityError, OperationalError, connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.functions import Now

from stripe_idempotency.exceptions import (
    InsufficientFunds,
    InvalidLedgerEntry,
    LedgerConflict,
    LedgerEntryImmutable,
    LedgerError,
)
from stripe_idempotency.sql import column, concrete_field, quoted_columns

if TYPE_CHECKING:
    from stripe_idempotency.models import LedgerEntry, StripeEvent

T = TypeVar("T")

#: Passed to ``LedgerEntry.save()`` by this module only: any other save is refused.
LEDGER_WRITE = object()

_CURRENCY = re.compile(r"[a-z]{3}")
# Deadlock and lock-timeout errors the database asks us to retry. A retry is
# only possible when the ledger owns the transaction (see _retrying).
_MYSQL_RETRYABLE = {1205, 1213}
_POSTGRESQL_RETRYABLE = {"40001", "40P01"}
_ATTEMPTS = 3
_INSERT_UNLESS_REFERENCED = {"postgresql", "sqlite"}
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


@dataclass(frozen=True, slots=True)
class _Refused:
    error: LedgerError


class LedgerEntryManager(models.Manager["LedgerEntry"]):
    """``LedgerEntry.objects``: the only way entries are written."""

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
        raises :class:`LedgerConflict`. Runs inside the caller's transaction when
        there is one (a receiver's), so it commits or rolls back with it.
        """
        return self._apply(
            account=account,
            amount=_positive(amount),
            currency=currency,
            entry_type=entry_type,
            reference=reference,
            event=event,
            metadata=metadata,
            allow_negative=True,
            using=using,
        )

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

        Raises :class:`InsufficientFunds`, writing nothing, when the balance
        would go below zero, unless ``allow_negative=True``. A repeated
        reference behaves as for :meth:`credit` (and is returned even if the
        balance could not pay for it again).
        """
        return self._apply(
            account=account,
            amount=-_positive(amount),
            currency=currency,
            entry_type=entry_type,
            reference=reference,
            event=event,
            metadata=metadata,
            allow_negative=allow_negative,
            using=using,
        )

    def balance(self, *, account: str, currency: str, using: str | None = None) -> int:
        """The balance of ``account`` in ``currency`` (0 for an account never written to)."""
        from stripe_idempotency.models import LedgerBalance

        using = using or router.db_for_read(LedgerBalance)
        value = (
            LedgerBalance.objects.using(using)
            .filter(account=account, currency=_currency(currency))
            .values_list("balance", flat=True)
            .first()
        )
        return value or 0

    def _apply(self, *, using: str | None, **entry: Any) -> tuple[LedgerEntry, bool]:
        entry["account"] = _text("account", entry["account"], 255)
        entry["currency"] = _currency(entry["currency"])
        entry["entry_type"] = _text("entry_type", entry["entry_type"], 64)
        if entry["reference"] is not None:
            entry["reference"] = _text("reference", entry["reference"], 255)
        if entry["metadata"] is not None and not isinstance(entry["metadata"], dict):
            raise InvalidLedgerEntry("metadata must be a dict or None.")
        using = using or router.db_for_write(self.model)
        result = _retrying(using, lambda: self._apply_locked(using=using, **entry))
        if isinstance(result, _Refused):
            # Raised outside the atomic block, so a caller's transaction that
            # catches it is still usable.
            raise result.error
        return result

    def _apply_locked(
        self,
        *,
        using: str,
        account: str,
        amount: int,
        currency: str,
        entry_type: str,
        reference: str | None,
        event: StripeEvent | None,
        metadata: dict[str, Any] | None,
        allow_negative: bool,
    ) -> tuple[LedgerEntry, bool] | _Refused:
        from stripe_idempotency.models import LedgerBalance

        # Inside a caller's transaction, no savepoint of our own: nothing is
        # written before the last refusal is decided, and a database error
        # must take the caller's transaction down with it.
        entry = self.model(
            account=account,
            currency=currency,
            amount=amount,
            balance_after=0,  # set under the balance's lock
            entry_type=entry_type,
            reference=reference,
            event=event,
            metadata=metadata or {},
        )
        with transaction.atomic(using=using, savepoint=False):
            if connections[using].vendor == "postgresql" and _apply_in_one_statement(
                entry, using, allow_negative
            ):
                return entry, True
            # The general path: a new account, a refusal, a repeated reference,
            # or a backend without data-modifying CTEs. On PostgreSQL the
            # statement above already holds the balance's lock, if it exists.
            balances = LedgerBalance.objects.using(using).select_for_update()
            row = balances.filter(account=account, currency=currency).first()
            if row is None and amount < 0 and not allow_negative:
                # No balance row, so no entries: nothing to find, nothing to pay with.
                return _Refused(
                    InsufficientFunds(account=account, currency=currency, balance=0, amount=-amount)
                )
            if row is None:
                # Concurrent first writers to an account both land here; one
                # inserts the row, and both then queue on its lock.
                _create_balance_row(using, account, currency)
                row = balances.get(account=account, currency=currency)
            # PostgreSQL and SQLite insert "unless the reference exists" in one
            # statement; elsewhere the reference is looked up first, under the lock.
            one_statement = connections[using].vendor in _INSERT_UNLESS_REFERENCED
            if reference is not None and not one_statement:
                existing = self._existing(using, account, currency, entry_type, reference)
                if existing is not None:
                    return _duplicate(existing, amount)
            balance_after = row.balance + amount
            if amount < 0 and balance_after < 0 and not allow_negative:
                if reference is not None and one_statement:
                    # A repeat is returned even when the balance could not pay for it again.
                    existing = self._existing(using, account, currency, entry_type, reference)
                    if existing is not None:
                        return _duplicate(existing, amount)
                return _Refused(
                    InsufficientFunds(account=account, currency=currency, balance=row.balance, amount=-amount)
                )
            entry.balance_after = balance_after
            if reference is None:
                entry.save(using=using, force_insert=True, ledger_write=LEDGER_WRITE)
            elif one_statement:
                if not _insert_unless_referenced(entry, using):
                    # The reference exists: written before us, or by a writer that
                    # did not take the balance lock (the insert waited for it).
                    # Nothing was written; the balance is not touched.
                    existing = self._existing(using, account, currency, entry_type, reference)
                    if existing is None:
                        raise LookupError(f"Ledger reference {reference!r} vanished while being written.")
                    return _duplicate(existing, amount)
            else:
                try:
                    with transaction.atomic(using=using):
                        entry.save(using=using, force_insert=True, ledger_write=LEDGER_WRITE)
                except IntegrityError:
                    # Someone wrote this reference without taking the balance
                    # lock. Only the savepoint rolled back; the balance was
                    # not touched yet.
                    existing = self._existing(using, account, currency, entry_type, reference)
                    if existing is None:
                        raise
                    return _duplicate(existing, amount)
            LedgerBalance.objects.using(using).filter(pk=row.pk).update(
                balance=balance_after, updated_at=Now()
            )
            return entry, True

    def _existing(
        self, using: str, account: str, currency: str, entry_type: str, reference: str
    ) -> LedgerEntry | None:
        # A locking read sees the newest committed row even under REPEATABLE READ.
        return (
            self.using(using)
            .select_for_update()
            .filter(account=account, currency=currency, entry_type=entry_type, reference=reference)
            .first()
        )


@dataclass(frozen=True, slots=True)
class AccountCheck:
    """The invariants of one (account, currency), as :func:`verify_balances` found them."""

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


def verify_balances(*, account: str | None = None, using: str | None = None) -> Iterator[AccountCheck]:
    """Check every balance against its entries, one (account, currency) at a time.

    The balance must equal the sum of the amounts, and each entry's
    ``balance_after`` the running sum in primary-key order. Streams the
    entries in that order, so memory does not grow with their number.
    """
    from stripe_idempotency.models import LedgerBalance, LedgerEntry

    using = using or router.db_for_read(LedgerEntry)
    balances_query = LedgerBalance.objects.using(using)
    entries_query = LedgerEntry.objects.using(using)
    if account is not None:
        balances_query = balances_query.filter(account=account)
        entries_query = entries_query.filter(account=account)
    balances = {(a, c): b for a, c, b in balances_query.values_list("account", "currency", "balance")}
    rows = entries_query.order_by("account", "currency", "id").values_list(
        "account", "currency", "id", "amount", "balance_after"
    )
    key: tuple[str, str] | None = None
    count = total = 0
    chain_break: tuple[int, int, int] | None = None
    for row_account, row_currency, pk, amount, balance_after in rows.iterator(chunk_size=5000):
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


def _insert_unless_referenced(entry: LedgerEntry, using: str) -> bool:
    """``INSERT ... ON CONFLICT (the reference's scope) DO NOTHING RETURNING id``; False if it existed.

    One statement, no savepoint, no error: the database's unique constraint
    decides. (MySQL has no such statement; ``INSERT IGNORE`` would also hide
    other errors, such as a truncated value, so it keeps the check and the
    savepoint.)
    """
    connection = connections[using]
    opts = entry._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    scope = [concrete_field(type(entry), name) for name in ("account", "currency", "entry_type", "reference")]
    sql = (
        f"INSERT INTO {connection.ops.quote_name(opts.db_table)} ({quoted_columns(connection, fields)}) "
        f"VALUES ({', '.join(['%s'] * len(fields))}) "
        f"ON CONFLICT ({quoted_columns(connection, scope)}) DO NOTHING "
        f"RETURNING {quoted_columns(connection, [opts.pk])}"
    )
    params = [f.get_db_prep_save(getattr(entry, f.attname), connection) for f in fields]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None:
        return False
    entry.pk = row[0]
    entry._state.adding = False
    entry._state.db = using
    return True


def _apply_in_one_statement(entry: LedgerEntry, using: str, allow_negative: bool) -> bool:
    """PostgreSQL: lock the balance, insert the entry and move the balance in one statement.

    The balance row's lock is then held for one statement and the COMMIT,
    rather than across three round trips and the Python between them: on a
    hot account, that hold time is the throughput. Returns ``False`` when it
    wrote nothing, leaving the decision to the general path: the account has
    no balance row yet, the debit would overdraw, or the reference exists.
    The lock, when the row exists, is kept either way.
    """
    connection = connections[using]
    fields = [f for f in entry._meta.concrete_fields if not f.primary_key]
    params = [
        entry.amount
        if field.name == "balance_after"
        else field.get_db_prep_save(getattr(entry, field.attname), connection)
        for field in fields
    ]
    sql = _one_statement_sql(connection)
    with connection.cursor() as cursor:
        # A credit never overdraws; a debit may only where allowed (the same rule as the general path).
        may_go_negative = allow_negative or entry.amount > 0
        cursor.execute(sql, [entry.account, entry.currency, *params, may_go_negative, entry.amount])
        row = cursor.fetchone()
    if row is None:
        return False
    entry.pk, entry.balance_after = row
    entry._state.adding = False
    entry._state.db = using
    return True


_one_statement_cache: dict[str, str] = {}


def _one_statement_sql(connection: BaseDatabaseWrapper) -> str:
    """The statement of ``_apply_in_one_statement``, its names quoted from the models, built once."""
    from stripe_idempotency.models import LedgerBalance, LedgerEntry

    sql = _one_statement_cache.get(connection.vendor)
    if sql is not None:
        return sql
    quote = connection.ops.quote_name
    opts = LedgerEntry._meta
    fields = [f for f in opts.concrete_fields if not f.primary_key]
    scope = [concrete_field(LedgerEntry, name) for name in ("account", "currency", "entry_type", "reference")]
    balance_table = quote(LedgerBalance._meta.db_table)
    balance, account, currency, updated_at = (
        quote(column(concrete_field(LedgerBalance, name)))
        for name in ("balance", "account", "currency", "updated_at")
    )
    # balance_after is the locked balance plus the amount; every other column a parameter.
    values = [f"locked.{balance} + %s" if f.name == "balance_after" else "%s" for f in fields]
    returned = [opts.pk, concrete_field(LedgerEntry, "balance_after")]
    sql = (
        f"WITH locked AS ("
        f"SELECT id, {balance} FROM {balance_table} WHERE {account} = %s AND {currency} = %s FOR UPDATE"
        f"), inserted AS ("
        f"INSERT INTO {quote(opts.db_table)} ({quoted_columns(connection, fields)}) "
        f"SELECT {', '.join(values)} FROM locked WHERE %s OR locked.{balance} + %s >= 0 "
        f"ON CONFLICT ({quoted_columns(connection, scope)}) DO NOTHING "
        f"RETURNING {quoted_columns(connection, returned)}"
        f"), moved AS ("
        f"UPDATE {balance_table} "
        f"SET {balance} = inserted.balance_after, {updated_at} = statement_timestamp() "
        f"FROM inserted, locked WHERE {balance_table}.id = locked.id"
        f") SELECT * FROM inserted"
    )
    _one_statement_cache[connection.vendor] = sql
    return sql


def _duplicate(existing: LedgerEntry, amount: int) -> tuple[LedgerEntry, bool] | _Refused:
    if existing.amount != amount:
        return _Refused(LedgerConflict(existing=existing, amount=amount))
    return existing, False


def _create_balance_row(using: str, account: str, currency: str) -> None:
    """Insert the (account, currency) balance row at 0, unless it exists.

    On MySQL/MariaDB an ignored duplicate insert (``INSERT IGNORE``) leaves a
    shared lock on the row, which the ``SELECT ... FOR UPDATE`` that follows must
    upgrade; two first writers doing that at once deadlock, and inside a
    receiver's transaction a deadlock cannot be retried. A no-op
    ``ON DUPLICATE KEY UPDATE`` takes the exclusive lock at once instead.
    Elsewhere the conflict check of ``ON CONFLICT DO NOTHING`` leaves no lock.
    """
    from stripe_idempotency.models import LedgerBalance

    connection = connections[using]
    if connection.vendor != "mysql":
        LedgerBalance.objects.using(using).bulk_create(
            [LedgerBalance(account=account, currency=currency, balance=0)], ignore_conflicts=True
        )
        return
    row = LedgerBalance(account=account, currency=currency, balance=0)
    fields = [f for f in LedgerBalance._meta.concrete_fields if not f.primary_key]
    params = [f.get_db_prep_save(f.pre_save(row, add=True), connection) for f in fields]
    balance = quoted_columns(connection, [concrete_field(LedgerBalance, "balance")])
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {connection.ops.quote_name(LedgerBalance._meta.db_table)} "
            f"({quoted_columns(connection, fields)}) VALUES ({', '.join(['%s'] * len(fields))}) "
            f"ON DUPLICATE KEY UPDATE {balance} = {balance}",
            params,
        )


def _retrying(using: str, apply: Callable[[], T]) -> T:
    """Run ``apply``; if the ledger owns the transaction, repeat what the database asks to repeat."""
    connection = connections[using]
    if connection.in_atomic_block:
        # A deadlock aborts the caller's whole transaction: only the caller can retry.
        return apply()
    for attempt in range(_ATTEMPTS):
        try:
            with transaction.atomic(using=using):
                return apply()
        except OperationalError as exc:
            if attempt == _ATTEMPTS - 1 or not _retryable(connection.vendor, exc):
                raise
    raise AssertionError("unreachable")


def _retryable(vendor: str, exc: OperationalError) -> bool:
    if vendor == "mysql":
        return bool(exc.args) and exc.args[0] in _MYSQL_RETRYABLE
    if vendor == "postgresql":
        return getattr(exc.__cause__, "sqlstate", None) in _POSTGRESQL_RETRYABLE
    if vendor == "sqlite":
        return "locked" in str(exc)
    return False


def _positive(amount: Any) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidLedgerEntry(f"amount must be a positive integer of minor units, not {amount!r}.")
    return amount


def _currency(currency: Any) -> str:
    if not isinstance(currency, str) or not _CURRENCY.fullmatch(currency.lower()):
        raise InvalidLedgerEntry(f"currency must be a three-letter ISO code such as 'usd', not {currency!r}.")
    return currency.lower()


def _text(name: str, value: Any, max_length: int) -> str:
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise InvalidLedgerEntry(f"{name} must be a non-empty string of at most {max_length} characters.")
    return value
