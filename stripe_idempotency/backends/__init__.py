"""One home per database: the SQL each supported backend needs, behind :class:`DatabaseBackend`.

:func:`for_connection` picks the backend of a Django connection by its
``vendor``. Adding a database is adding a module here that implements the
protocol, and a line in ``_BACKENDS`` (see the docs' "Adding a database
backend").
"""

from __future__ import annotations

from collections.abc import Callable

from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper

from stripe_idempotency.backends.base import ClaimRow, DatabaseBackend
from stripe_idempotency.backends.mysql import MySQLBackend
from stripe_idempotency.backends.postgresql import PostgreSQLBackend
from stripe_idempotency.backends.sqlite import SQLiteBackend
from stripe_idempotency.exceptions import UnsupportedDatabase

__all__ = ["SUPPORTED_VENDORS", "ClaimRow", "DatabaseBackend", "UnsupportedDatabase", "for_connection"]


_BACKENDS: dict[str, Callable[[BaseDatabaseWrapper], DatabaseBackend]] = {
    "postgresql": PostgreSQLBackend,
    "mysql": MySQLBackend,
    "sqlite": SQLiteBackend,
}

#: The ``connection.vendor`` values with a backend here.
SUPPORTED_VENDORS = tuple(_BACKENDS)


def for_connection(connection: BaseDatabaseWrapper) -> DatabaseBackend:
    """The backend for ``connection``; :class:`UnsupportedDatabase` if its database has none."""
    backend = _BACKENDS.get(connection.vendor)
    if backend is None:
        raise UnsupportedDatabase(connection.alias, connection.vendor, supported=SUPPORTED_VENDORS)
    # The thread's own wrapper, not ``django.db.connection``'s proxy to it.
    return backend(connections[connection.alias])
