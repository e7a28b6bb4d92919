"""Where sync_stripe_events has caught up to, per endpoint (the endpoint compares byte for byte on
MySQL), and the cutoff before which prune_stripe_events has deleted processed events."""

from typing import Any

from django.apps.registry import Apps
from django.db import migrations, models

# Frozen, as 0003's list: the identifier column this migration adds.
COLUMNS = [("EventSyncWatermark", "endpoint")]


def make_identifiers_binary(apps: Apps, schema_editor: Any) -> None:
    from stripe_idempotency.backends.mysql import make_identifiers_binary

    columns = [(apps.get_model("stripe_idempotency", model), field) for model, field in COLUMNS]
    make_identifiers_binary(schema_editor, columns)


class Migration(migrations.Migration):
    dependencies = [
        ("stripe_idempotency", "0006_superseded_by"),
    ]

    operations = [
        migrations.CreateModel(
            name="EventSyncWatermark",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "endpoint",
                    models.CharField(
                        blank=True,
                        help_text=(
                            "The endpoint the events were fed to (a name of ENDPOINTS); "
                            "empty for the default one."
                        ),
                        max_length=64,
                        unique=True,
                        verbose_name="endpoint",
                    ),
                ),
                ("synced_until", models.DateTimeField(verbose_name="synced until")),
                ("updated_at", models.DateTimeField(auto_now=True, verbose_name="updated at")),
            ],
            options={
                "verbose_name": "events sync watermark",
                "verbose_name_plural": "events sync watermarks",
            },
        ),
        migrations.CreateModel(
            name="PruneWatermark",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("pruned_before", models.DateTimeField(verbose_name="pruned before")),
                ("updated_at", models.DateTimeField(auto_now=True, verbose_name="updated at")),
            ],
            options={"verbose_name": "prune watermark", "verbose_name_plural": "prune watermarks"},
        ),
        # Not atomic: MySQL cannot run DDL in a transaction.
        migrations.RunPython(make_identifiers_binary, migrations.RunPython.noop, atomic=False),
    ]
