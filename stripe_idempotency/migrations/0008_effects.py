"""Effects: work outside the database an event's receivers scheduled, run once past the commit.
Their identifiers compare byte for byte on MySQL and MariaDB (see backends.mysql)."""

from typing import Any

import django.db.models.deletion
import django.db.models.functions.datetime
from django.apps.registry import Apps
from django.db import migrations, models

# Frozen, as 0003's list: the identifier columns this migration adds.
COLUMNS = [
    ("EventEffect", "name"),
    ("EventEffect", "key"),
    ("EventEffect", "idempotency_key"),
    ("EventEffect", "claim_token"),
]


def make_identifiers_binary(apps: Apps, schema_editor: Any) -> None:
    from stripe_idempotency.backends.mysql import make_identifiers_binary

    columns = [(apps.get_model("stripe_idempotency", model), field) for model, field in COLUMNS]
    make_identifiers_binary(schema_editor, columns)


class Migration(migrations.Migration):
    dependencies = [
        ("stripe_idempotency", "0007_watermarks"),
    ]

    operations = [
        migrations.CreateModel(
            name="EventEffect",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "name",
                    models.CharField(
                        help_text="The registered effect's name.", max_length=200, verbose_name="effect"
                    ),
                ),
                (
                    "key",
                    models.CharField(
                        help_text="Tells one event's effects of a name apart.",
                        max_length=100,
                        verbose_name="key",
                    ),
                ),
                (
                    "idempotency_key",
                    models.CharField(
                        help_text="<event id>:<effect>:<key>, passed to the effect on every run.",
                        max_length=255,
                        unique=True,
                        verbose_name="idempotency key",
                    ),
                ),
                ("arguments", models.JSONField(blank=True, default=dict, verbose_name="arguments")),
                (
                    "scheduled_at",
                    models.DateTimeField(
                        db_default=django.db.models.functions.datetime.Now(), verbose_name="scheduled at"
                    ),
                ),
                (
                    "max_attempts",
                    models.PositiveIntegerField(
                        help_text="Runs after which the effect is dead (the effect's own, or MAX_ATTEMPTS).",
                        verbose_name="max attempts",
                    ),
                ),
                ("claimed_at", models.DateTimeField(blank=True, null=True, verbose_name="claimed at")),
                (
                    "claimed_by",
                    models.CharField(blank=True, default="", max_length=255, verbose_name="claimed by"),
                ),
                (
                    "claim_expires_at",
                    models.DateTimeField(blank=True, null=True, verbose_name="claim expires at"),
                ),
                ("claim_token", models.UUIDField(blank=True, null=True, verbose_name="claim token")),
                ("completed_at", models.DateTimeField(blank=True, null=True, verbose_name="completed at")),
                (
                    "next_attempt_at",
                    models.DateTimeField(
                        blank=True,
                        help_text="After a failure: when it is run again.",
                        null=True,
                        verbose_name="next attempt",
                    ),
                ),
                (
                    "attempts",
                    models.PositiveIntegerField(
                        default=0, help_text="Runs started.", verbose_name="attempts"
                    ),
                ),
                ("last_error", models.TextField(blank=True, default="", verbose_name="last error")),
                (
                    "event",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="effects",
                        to="stripe_idempotency.stripeevent",
                        verbose_name="Stripe event",
                    ),
                ),
            ],
            options={
                "verbose_name": "event effect",
                "verbose_name_plural": "event effects",
                "indexes": [
                    models.Index(
                        fields=["completed_at", "claim_expires_at"], name="stripe_effect_unfinished_idx"
                    )
                ],
            },
        ),
        # Not atomic: MySQL cannot run DDL in a transaction.
        migrations.RunPython(make_identifiers_binary, migrations.RunPython.noop, atomic=False),
    ]
