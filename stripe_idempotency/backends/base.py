"""What the rules ask of a database, and the machinery every backend shares.

:class:`DatabaseBackend` is the whole surface: the claim, the fenced
completion, the release, storing an event unclaimed, and the ledger's locked
apply, balance row and insert, plus which errors are worth retrying. The
rules in :mod:`stripe_idempotency.leases` and :mod:`stripe_idempotency.ledger`
decide what those results mean; a backend only says its SQL.

Finding claimable events needs no vendor SQL (the ORM says it, on the database
clock, through the index): it is :meth:`StripeEventQuerySet.claimable
<stripe_idempotency.models.StripeEventQuerySet.claimable>`.

A backend is handed the table it works on (``model``, the first argument of each operation,
as Django's schema editor is), and imports no model: the models sit above the backends, and
the ledger's manager uses them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from django.db import OperationalError, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import F, Field, QuerySet
from django.db.models.expressions import Col
from django.db.models.functions import Now

from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.sql import concrete_field, quoted_columns

if TYPE_CHECKING:
    from stripe_idempotency.models import EventEffect, LedgerBalance, LedgerEntry, StripeEvent

Row = Sequence[Any]


@dataclass(frozen=True, slots=True)
class ClaimRow:
    """The event's row as a claim statement left it, and its lease's seconds left (``None``: no lease)."""

    event: StripeEvent
    lease_left: float | None


class DatabaseBackend(Protocol):
    """The operations the rules need from one database connection."""

    @property
    def vendor(self) -> str:
        """Django's ``connection.vendor`` for the databases this backend serves."""
        ...

    def claim(
        self, model: type[StripeEvent], event: IncomingEvent, token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> ClaimRow:
        """Store ``event`` claimed under ``token`` in ``model``'s table, or take its row over if it
        is claimable.

        One atomic statement (or a retried pair on MySQL), in autocommit. The
        returned row says who holds the event now: ``token`` if the claim won.
        """
        ...

    def complete(self, model: type[StripeEvent | EventEffect], pk: int, token: uuid.UUID) -> bool:
        """Mark the row done (an event processed, an effect completed) if ``token`` still holds it;
        ``False`` if it does not (the fence)."""
        ...

    def take(
        self,
        model: type[EventEffect],
        pk: int,
        token: uuid.UUID,
        *,
        claimed_by: str,
        ttl: float,
        dead_too: bool,
    ) -> bool:
        """Claim the stored row ``pk`` under ``token`` for ``ttl`` seconds, counting an attempt, if
        it is not done and under no live lease and (unless ``dead_too``) has attempts left; one
        statement in autocommit. ``False`` if it was not claimable."""
        ...

    def release(
        self,
        model: type[StripeEvent | EventEffect],
        pk: int,
        token: uuid.UUID,
        error: str,
        *,
        retry_in: float,
    ) -> bool:
        """Clear the claim ``token`` holds, recording ``error`` and the reaper's next attempt,
        ``retry_in`` seconds from now on the database clock; ``False`` if it no longer held it."""
        ...

    def insert_unclaimed(
        self, model: type[StripeEvent], event: IncomingEvent, *, notify: str | None = None
    ) -> bool:
        """Store ``event`` unclaimed unless its id is stored; ``True`` if this call stored it.
        With ``notify``, a database that has ``NOTIFY`` (PostgreSQL) sends the event's id on that
        channel in the same statement, so the notification commits with the row or not at all."""
        ...

    def take_batch(
        self, picked: QuerySet[Any], token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> list[int]:
        """Claim under ``token`` for ``ttl`` seconds, counting an attempt, the rows ``picked``
        selects (claimable rows, ordered, limited), skipping any another transaction holds
        locked (``SKIP LOCKED``) rather than waiting for it. Returns their primary keys: two
        workers taking batches at once never take the same row."""
        ...

    @property
    def looks_up_reference_first(self) -> bool:
        """Whether the ledger looks a reference up before inserting (under the balance's lock),
        because this database's insert has no cheap way to say "it existed"."""
        ...

    def apply_in_one_statement(
        self, entry: LedgerEntry, balances: type[LedgerBalance], *, allow_negative: bool
    ) -> bool:
        """Lock the balance (a row of ``balances``), insert ``entry`` and move the balance in one
        statement, if this database can; ``False`` when nothing was written (the general path decides)."""
        ...

    def create_balance_row(self, model: type[LedgerBalance], account: str, currency: str) -> None:
        """Insert the (account, currency) balance row at 0 unless it exists, taking no lock
        that a later ``SELECT ... FOR UPDATE`` would have to upgrade."""
        ...

    def insert_entry(self, entry: LedgerEntry) -> bool:
        """Insert ``entry``; ``False``, with nothing written, if its reference exists."""
        ...

    def is_retryable(self, error: OperationalError) -> bool:
        """Whether the database asks for the failed transaction to be run again (deadlock, serialisation)."""
        ...


class SQLBackend:
    """The shared machinery: statements built once, rows turned into models, the portable operations."""

    vendor: ClassVar[str]
    #: The current time on this database's clock, as SQL.
    now: ClassVar[str]
    #: The end of a lease of ``%(ttl)s`` (:meth:`lease_param`) from now, on this database's clock.
    lease_end: ClassVar[str]
    looks_up_reference_first: ClassVar[bool] = False

    __slots__ = ("connection",)

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.connection = connection

    # -- statements -------------------------------------------------------------------------

    def statement(self, key: tuple[Any, ...], build: Callable[[], str]) -> str:
        """The statement ``build`` makes, built once per backend class and ``key``.

        ``key`` must name everything the statement depends on besides the
        backend: the template and every part spliced into it.
        """
        full_key = (type(self), *key)
        sql = _statements.get(full_key)
        if sql is None:
            sql = _statements[full_key] = build()
        return sql

    def event_statement(self, model: type[StripeEvent | EventEffect], template: str, **parts: str) -> str:
        """``template`` over ``model``'s table (events, effects): ``{table}``, ``{inserted}``,
        ``{columns}``, ``{now}``, ``{done}`` (the column set when a row's work is done) and each
        of ``parts`` (which may use ``{table}``, ``{now}`` and ``{done}`` themselves)."""

        def build() -> str:
            table = self.connection.ops.quote_name(model._meta.db_table)
            done = quoted_columns(self.connection, [concrete_field(model, model.done_field)])
            names = {
                "table": table,
                "now": self.now,
                "done": done,
                "lease_end": self.lease_end,
                "lease_end_positional": self.lease_end.replace("%(ttl)s", "%s"),
            }
            return template.format(
                inserted=INSERTED,
                columns=quoted_columns(self.connection, returned_fields(model)),
                **names,
                **{name: part.format(**names) for name, part in parts.items()},
            )

        return self.statement((model, template, *sorted(parts.items())), build)

    def prepare(self, model: type[Any], name: str, value: Any) -> Any:
        """``value`` as the database stores ``model.name`` (a UUID as hex on MySQL, JSON as text...)."""
        return concrete_field(model, name).get_db_prep_save(value, self.connection)

    def event_params(self, model: type[StripeEvent], event: IncomingEvent) -> dict[str, Any]:
        """The event's own columns, as every backend's insert takes them."""
        return {
            "event_id": event.id,
            "type": event.type,
            "livemode": event.livemode,
            "api_version": event.api_version or "",
            "created": self.prepare(model, "created", event.created),
            "payload": self.prepare(model, "payload", event.payload),
            "endpoint": event.endpoint,
            "account": event.account,
            "object_id": event.object_id,
        }

    def claim_params(
        self, model: type[StripeEvent], event: IncomingEvent, token: uuid.UUID, claimed_by: str
    ) -> dict[str, Any]:
        """A claim's parameters but its lease's length, which each backend encodes its own way."""
        return {
            **self.event_params(model, event),
            "claimed_by": claimed_by,
            "token": self.prepare(model, "claim_token", token),
        }

    def claim_row(self, model: type[StripeEvent], row: Row | None, payload: dict[str, Any]) -> ClaimRow:
        """A claim statement's row (every returned column, then the lease left) as a model instance."""
        if row is None:
            # The upsert either inserts, updates or finds the row; only a delete
            # racing with it could leave nothing.
            raise LookupError("The event's row vanished while it was being claimed.")
        values = []
        for (column, converters), value in zip(_row_converters(self.connection, model), row, strict=False):
            for converter in converters:
                value = converter(value, column, self.connection)
            values.append(value)
        event = model.from_db(self.connection.alias, returned_attnames(model), values)
        event.payload = payload
        lease_left = row[len(returned_fields(model))]
        return ClaimRow(event, None if lease_left is None else float(lease_left))

    # -- the portable operations ------------------------------------------------------------

    def lease_param(self, ttl: float) -> Any:
        """A lease's length in seconds as :attr:`lease_end` reads it."""
        return ttl

    def take(
        self,
        model: type[EventEffect],
        pk: int,
        token: uuid.UUID,
        *,
        claimed_by: str,
        ttl: float,
        dead_too: bool,
    ) -> bool:
        # Each effect's run starts here: built once, not compiled by the ORM each time.
        sql = self.event_statement(model, _TAKE if dead_too else _TAKE + _WITH_ATTEMPTS_LEFT)
        params = {
            "pk": pk,
            "token": self.prepare(model, "claim_token", token),
            "claimed_by": claimed_by,
            "ttl": self.lease_param(ttl),
        }
        with self.connection.cursor() as cursor:
            cursor.execute(sql, params)
            taken: int = cursor.rowcount
        return taken == 1

    def take_batch(
        self, picked: QuerySet[Any], token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> list[int]:
        # Where one statement cannot both pick and claim (MariaDB and MySQL may not update a
        # table their subquery reads): the picked rows locked in a transaction, then claimed.
        model = picked.model
        with transaction.atomic(using=self.connection.alias):
            pks = list(picked.select_for_update(skip_locked=True).values_list("pk", flat=True))
            if pks:
                model.objects.using(self.connection.alias).filter(pk__in=pks).update(
                    claim_token=token,
                    claimed_at=Now(),
                    claimed_by=claimed_by,
                    claim_expires_at=Now() + timedelta(seconds=ttl),
                    attempts=F("attempts") + 1,
                )
        return pks

    def complete(self, model: type[StripeEvent | EventEffect], pk: int, token: uuid.UUID) -> bool:
        # Every delivery runs this: built once, not compiled by the ORM each time.
        sql = self.event_statement(model, _COMPLETE)
        with self.connection.cursor() as cursor:
            cursor.execute(sql, {"pk": pk, "token": self.prepare(model, "claim_token", token)})
            updated: int = cursor.rowcount
        return updated == 1

    def release(
        self,
        model: type[StripeEvent | EventEffect],
        pk: int,
        token: uuid.UUID,
        error: str,
        *,
        retry_in: float,
    ) -> bool:
        updated = (
            model.objects.using(self.connection.alias)
            .filter(pk=pk, claim_token=token)
            .update(
                claim_expires_at=None,
                claim_token=None,
                last_error=error,
                next_attempt_at=Now() + timedelta(seconds=retry_in),
            )
        )
        return updated == 1

    def apply_in_one_statement(
        self, entry: LedgerEntry, balances: type[LedgerBalance], *, allow_negative: bool
    ) -> bool:
        return False

    def create_balance_row(self, model: type[LedgerBalance], account: str, currency: str) -> None:
        # ON CONFLICT DO NOTHING: the conflict check leaves no lock behind.
        model.objects.using(self.connection.alias).bulk_create(
            [model(account=account, currency=currency, balance=0)], ignore_conflicts=True
        )

    def entry_params(self, entry: LedgerEntry) -> list[Any]:
        """Every non-key column of ``entry``, prepared, in :func:`entry_fields` order."""
        return [
            f.get_db_prep_save(getattr(entry, f.attname), self.connection) for f in entry_fields(type(entry))
        ]

    def saved(self, entry: LedgerEntry, pk: Any) -> None:
        """Mark ``entry`` as the stored row ``pk``, as the ORM's own insert would."""
        entry.pk = pk
        entry._state.adding = False
        entry._state.db = self.connection.alias


class InsertOnConflictDoNothing(SQLBackend):
    """``INSERT ... ON CONFLICT (...) DO NOTHING RETURNING``: PostgreSQL's and SQLite's common ground."""

    __slots__ = ()

    def insert_unclaimed(
        self, model: type[StripeEvent], event: IncomingEvent, *, notify: str | None = None
    ) -> bool:
        with self.connection.cursor() as cursor:
            sql = self.event_statement(model, _INSERT_UNCLAIMED_ON_CONFLICT)
            cursor.execute(sql, self.event_params(model, event))
            return cursor.fetchone() is not None

    def take_batch(
        self, picked: QuerySet[Any], token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> list[int]:
        # One statement picks and claims: the subquery's rows are locked as it reads them
        # (PostgreSQL's FOR UPDATE SKIP LOCKED; SQLite has one writer at a time).
        model = picked.model
        select, select_params = picked.values("pk").query.get_compiler(using=self.connection.alias).as_sql()
        if self.connection.features.has_select_for_update_skip_locked:
            select += " FOR UPDATE SKIP LOCKED"
        sql = self.event_statement(model, _TAKE_PICKED).replace("{picked}", select)
        token_param = self.prepare(model, "claim_token", token)
        with self.connection.cursor() as cursor:
            cursor.execute(sql, [*select_params, token_param, claimed_by, self.lease_param(ttl)])
            return sorted(row[0] for row in cursor.fetchall())

    def insert_entry(self, entry: LedgerEntry) -> bool:
        # The unique constraint decides, in one statement: no savepoint, no
        # error. (A NULL reference never conflicts.)
        model = type(entry)

        def build() -> str:
            quote = self.connection.ops.quote_name
            return (
                f"INSERT INTO {quote(model._meta.db_table)} "
                f"({quoted_columns(self.connection, entry_fields(model))}) "
                f"VALUES ({', '.join(['%s'] * len(entry_fields(model)))}) "
                f"ON CONFLICT ({quoted_columns(self.connection, reference_scope(model))}) DO NOTHING "
                f"RETURNING {quoted_columns(self.connection, [model._meta.pk])}"
            )

        with self.connection.cursor() as cursor:
            cursor.execute(self.statement(("insert_entry", model), build), self.entry_params(entry))
            row = cursor.fetchone()
        if row is None:
            return False
        self.saved(entry, row[0])
        return True


# -- shared statements and column lists -----------------------------------------------------

_statements: dict[tuple[Any, ...], str] = {}

#: The columns a claim writes when it stores a new event, in the order of every VALUES.
INSERTED = (
    "event_id, type, livemode, api_version, created, payload, endpoint, account, object_id, received_at, "
    "claimed_at, claimed_by, claim_expires_at, claim_token, attempts, last_error"
)

#: Not processed, and the lease absent or expired, on ``{t}``'s columns and the clock ``{now}``.
CLAIMABLE = "{t}.processed_at IS NULL AND ({t}.claim_expires_at IS NULL OR {t}.claim_expires_at <= {now})"

# The token alone is the fence: every writer that sets processed_at clears the
# token, so a row that still carries ours is unprocessed. Leaving processed_at
# out of the WHERE leaves the primary key as the only index the statement can
# use: on MariaDB with a young table's statistics the optimizer otherwise
# scanned stripe_event_unprocessed_idx, locking other events' entries on the
# way, and two deliveries' fenced updates deadlocked.
_COMPLETE = """
UPDATE {table} SET {done} = {now}, claim_expires_at = NULL, claim_token = NULL
WHERE id = %(pk)s AND claim_token = %(token)s
"""

# The claim of a stored row (an effect): the state's own definition of claimable, on the
# database's clock, as the ORM's claimable() says it.
_TAKE = """
UPDATE {table} SET claim_token = %(token)s, claimed_at = {now}, claimed_by = %(claimed_by)s,
    claim_expires_at = {lease_end}, attempts = attempts + 1
WHERE id = %(pk)s AND {done} IS NULL AND (claim_expires_at IS NULL OR claim_expires_at <= {now})
"""
_WITH_ATTEMPTS_LEFT = "AND attempts < max_attempts\n"

# A batch's claim (one token for the rows one worker took at once): ``{picked}`` is the
# worker's query of claimable rows (selecting ``pk``), spliced in as SQL with its parameters
# before these. It is a materialised CTE, run once: as ``IN (subquery)`` PostgreSQL may run it
# again for each row it updates, and each run, no longer seeing the rows this statement
# claimed, picks more (a batch of 1 claimed 2 rows). The row is judged claimable again as it
# is updated: the CTE's verdict is from the statement's snapshot, the update's from the row
# as it stands once locked.
_TAKE_PICKED = """
WITH picked AS MATERIALIZED ({{picked}})
UPDATE {table} SET claim_token = %s, claimed_at = {now}, claimed_by = %s,
    claim_expires_at = {lease_end_positional}, attempts = attempts + 1
WHERE id IN (SELECT pk FROM picked)
    AND {done} IS NULL AND (claim_expires_at IS NULL OR claim_expires_at <= {now})
RETURNING id
"""

# A stored, never claimed event: no claim columns, no attempt.
UNCLAIMED_VALUES = """(
    %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
    %(endpoint)s, %(account)s, %(object_id)s, {now}, NULL, '', NULL, NULL, 0, ''
)"""

_INSERT_UNCLAIMED_ON_CONFLICT = (
    "INSERT INTO {table} ({inserted}) VALUES "
    + UNCLAIMED_VALUES
    + " ON CONFLICT (event_id) DO NOTHING RETURNING id"
)


# The column lists below are worked out once per model: a model's fields do not change.


@cache
def returned_fields(model: type[StripeEvent]) -> tuple[Field[Any, Any], ...]:
    """The columns a claim returns: every one but the payload (the caller holds it decoded)."""
    return tuple(f for f in model._meta.concrete_fields if f.name != "payload")


@cache
def returned_attnames(model: type[StripeEvent]) -> list[str]:
    # Cached, so the same list serves every call: never mutate it.
    return [f.attname for f in returned_fields(model)]


@cache
def entry_fields(model: type[LedgerEntry]) -> tuple[Field[Any, Any], ...]:
    """A ledger entry's columns as the backends insert them: all but the primary key."""
    return tuple(f for f in model._meta.concrete_fields if not f.primary_key)


@cache
def reference_scope(model: type[LedgerEntry]) -> tuple[Field[Any, Any], ...]:
    """The columns of the unique constraint that makes a reference idempotent."""
    return tuple(concrete_field(model, n) for n in ("account", "currency", "entry_type", "reference"))


# Keyed by the connection object (one per thread and alias), whose backend's
# converters these are; a handful of entries live, the bound only guards churn.
@lru_cache(maxsize=64)
def _row_converters(
    connection: BaseDatabaseWrapper, model: type[StripeEvent]
) -> tuple[tuple[Col, tuple[Any, ...]], ...]:
    """Each returned column with the converters the ORM would apply to it, worked out once."""
    table = model._meta.db_table
    columns = [field.get_col(table) for field in returned_fields(model)]
    return tuple(
        (column, (*connection.ops.get_db_converters(column), *column.field.get_db_converters(connection)))
        for column in columns
    )
