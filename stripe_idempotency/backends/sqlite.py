"""SQLite: one writer at a time, so every statement sees the database as it is.

The claim is ``INSERT ... ON CONFLICT DO UPDATE ... WHERE ... RETURNING``; a
refused claim returns nothing, and only then is the row read (the upsert
waited for the writer before it, so the read sees what that writer
committed). The clock is SQLite's own ``'now'``, in the text format Django
stores datetimes in.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.db import OperationalError

from stripe_idempotency.backends.base import CLAIMABLE, ClaimRow, InsertOnConflictDoNothing, Row
from stripe_idempotency.events import IncomingEvent

if TYPE_CHECKING:
    from stripe_idempotency.models import StripeEvent

_NOW = "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now')"


class SQLiteBackend(InsertOnConflictDoNothing):
    vendor = "sqlite"
    now = _NOW
    lease_end = "STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %(ttl)s)"

    __slots__ = ()

    def lease_param(self, ttl: float) -> str:
        # SQLite adds time as a modifier string: '+300.000000 seconds'.
        return f"+{ttl:.6f} seconds"

    def claim(
        self, model: type[StripeEvent], event: IncomingEvent, token: uuid.UUID, *, claimed_by: str, ttl: float
    ) -> ClaimRow:
        # SQLite adds time as a modifier string: '+300.000000 seconds'.
        params = {**self.claim_params(model, event, token, claimed_by), "ttl": f"+{ttl:.6f} seconds"}
        with self.connection.cursor() as cursor:
            cursor.execute(
                self.event_statement(model, _CLAIM, claimable=CLAIMABLE.replace("{t}", "{table}")), params
            )
            row: Row | None = cursor.fetchone()
            if row is None:
                cursor.execute(self.event_statement(model, _READ), {"event_id": event.id})
                row = cursor.fetchone()
        return self.claim_row(model, row, event.payload)

    def is_retryable(self, error: OperationalError) -> bool:
        # "database is locked": the busy timeout ran out behind another writer.
        return "locked" in str(error)


_CLAIM = """
INSERT INTO {table} ({inserted}) VALUES (
    %(event_id)s, %(type)s, %(livemode)s, %(api_version)s, %(created)s, %(payload)s,
    %(endpoint)s, %(account)s, %(object_id)s,
    {now}, {now}, %(claimed_by)s,
    STRFTIME('%%Y-%%m-%%d %%H:%%M:%%f', 'now', %(ttl)s), %(token)s, 1, ''
)
ON CONFLICT (event_id) DO UPDATE SET
    livemode = excluded.livemode,
    api_version = excluded.api_version,
    created = excluded.created,
    payload = excluded.payload,
    claimed_at = excluded.claimed_at,
    claimed_by = excluded.claimed_by,
    claim_expires_at = excluded.claim_expires_at,
    claim_token = excluded.claim_token,
    attempts = {table}.attempts + 1
WHERE {claimable}
RETURNING {columns}, NULL
"""

_READ = """
SELECT {columns}, (julianday(claim_expires_at) - julianday('now')) * 86400.0
FROM {table} WHERE event_id = %(event_id)s
"""
