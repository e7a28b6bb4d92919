"""MariaDB and MySQL (Django's ``mysql`` backend), InnoDB under REPEATABLE READ.

Their differences, named where they matter:

* **RETURNING.** MariaDB 10.5+ returns the upserted row: a claim is one round
  trip after its read. MySQL has no ``RETURNING`` and reads the row back.
* **Not waiting for a lock.** MariaDB can bound one statement's lock wait
  (``SET STATEMENT innodb_lock_wait_timeout=0 FOR ...``); MySQL has no
  per-statement form, so its upsert may wait for the lock.

What both share, and why the statements look as they do:

* InnoDB's upsert locks an existing row exclusively even when it changes
  nothing, and a receiver transaction holding a shared lock on that row (any
  foreign key to the event takes one, the ledger's included) would queue its
  own fenced update behind a waiting upsert: a deadlock. So a claim first
  reads the row without locking, and answers duplicate or busy from that read.
* ``INSERT ... ON DUPLICATE KEY UPDATE`` has no ``WHERE``: every assignment
  repeats the claimable test instead.
* There is no "insert unless it exists" that reports which it did without
  also hiding other errors (``INSERT IGNORE`` turns a truncation into a
  warning), so the ledger looks a reference up first and inserts in a
  savepoint.
* Deadlock (1213) and lock wait timeout (1205) are the errors to retry.
"""

from __future__ import annotations

import random
import time
import uuid
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from django.db import IntegrityError, OperationalError, transaction
from django.db.models import NOT_PROVIDED, Model

from stripe_idempotency.backends.base import (
    CLAIMABLE,
    UNCLAIMED_VALUES,
    ClaimRow,
    Row,
    SQLBackend,
    returned_attnames,
)
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.sql import concrete_field, quoted_columns

if TYPE_CHECKING:
    from stripe_idempotency.models import LedgerBalance, LedgerEntry, StripeEvent

LOCK_WAIT_TIMEOUT = 1205
DEADLOCK = 1213
_DUPLICATE_KEY = 1062
# Two concurrent upserts of a new key can both be picked as deadlock victims;
# the claim is safe to repeat. Each retry waits a random moment first, growing,
# so that the victims do not meet again at once.
_CLAIM_ATTEMPTS = 5
_CLAIM_RETRY_BASE_SECONDS = 0.005


class MySQLBackend(SQLBackend):
    vendor = "mysql"
    now = "NOW(6)"
    lease_end = "NOW(6) + INTERVAL %(ttl)s MICROSECOND"
    looks_up_reference_first = True

    __slots__ = ()

    def lease_param(self, ttl: float) -> int:
        return round(ttl * 1_000_000)  # whole microseconds

    @property
    def is_mariadb(self) -> bool:
        return bool(self.connection.mysql_is_mariadb)  # type: ignore[attr-defined]

    @property
    def has_returning(self) -> bool:
        """Whether an upsert can return its row (MariaDB 10.5+)."""
        return self.is_mariadb and self.connection.mysql_version >= (10, 5)  # type: ignore[attr-defined]

    def claim(
        self, model: type[StripeEvent], event: IncomingEvent, token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> ClaimRow:
        """A plain read first; the upsert only for a new or claimable event, and never waiting for a lock.

        The upsert still decides every claim, so a race between the read and
        the upsert changes nothing. A row that another transaction holds
        locked is being worked on: the claim is answered from the read (busy).
        """
        params = self.upsert_params(model, event, token, claimed_by=claimed_by, ttl=ttl)
        return self.claim_row(model, self._claim(model, params), event.payload)

    def upsert_params(
        self, model: type[StripeEvent], event: IncomingEvent, token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> dict[str, Any]:
        """The parameters of :meth:`upsert_statement` (the lease in whole microseconds)."""
        return {**self.claim_params(model, event, token, claimed_by), "ttl_us": round(ttl * 1_000_000)}

    def _claim(self, model: type[StripeEvent], params: dict[str, Any]) -> Row | None:
        returning = self.has_returning
        upsert = self.upsert_statement(model)
        read = self.event_statement(model, _READ)
        existing: Row | None = None
        for attempt in range(_CLAIM_ATTEMPTS):
            try:
                with self.connection.cursor() as cursor:
                    cursor.execute(read, {"event_id": params["event_id"]})
                    existing = cursor.fetchone()
                    if existing is not None and _refused(model, existing):
                        return existing
                    cursor.execute(upsert, params)
                    if not returning:
                        cursor.execute(read, {"event_id": params["event_id"]})
                    row: Row | None = cursor.fetchone()
                    return row
            except OperationalError as exc:
                locked = exc.args[0] == LOCK_WAIT_TIMEOUT
                if locked and existing is not None:
                    return existing  # held by a transaction: not ours, so the claim is answered busy
                if not (locked or exc.args[0] == DEADLOCK) or attempt == _CLAIM_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0, _CLAIM_RETRY_BASE_SECONDS * 2**attempt))
        raise AssertionError("unreachable")

    def upsert_statement(self, model: type[StripeEvent]) -> str:
        """The claim's upsert: returning the row where it can, and on MariaDB never waiting for a lock."""
        template = _UPSERT_RETURNING if self.has_returning else _UPSERT
        if self.is_mariadb:
            template = "SET STATEMENT innodb_lock_wait_timeout=0 FOR " + template
        return self.event_statement(model, template, claimable=CLAIMABLE.replace("{t}", "{table}"))

    def insert_unclaimed(
        self, model: type[StripeEvent], event: IncomingEvent, *, notify: str | None = None
    ) -> bool:
        # A plain insert whose duplicate-key error says "stored already": the
        # upsert's affected-row count cannot (Django connects with FOUND_ROWS,
        # so a no-op update counts 1, as an insert does), and INSERT IGNORE
        # would hide other errors too.
        sql = self.event_statement(model, _INSERT_UNCLAIMED)
        # In autocommit a failed statement costs nothing more; in a transaction, a savepoint.
        in_transaction = self.connection.in_atomic_block
        scope = transaction.atomic(using=self.connection.alias) if in_transaction else nullcontext()
        try:
            with scope, self.connection.cursor() as cursor:
                cursor.execute(sql, self.event_params(model, event))
        except IntegrityError as exc:
            if exc.args[0] != _DUPLICATE_KEY:
                raise
            return False
        return True

    def create_balance_row(self, model: type[LedgerBalance], account: str, currency: str) -> None:
        """An ignored duplicate insert (``INSERT IGNORE``) would leave a shared lock on the row, which
        the ``SELECT ... FOR UPDATE`` that follows must upgrade: two first writers doing that at once
        deadlock, and inside a receiver's transaction a deadlock cannot be retried. A no-op
        ``ON DUPLICATE KEY UPDATE`` takes the exclusive lock at once instead."""
        row = model(account=account, currency=currency, balance=0)
        fields = [f for f in model._meta.concrete_fields if not f.primary_key]

        def build() -> str:
            balance = quoted_columns(self.connection, [concrete_field(model, "balance")])
            return (
                f"INSERT INTO {self.connection.ops.quote_name(model._meta.db_table)} "
                f"({quoted_columns(self.connection, fields)}) VALUES ({', '.join(['%s'] * len(fields))}) "
                f"ON DUPLICATE KEY UPDATE {balance} = {balance}"
            )

        params = [f.get_db_prep_save(f.pre_save(row, add=True), self.connection) for f in fields]
        with self.connection.cursor() as cursor:
            cursor.execute(self.statement(("create_balance_row", model), build), params)

    def insert_entry(self, entry: LedgerEntry) -> bool:
        using = self.connection.alias
        if entry.reference is None:
            _insert(entry, using)
            return True
        try:
            # The reference was looked up under the balance's lock; only a writer
            # that did not take that lock can have written it since, and then only
            # the savepoint rolls back.
            with transaction.atomic(using=using):
                _insert(entry, using)
        except IntegrityError as exc:
            if exc.args[0] != _DUPLICATE_KEY:
                raise
            entry.pk = None
            return False
        return True

    def is_retryable(self, error: OperationalError) -> bool:
        return bool(error.args) and error.args[0] in (LOCK_WAIT_TIMEOUT, DEADLOCK)


def _insert(entry: LedgerEntry, using: str) -> None:
    # Model.save itself: LedgerEntry.save refuses every caller, so that no code but the
    # ledger's writes an entry (and none changes one).
    Model.save(entry, using=using, force_insert=True)


def _refused(model: type[StripeEvent], row: Row) -> bool:
    """Whether a read row is processed or under a live lease: no claim could take it now."""
    processed_at = row[returned_attnames(model).index("processed_at")]
    lease_left = row[-1]
    return processed_at is not None or (lease_left is not None and lease_left > 0)


# Each assignment repeats the claimable test, and claim_expires_at (which the
# test reads) is assigned last, so the statement means the same whether the
# server applies assignments in order (the default) or simultaneously
# (MariaDB's SIMULTANEOUS_ASSIGNMENT mode). VALUES(column) is the inserted
# value in both servers' dialects (MySQL 8.0.20+ also has a row alias, which
# MariaDB lacks, and warns that VALUES() is deprecated).
_UPSERT = """
INSERT INTO {table} ({inserted}) VALUES (
    %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
    %(endpoint)s, %(account)s, %(object_id)s,
    {now}, {now}, %(claimed_by)s, {now} + INTERVAL %(ttl_us)s MICROSECOND, %(token)s, 1, ''
)
ON DUPLICATE KEY UPDATE
    livemode = IF({claimable}, VALUES(livemode), livemode),
    api_version = IF({claimable}, VALUES(api_version), api_version),
    created = IF({claimable}, VALUES(created), created),
    payload = IF({claimable}, VALUES(payload), payload),
    claimed_at = IF({claimable}, {now}, claimed_at),
    claimed_by = IF({claimable}, %(claimed_by)s, claimed_by),
    claim_token = IF({claimable}, %(token)s, claim_token),
    attempts = IF({claimable}, attempts + 1, attempts),
    claim_expires_at = IF({claimable}, {now} + INTERVAL %(ttl_us)s MICROSECOND, claim_expires_at)
"""

_LEASE_LEFT = "TIMESTAMPDIFF(MICROSECOND, {now}, claim_expires_at) / 1e6"
_UPSERT_RETURNING = _UPSERT + "RETURNING {columns}, " + _LEASE_LEFT
_READ = "SELECT {columns}, " + _LEASE_LEFT + " FROM {table} WHERE event_id = %(event_id)s"
_INSERT_UNCLAIMED = "INSERT INTO {table} ({inserted}) VALUES " + UNCLAIMED_VALUES


# -- identifiers compare byte for byte ------------------------------------------------------
#
# MySQL and MariaDB compare text by the column's collation, and the server's
# default (utf8mb4_general_ci) folds case and accents and ignores trailing
# spaces: "cus_Alice" would be "cus_alice", "josé" would be "jose", and a
# repeated ledger reference would be found where none exists (a real credit
# dropped as a repeat). Every identifier column gets a binary collation that
# does not pad: utf8mb4_nopad_bin on MariaDB, utf8mb4_0900_bin on MySQL 8.

#: (model name, field name) of every column that holds an identifier.
IDENTIFIER_COLUMNS = (
    ("StripeEvent", "event_id"),
    ("StripeEvent", "claim_token"),
    ("StripeEvent", "endpoint"),
    ("StripeEvent", "account"),
    ("StripeEvent", "object_id"),
    ("StripeEvent", "superseded_by"),
    ("EventSyncWatermark", "endpoint"),
    ("EventEffect", "name"),
    ("EventEffect", "key"),
    ("EventEffect", "idempotency_key"),
    ("EventEffect", "claim_token"),
    ("LedgerBalance", "account"),
    ("LedgerBalance", "currency"),
    ("LedgerEntry", "account"),
    ("LedgerEntry", "currency"),
    ("LedgerEntry", "entry_type"),
    ("LedgerEntry", "reference"),
)


Column = tuple[str, str]


def collations_to_fix(connection: Any, columns: list[Column]) -> dict[Column, tuple[str, str, str]]:
    """Of the (table, column) pairs, the text columns that lack their binary collation:
    (character set, collation now, collation wanted), as the server has them now."""
    wanted = " OR ".join(["(TABLE_NAME = %s AND COLUMN_NAME = %s)"] * len(columns))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT TABLE_NAME, COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME "
            f"FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND ({wanted})",
            [value for pair in columns for value in pair],
        )
        # A column with no character set holds no text (a UUID is MariaDB 10.7+'s own type).
        live = {(table, column): (cs, coll) for table, column, cs, coll in cursor.fetchall() if cs}
    best = _binary_collations(connection, {charset for charset, _ in live.values()})
    return {
        key: (charset, collation, best[charset])
        for key, (charset, collation) in live.items()
        if collation != best[charset]
    }


def _binary_collations(connection: Any, charsets: set[str]) -> dict[str, str]:
    """For each character set, its collation that compares bytes and keeps trailing spaces."""
    if not charsets:
        return {}
    candidates = {
        charset: [f"{charset}_nopad_bin", f"{charset}_0900_bin", f"{charset}_bin"] for charset in charsets
    }
    names = [name for names in candidates.values() for name in names]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COLLATION_NAME FROM information_schema.COLLATIONS "
            f"WHERE COLLATION_NAME IN ({', '.join(['%s'] * len(names))})",
            names,
        )
        available = {row[0] for row in cursor.fetchall()}
    return {cs: next(name for name in ranked if name in available) for cs, ranked in candidates.items()}


def make_identifiers_binary(schema_editor: Any, columns: list[tuple[Any, str]]) -> None:
    """Give each (model, field name) column its binary collation: a migration's step, on MySQL
    and MariaDB only (the migration names its own columns, with its historical models).

    Each column keeps its type, nullability and indexes.
    """
    connection = schema_editor.connection
    if connection.vendor != "mysql":
        return
    fields = [(model, model._meta.get_field(name)) for model, name in columns]
    to_fix = collations_to_fix(connection, [(model._meta.db_table, field.column) for model, field in fields])
    quote = connection.ops.quote_name
    for model, field in fields:
        if (model._meta.db_table, field.column) not in to_fix:
            continue
        charset, _, wanted = to_fix[(model._meta.db_table, field.column)]
        # MODIFY restates the whole column: a database default must be restated too.
        default = getattr(field.db_default, "value", field.db_default)
        restated = "" if default is NOT_PROVIDED else f" DEFAULT {schema_editor.quote_value(default)}"
        schema_editor.execute(
            f"ALTER TABLE {quote(model._meta.db_table)} MODIFY {quote(field.column)} "
            f"{field.db_type(connection)} CHARACTER SET {charset} COLLATE {wanted} "
            f"{'NULL' if field.null else 'NOT NULL'}{restated}"
        )
