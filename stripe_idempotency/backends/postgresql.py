"""PostgreSQL: every decision in one statement.

* The claim is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE <claimable>`` inside
  a CTE that also returns the existing row when the claim is refused, so a
  first delivery, a duplicate and a busy answer each cost one round trip.
* A credit or debit locks the balance, inserts the entry and moves the balance
  in one statement, so a hot account's lock is held for one statement and the
  COMMIT.
* The clock is ``statement_timestamp()``: one instant for the whole statement.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.db import OperationalError

from stripe_idempotency.backends.base import (
    CLAIMABLE,
    UNCLAIMED_VALUES,
    ClaimRow,
    InsertOnConflictDoNothing,
    Row,
    entry_fields,
    reference_scope,
)
from stripe_idempotency.events import IncomingEvent
from stripe_idempotency.sql import column, concrete_field, quoted_columns

if TYPE_CHECKING:
    from stripe_idempotency.models import LedgerBalance, LedgerEntry, StripeEvent

# Serialisation failure and deadlock: the transaction may simply be run again.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


class PostgreSQLBackend(InsertOnConflictDoNothing):
    vendor = "postgresql"
    now = "statement_timestamp()"
    lease_end = "statement_timestamp() + make_interval(secs => %(ttl)s)"

    __slots__ = ()

    def claim(
        self, model: type[StripeEvent], event: IncomingEvent, token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> ClaimRow:
        params = {**self.claim_params(model, event, token, claimed_by), "ttl": ttl}
        with self.connection.cursor() as cursor:
            cursor.execute(
                self.event_statement(model, _CLAIM, claimable=CLAIMABLE.replace("{t}", "e")), params
            )
            row: Row | None = cursor.fetchone()
            if row is None:
                # The conflicting row was inserted by a transaction that committed
                # after this statement took its snapshot: the upsert saw it (and was
                # refused), the SELECT could not. A new statement sees it.
                cursor.execute(self.event_statement(model, _READ), {"event_id": event.id})
                row = cursor.fetchone()
        return self.claim_row(model, row, event.payload)

    def insert_unclaimed(
        self, model: type[StripeEvent], event: IncomingEvent, *, notify: str | None = None
    ) -> bool:
        if notify is None:
            return super().insert_unclaimed(model, event)
        # pg_notify in the statement that inserts: sent when the row commits, only if it was new.
        with self.connection.cursor() as cursor:
            sql = self.event_statement(model, _INSERT_UNCLAIMED_AND_NOTIFY)
            cursor.execute(sql, {**self.event_params(model, event), "channel": notify})
            return cursor.fetchone() is not None

    def apply_in_one_statement(
        self, entry: LedgerEntry, balances: type[LedgerBalance], *, allow_negative: bool
    ) -> bool:
        # A credit never overdraws; a debit may only where allowed (the general path's rule).
        may_go_negative = allow_negative or entry.amount > 0
        entries = type(entry)
        params = [
            entry.amount if field.name == "balance_after" else param
            for field, param in zip(entry_fields(entries), self.entry_params(entry), strict=True)
        ]
        with self.connection.cursor() as cursor:
            cursor.execute(
                self.statement(
                    ("apply_in_one_statement", entries, balances),
                    lambda: self._one_statement(entries, balances),
                ),
                [entry.account, entry.currency, *params, may_go_negative, entry.amount],
            )
            row = cursor.fetchone()
        if row is None:
            return False
        self.saved(entry, row[0])
        entry.balance_after = row[1]
        return True

    def _one_statement(self, entries: type[LedgerEntry], balances: type[LedgerBalance]) -> str:
        """Lock the balance; insert the entry unless it overdraws or its reference exists; move the
        balance by what was inserted. Returns the entry's id and balance_after, or no row."""
        connection = self.connection
        quote = connection.ops.quote_name
        balance_table = quote(balances._meta.db_table)
        balance, account, currency, updated_at = (
            quote(column(concrete_field(balances, name)))
            for name in ("balance", "account", "currency", "updated_at")
        )
        fields = entry_fields(entries)
        # balance_after is the locked balance plus the amount; every other column a parameter.
        values = [f"locked.{balance} + %s" if f.name == "balance_after" else "%s" for f in fields]
        returned = [entries._meta.pk, concrete_field(entries, "balance_after")]
        return (
            f"WITH locked AS ("
            f"SELECT id, {balance} FROM {balance_table} WHERE {account} = %s AND {currency} = %s FOR UPDATE"
            f"), inserted AS ("
            f"INSERT INTO {quote(entries._meta.db_table)} ({quoted_columns(connection, fields)}) "
            f"SELECT {', '.join(values)} FROM locked WHERE %s OR locked.{balance} + %s >= 0 "
            f"ON CONFLICT ({quoted_columns(connection, reference_scope(entries))}) DO NOTHING "
            f"RETURNING {quoted_columns(connection, returned)}"
            f"), moved AS ("
            f"UPDATE {balance_table} "
            f"SET {balance} = inserted.balance_after, {updated_at} = statement_timestamp() "
            f"FROM inserted, locked WHERE {balance_table}.id = locked.id"
            f") SELECT * FROM inserted"
        )

    def is_retryable(self, error: OperationalError) -> bool:
        return getattr(error.__cause__, "sqlstate", None) in _RETRYABLE_SQLSTATES


_CLAIM = """
WITH claimed AS (
    INSERT INTO {table} AS e ({inserted}) VALUES (
        %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
        %(endpoint)s, %(account)s, %(object_id)s,
        {now}, {now}, %(claimed_by)s, {now} + make_interval(secs => %(ttl)s), %(token)s, 1, ''
    )
    ON CONFLICT (event_id) DO UPDATE SET
        livemode = EXCLUDED.livemode,
        api_version = EXCLUDED.api_version,
        created = EXCLUDED.created,
        payload = EXCLUDED.payload,
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
SELECT {columns}, EXTRACT(EPOCH FROM claim_expires_at - {now})
FROM {table} WHERE event_id = %(event_id)s AND NOT EXISTS (SELECT 1 FROM claimed)
"""

_INSERT_UNCLAIMED_AND_NOTIFY = (
    "WITH inserted AS (INSERT INTO {table} ({inserted}) VALUES "
    + UNCLAIMED_VALUES
    + " ON CONFLICT (event_id) DO NOTHING RETURNING id) "
    "SELECT pg_notify(%(channel)s, %(event_id)s) FROM inserted"
)

_READ = """
SELECT {columns}, EXTRACT(EPOCH FROM claim_expires_at - {now})
FROM {table} WHERE event_id = %(event_id)s
"""
