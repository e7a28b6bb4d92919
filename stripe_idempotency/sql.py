"""Column lists for the statements that ``leases`` and ``ledger`` write by hand.

Those statements exist because the ORM cannot say them (a conditional upsert
that returns the refused row; an insert that does nothing on conflict), but
their table and column names still come from the models, so a ``db_table``
or ``db_column`` change reaches them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model


def concrete_field(model: type[Model], name: str) -> Field[Any, Any]:
    """``model``'s field ``name``, which must have a column (not a reverse relation)."""
    field = model._meta.get_field(name)
    if not isinstance(field, Field) or field.column is None:
        raise TypeError(f"{model.__name__}.{name} is not a concrete field.")
    return field


def column(field: Field[Any, Any]) -> str:
    """The column of a concrete field (the stubs allow ``None``, which only non-concrete fields have)."""
    if field.column is None:
        raise TypeError(f"{field!r} has no column.")
    return field.column


def quoted_columns(connection: BaseDatabaseWrapper, fields: Iterable[Field[Any, Any]]) -> str:
    """``"a", "b", "c"``: the fields' columns, quoted for ``connection``, in order."""
    return ", ".join(connection.ops.quote_name(column(field)) for field in fields)
