"""Identifier columns compare byte for byte on MySQL and MariaDB (see backends.mysql)."""

from typing import Any

from django.apps.registry import Apps
from django.db import migrations

# The columns as they stood at this migration: a frozen copy of backends.mysql.IDENTIFIER_COLUMNS
# (which the system check W004 reads), so that a later migration adding an identifier names it there.
COLUMNS = [
    ("StripeEvent", "event_id"),
    ("StripeEvent", "claim_token"),
    ("LedgerBalance", "account"),
    ("LedgerBalance", "currency"),
    ("LedgerEntry", "account"),
    ("LedgerEntry", "currency"),
    ("LedgerEntry", "entry_type"),
    ("LedgerEntry", "reference"),
]


def make_identifiers_binary(apps: Apps, schema_editor: Any) -> None:
    from stripe_idempotency.backends.mysql import make_identifiers_binary

    columns = [(apps.get_model("stripe_idempotency", model), field) for model, field in COLUMNS]
    make_identifiers_binary(schema_editor, columns)


class Migration(migrations.Migration):
    dependencies = [
        ("stripe_idempotency", "0002_ledger"),
    ]

    operations = [
        # Nothing to undo: a binary collation is what the other databases have. Not atomic:
        # MySQL cannot run DDL in a transaction.
        migrations.RunPython(make_identifiers_binary, migrations.RunPython.noop, atomic=False),
    ]
