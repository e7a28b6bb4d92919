"""Claims on events: take, complete (fenced), release. The only writer of the claim columns.

A claim is a lease: ``claim_token`` names its holder, ``claim_expires_at`` its
end. Every time here comes from the database's clock, never from the
instance's own, so instances with skewed clocks still agree on who holds what.

A claim is one statement, committed on its own before any receiver runs
(:func:`claim` refuses to run inside a transaction): an instance that dies
after claiming leaves a lease that simply expires, and nobody ever waits on
an uncommitted row. Each backend gets the single statement it can say best:

* PostgreSQL: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <claimable>``
  inside a CTE that also returns the existing row when the claim is refused,
  so a first delivery, a duplicate and a busy answer all cost one round trip.
* MariaDB 10.5+: ``INSERT ... ON DUPLICATE KEY UPDATE`` with every assignment
  conditional on the row being claimable, ``RETURNING`` the row: one round trip.
  MySQL has no ``RETURNING``, so it reads the row back: two.
* SQLite: ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``, then
  a read of the row only when the claim was refused.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import cache, lru_cache
from typing import Any

from django.db import OperationalError, connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import DurationField, ExpressionWrapper, F, Field, Q, QuerySet
from django.db.models.expressions import Col
from django.db.models.functions import Now

from stripe_idempotency.conf import app_settings
from stripe_idempotency.exceptions import ClaimRequired, LeaseLost
from stripe_idempotency.models import StripeEvent
from stripe_idempotency.sql import concrete_field, quoted_columns
from stripe_idempotency.verification import VerifiedEvent


@dataclass(frozen=True, slots=True)
class Claimed:
    """This process holds the lease on ``event`` under ``token`` until it completes or releases it."""

    event: StripeEvent
    token: uuid.UUID
    using: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The event was processed already; nothing is to be done."""

    event_id: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another instance holds a live lease on the event; ask again in ``retry_after`` seconds."""

    event_id: str
    retry_after: int


ClaimResult = Claimed | Duplicate | Busy

# A refused claim whose row looks claimable means the holder finished or
# released between the claim and the read; try again this many times before
# answering busy.
_CLAIM_ROUNDS = 3
# MySQL/MariaDB can pick two concurrent upserts of a new key as deadlock
# victims; the statement is safe to repeat.
_MYSQL_DEADLOCK = 1213
# MariaDB's upsert does not wait for a lock on the event's row (see _claim_mysql).
_MYSQL_LOCK_WAIT_TIMEOUT = 1205


def claim(verified: VerifiedEvent, *, using: str | None = None) -> ClaimResult:
    """Claim ``verified`` for this process: store it if it is new, or take over its row.

    A row is taken over when it is not processed and its lease is absent
    (released after a failure) or expired (its holder died or is too slow).
    Must be called in autocommit mode: the claim is committed when this returns.
    """
    using = using or router.db_for_write(StripeEvent)
    connection = connections[using]
    if connection.in_atomic_block:
        raise ClaimRequired(
            "Claims must be made outside transaction.atomic(): the claim has to commit "
            "before any receiver runs."
        )
    token = uuid.uuid4()
    statement = _CLAIM_STATEMENTS[connection.vendor]
    params = _claim_params(connection, verified, token)
    for _ in range(_CLAIM_ROUNDS):
        row = statement(connection, params)
        event, lease_left = _event_from_row(connection, using, row, verified.payload)
        if event.claim_token == token:
            return Claimed(event=event, token=token, using=using)
        if event.processed_at is not None:
            return Duplicate(event_id=verified.id)
        if lease_left is not None and lease_left > 0:
            return Busy(event_id=verified.id, retry_after=retry_after(lease_left))
    return Busy(event_id=verified.id, retry_after=1)


def complete(claimed: Claimed) -> None:
    """Mark the event processed, if and only if ``claimed`` still holds its lease.

    This is the fence: call it last, inside the transaction that holds the
    receivers' work. When another instance has taken the event over, nothing
    is updated and :class:`LeaseLost` is raised, so that work rolls back.
    """
    connection = connections[claimed.using]
    # Every delivery runs this statement: it is built once per backend, as the
    # claim is, rather than compiled by the ORM each time.
    sql = _sql(connection, _COMPLETE, now=_NOW[connection.vendor])
    token = concrete_field(StripeEvent, "claim_token").get_db_prep_save(claimed.token, connection)
    with connection.cursor() as cursor:
        cursor.execute(sql, {"pk": claimed.event.pk, "token": token})
        updated = cursor.rowcount
    if updated != 1:
        raise LeaseLost(f"Another instance took over the lease on {claimed.event.event_id}.")


def release(claimed: Claimed, error: str) -> bool:
    """Give the lease up at once after a failure, recording ``error``.

    The next delivery (or the reaper) can claim the event immediately rather
    than wait for the lease to run out. Returns ``False`` when the lease was
    no longer ours, in which case nothing is changed.
    """
    updated = (
        StripeEvent.objects.using(claimed.using)
        .filter(pk=claimed.event.pk, claim_token=claimed.token)
        .update(claim_expires_at=None, claim_token=None, last_error=error)
    )
    return updated == 1


def find_stale(
    *,
    using: str | None = None,
    event_type: str | None = None,
    min_age: float = 0,
    limit: int | None = None,
) -> QuerySet[StripeEvent]:
    """Events that are not processed and not under a live lease, oldest first.

    ``min_age`` leaves alone events whose last claim is more recent than that
    many seconds (a failure Stripe will retry soon). Each row carries ``age``,
    the time since it was first received, on the database clock. Served by the
    ``stripe_event_unprocessed_idx`` index: the cost follows the number of
    unprocessed rows, not the size of the table.
    """
    events = StripeEvent.objects.using(using or router.db_for_read(StripeEvent)).stale()
    if event_type is not None:
        events = events.filter(type=event_type)
    if min_age > 0:
        events = events.filter(claimed_at__lte=Now() - timedelta(seconds=min_age))
    age = ExpressionWrapper(Now() - F("received_at"), output_field=DurationField())
    events = events.annotate(age=age).order_by("id")
    return events[:limit] if limit is not None else events


def reclaim_processed(event: StripeEvent, *, using: str | None = None) -> Claimed | None:
    """Take a fresh claim on a *processed* event, making it unprocessed again (a forced replay).

    Returns ``None`` if the event is not processed, or is under a live lease.
    """
    using = using or router.db_for_write(StripeEvent)
    if connections[using].in_atomic_block:
        raise ClaimRequired("A forced replay must claim outside transaction.atomic().")
    token = uuid.uuid4()
    updated = (
        StripeEvent.objects.using(using)
        .filter(pk=event.pk, processed_at__isnull=False)
        .filter(Q(claim_expires_at__isnull=True) | Q(claim_expires_at__lte=Now()))
        .update(
            processed_at=None,
            claim_token=token,
            claimed_at=Now(),
            claimed_by=app_settings.INSTANCE_ID,
            claim_expires_at=Now() + timedelta(seconds=app_settings.CLAIM_TTL_SECONDS),
            attempts=F("attempts") + 1,
        )
    )
    if updated != 1:
        return None
    event = StripeEvent.objects.using(using).get(pk=event.pk)
    return Claimed(event=event, token=token, using=using)


def busy_retry_after(event_id: str, *, using: str) -> int:
    """The ``Retry-After`` for an event whose lease someone else holds (1 if nobody does)."""
    lease_left = ExpressionWrapper(F("claim_expires_at") - Now(), output_field=DurationField())
    left = (
        StripeEvent.objects.using(using)
        .filter(event_id=event_id, processed_at__isnull=True)
        .values_list(lease_left, flat=True)
        .first()
    )
    return retry_after(left.total_seconds() if left is not None else None)


def retry_after(lease_left: float | None) -> int:
    """Whole seconds to wait: the lease left rounded up, at least 1, at most the configured cap."""
    if lease_left is None or lease_left <= 0:
        return 1
    return max(1, min(app_settings.RETRY_AFTER_MAX_SECONDS, math.ceil(lease_left)))


# -- the statement of each backend --------------------------------------------------------

Row = Sequence[Any]


@cache
def _returned_fields() -> tuple[Field[Any, Any], ...]:
    # Every column but the payload: the caller already holds it decoded, and
    # reading it back would mean parsing it a second time.
    return tuple(f for f in StripeEvent._meta.concrete_fields if f.name != "payload")


_sql_cache: dict[tuple[str, str], str] = {}


def _sql(connection: BaseDatabaseWrapper, template: str, **extra: str) -> str:
    """``template`` with the table and column names quoted for ``connection``, built once."""
    key = (connection.vendor, template)
    sql = _sql_cache.get(key)
    if sql is None:
        quote = connection.ops.quote_name
        table = quote(StripeEvent._meta.db_table)
        sql = template.format(
            table=table,
            inserted=_INSERTED,
            columns=quoted_columns(connection, _returned_fields()),
            **{name: value.format(table=table) for name, value in extra.items()},
        )
        _sql_cache[key] = sql
    return sql


# The token alone is the fence: every writer that sets processed_at clears the
# token, so a row that still carries ours is unprocessed. Leaving processed_at
# out of the WHERE leaves the primary key as the only index the statement can
# use: on MariaDB with a young table's statistics the optimizer otherwise
# scanned stripe_event_unprocessed_idx, locking other events' entries on the
# way, and two deliveries' fenced updates deadlocked.
_COMPLETE = """
UPDATE {table} SET processed_at = {now}, claim_expires_at = NULL, claim_token = NULL
WHERE id = %(pk)s AND claim_token = %(token)s
"""


def _claim_params(
    connection: BaseDatabaseWrapper, verified: VerifiedEvent, token: uuid.UUID
) -> dict[str, Any]:
    def prepare(name: str, value: Any) -> Any:
        return concrete_field(StripeEvent, name).get_db_prep_save(value, connection)

    ttl = app_settings.CLAIM_TTL_SECONDS
    return {
        "event_id": verified.id,
        "type": verified.type,
        "livemode": verified.livemode,
        "api_version": verified.api_version or "",
        "created": prepare("created", verified.created),
        "payload": prepare("payload", verified.payload),
        "claimed_by": app_settings.INSTANCE_ID,
        "token": prepare("claim_token", token),
        "ttl": ttl,
        "ttl_us": round(ttl * 1_000_000),
        "ttl_modifier": f"+{ttl:.6f} seconds",
    }


# The columns a claim writes when it stores a new event, in the order of every VALUES below.
_INSERTED = (
    "event_id, type, livemode, api_version, created, payload, received_at, "
    "claimed_at, claimed_by, claim_expires_at, claim_token, attempts, last_error"
)

_CLAIMABLE = "{t}.processed_at IS NULL AND ({t}.claim_expires_at IS NULL OR {t}.claim_expires_at <= {now})"

_POSTGRESQL = """
WITH claimed AS (
    INSERT INTO {table} AS e ({inserted}) VALUES (
        %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
        statement_timestamp(), statement_timestamp(), %(claimed_by)s,
        statement_timestamp() + make_interval(secs => %(ttl)s), %(token)s, 1, ''
    )
    ON CONFLICT (event_id) DO UPDATE SET
        claimed_at = EXCLUDED.claimed_at,
        claimed_by = EXCLUDED.claimed_by,
        claim_expires_at = EXCLUDED.claim_expires_at,
        claim_token = EXCLUDED.claim_token,
        attempts = e.attempts + 1
    WHERE {claimable}
    RETURNING {columns}
)
SELECT {columns}, NULL FROM claimed
UNION ALL
-- Refused: the row as it stood, from the same statement (no second round trip).
SELECT {columns}, EXTRACT(EPOCH FROM claim_expires_at - statement_timestamp())
FROM {table} WHERE event_id = %(event_id)s AND NOT EXISTS (SELECT 1 FROM claimed)
"""

_POSTGRESQL_READ = """
SELECT {columns}, EXTRACT(EPOCH FROM claim_expires_at - statement_timestamp())
FROM {table} WHERE event_id = %(event_id)s
"""


def _claim_postgresql(connection: BaseDatabaseWrapper, params: dict[str, Any]) -> Row | None:
    sql = _sql(connection, _POSTGRESQL, claimable=_CLAIMABLE.format(t="e", now="statement_timestamp()"))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row: Row | None = cursor.fetchone()
        if row is not None:
            return row
        # The conflicting row was inserted by a transaction that committed
        # after this statement took its snapshot: the upsert saw it (and was
        # refused), the SELECT could not. A new statement sees it.
        cursor.execute(_sql(connection, _POSTGRESQL_READ), {"event_id": params["event_id"]})
        row = cursor.fetchone()
        return row


_SQLITE_NOW = "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"

_SQLITE = """
INSERT INTO {table} ({inserted}) VALUES (
    %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
    {now}, {now}, %(claimed_by)s,
    STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %(ttl_modifier)s), %(token)s, 1, ''
)
ON CONFLICT (event_id) DO UPDATE SET
    claimed_at = excluded.claimed_at,
    claimed_by = excluded.claimed_by,
    claim_expires_at = excluded.claim_expires_at,
    claim_token = excluded.claim_token,
    attempts = {table}.attempts + 1
WHERE {claimable}
RETURNING {columns}, NULL
"""

_SQLITE_READ = """
SELECT {columns}, (julianday(claim_expires_at) - julianday('now')) * 86400.0
FROM {table} WHERE event_id = %(event_id)s
"""


def _claim_sqlite(connection: BaseDatabaseWrapper, params: dict[str, Any]) -> Row | None:
    upsert = _sql(
        connection, _SQLITE, now=_SQLITE_NOW, claimable=_CLAIMABLE.format(t="{table}", now=_SQLITE_NOW)
    )
    with connection.cursor() as cursor:
        cursor.execute(upsert, params)
        row: Row | None = cursor.fetchone()
        if row is not None:
            return row
        # SQLite has one writer at a time: the upsert above waited for it, so
        # this read sees the row as the winner committed it.
        cursor.execute(_sql(connection, _SQLITE_READ), {"event_id": params["event_id"]})
        row = cursor.fetchone()
        return row


_MYSQL_CLAIMABLE = _CLAIMABLE.format(t="{table}", now="NOW(6)")

# Each assignment repeats the claimable test, and claim_expires_at (which the
# test reads) is assigned last, so the statement means the same whether the
# server applies assignments in order (the default) or simultaneously
# (MariaDB's SIMULTANEOUS_ASSIGNMENT mode).
_MYSQL = """
INSERT INTO {table} ({inserted}) VALUES (
    %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
    NOW(6), NOW(6), %(claimed_by)s, NOW(6) + INTERVAL %(ttl_us)s MICROSECOND, %(token)s, 1, ''
)
ON DUPLICATE KEY UPDATE
    claimed_at = IF({claimable}, NOW(6), claimed_at),
    claimed_by = IF({claimable}, %(claimed_by)s, claimed_by),
    claim_token = IF({claimable}, %(token)s, claim_token),
    attempts = IF({claimable}, attempts + 1, attempts),
    claim_expires_at = IF({claimable}, NOW(6) + INTERVAL %(ttl_us)s MICROSECOND, claim_expires_at)
"""

_MYSQL_LEASE_LEFT = "TIMESTAMPDIFF(MICROSECOND, NOW(6), claim_expires_at) / 1e6"
_MYSQL_RETURNING = _MYSQL + "RETURNING {columns}, " + _MYSQL_LEASE_LEFT
_MYSQL_READ = "SELECT {columns}, " + _MYSQL_LEASE_LEFT + " FROM {table} WHERE event_id = %(event_id)s"


def _claim_mysql(
    connection: BaseDatabaseWrapper, params: dict[str, Any], *, returning: bool | None = None
) -> Row | None:
    """A plain read first; the upsert only for a new or claimable event, and never waiting for a lock.

    InnoDB's upsert locks an existing row exclusively even when it changes
    nothing. A receiver transaction holding a shared lock on that row (which any
    foreign key to the event takes, the ledger's included) would then queue
    behind a waiting upsert for its own fenced update: a deadlock, and the
    receivers' work rolled back. So duplicates and busy answers come from a
    read that takes no lock, and the upsert itself does not wait: a row that a
    transaction holds is being worked on, so the claim reads again and is
    answered busy. The upsert still decides every claim, so a race between the
    read and the upsert changes nothing. (MySQL has no per-statement way to
    wait zero seconds; its upsert may still wait for the lock.)
    """
    upsert, returning = _mysql_upsert(connection, returning)
    read = _sql(connection, _MYSQL_READ)
    existing: Row | None = None
    for attempt in range(3):
        try:
            with connection.cursor() as cursor:
                cursor.execute(read, {"event_id": params["event_id"]})
                existing = cursor.fetchone()
                if existing is not None and _refused(existing):
                    return existing
                cursor.execute(upsert, params)
                if not returning:
                    cursor.execute(read, {"event_id": params["event_id"]})
                row: Row | None = cursor.fetchone()
                return row
        except OperationalError as exc:
            locked = exc.args[0] == _MYSQL_LOCK_WAIT_TIMEOUT
            if locked and existing is not None:
                return existing  # held by a transaction: not ours, so claim() answers busy
            if not (locked or exc.args[0] == _MYSQL_DEADLOCK) or attempt == 2:
                raise
    raise AssertionError("unreachable")


def _mysql_upsert(connection: BaseDatabaseWrapper, returning: bool | None = None) -> tuple[str, bool]:
    """The claim's upsert for this server, and whether it returns the row (MariaDB 10.5+)."""
    mariadb = connection.mysql_is_mariadb  # type: ignore[attr-defined]
    if returning is None:
        returning = mariadb and connection.mysql_version >= (10, 5)  # type: ignore[attr-defined]
    template = _MYSQL_RETURNING if returning else _MYSQL
    if mariadb:
        template = "SET STATEMENT innodb_lock_wait_timeout=0 FOR " + template
    return _sql(connection, template, claimable=_MYSQL_CLAIMABLE), returning


def _refused(row: Row) -> bool:
    """Whether a read row is processed or under a live lease: no claim could take it now."""
    processed_at = row[_returned_attnames().index("processed_at")]
    lease_left = row[-1]
    return processed_at is not None or (lease_left is not None and lease_left > 0)


# The current time on each backend's clock, as the claim statements read it.
_NOW = {"postgresql": "statement_timestamp()", "mysql": "NOW(6)", "sqlite": _SQLITE_NOW}

_CLAIM_STATEMENTS: dict[str, Callable[[BaseDatabaseWrapper, dict[str, Any]], Row | None]] = {
    "postgresql": _claim_postgresql,
    "sqlite": _claim_sqlite,
    "mysql": _claim_mysql,
}


@cache
def _returned_attnames() -> list[str]:
    # Cached, so the same list serves every call: never mutate it.
    return [f.attname for f in _returned_fields()]


# Keyed by the connection object (one per thread and alias), whose backend's
# converters these are; a handful of entries live, the bound only guards churn.
@lru_cache(maxsize=64)
def _row_converters(connection: BaseDatabaseWrapper) -> tuple[tuple[Col, tuple[Any, ...]], ...]:
    """Each returned column with the converters the ORM would apply to it, worked out once."""
    table = StripeEvent._meta.db_table
    columns = [field.get_col(table) for field in _returned_fields()]
    return tuple(
        (column, (*connection.ops.get_db_converters(column), *column.field.get_db_converters(connection)))
        for column in columns
    )


def _event_from_row(
    connection: BaseDatabaseWrapper, using: str, row: Row | None, payload: dict[str, Any]
) -> tuple[StripeEvent, float | None]:
    """Turn a claim statement's row into a model instance, the way the ORM would."""
    if row is None:
        # The upsert either inserts, updates or finds the row; only a delete
        # racing with it could leave nothing.
        raise LookupError("The event's row vanished while it was being claimed.")
    values = []
    for (column, converters), value in zip(_row_converters(connection), row, strict=False):
        for converter in converters:
            value = converter(value, column, connection)
        values.append(value)
    event = StripeEvent.from_db(using, _returned_attnames(), values)
    event.payload = payload
    lease_left = row[len(_returned_fields())]
    return event, None if lease_left is None else float(lease_left)
