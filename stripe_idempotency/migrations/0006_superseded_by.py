"""superseded_by: the later event whose processing made an event's receivers unnecessary (ORDERING)."""

from typing import Any

from django.apps.registry import Apps
from django.db import migrations, models

# Frozen, as 0003's list: the identifier column this migration adds.
COLUMNS = [("StripeEvent", "superseded_by")]


def make_identifiers_binary(apps: Apps, schema_editor: Any) -> None:
    from stripe_idempotency.backends.mysql import make_identifiers_binary

    columns = [(apps.get_model("stripe_idempotency", model), field) for model, field in COLUMNS]
    make_identifiers_binary(schema_editor, columns)


class Migration(migrations.Migration):
    dependencies = [
        ("stripe_idempotency", "0005_endpoint_account_object"),
    ]

    operations = [
        migrations.AddField(
            model_name="stripeevent",
            name="superseded_by",
            field=models.CharField(
                blank=True,
                help_text=(
                    "Completed without running its receivers: this later event about the same object "
                    "was processed first (ORDERING 'skip_superseded')."
                ),
                max_length=255,
                null=True,
                verbose_name="superseded by",
            ),
        ),
        # Not atomic: MySQL cannot run DDL in a transaction.
        migrations.RunPython(make_identifiers_binary, migrations.RunPython.noop, atomic=False),
    ]
