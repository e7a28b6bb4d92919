"""Each event's endpoint, connected account and object; the three compare byte for byte on MySQL."""

from typing import Any

from django.apps.registry import Apps
from django.db import migrations, models

# Frozen, as 0003's list: the identifier columns this migration adds.
COLUMNS = [("StripeEvent", "endpoint"), ("StripeEvent", "account"), ("StripeEvent", "object_id")]


def make_identifiers_binary(apps: Apps, schema_editor: Any) -> None:
    from stripe_idempotency.backends.mysql import make_identifiers_binary

    columns = [(apps.get_model("stripe_idempotency", model), field) for model, field in COLUMNS]
    make_identifiers_binary(schema_editor, columns)


class Migration(migrations.Migration):
    dependencies = [
        ("stripe_idempotency", "0004_next_attempt"),
    ]

    operations = [
        migrations.AddField(
            model_name="stripeevent",
            name="account",
            field=models.CharField(
                blank=True,
                help_text="Connect: the account the event is about (account, or a thin event's context).",
                max_length=255,
                null=True,
                verbose_name="connected account",
            ),
        ),
        migrations.AddField(
            model_name="stripeevent",
            name="endpoint",
            field=models.CharField(
                blank=True,
                db_default="",
                default="",
                help_text="The endpoint that received it (a name of ENDPOINTS); empty for the default one.",
                max_length=64,
                verbose_name="endpoint",
            ),
        ),
        migrations.AddField(
            model_name="stripeevent",
            name="object_id",
            field=models.CharField(
                blank=True,
                help_text="The object the event is about (data.object.id, or related_object.id).",
                max_length=255,
                null=True,
                verbose_name="object id",
            ),
        ),
        # Not atomic: MySQL cannot run DDL in a transaction. Before the indexes: each is built once.
        migrations.RunPython(make_identifiers_binary, migrations.RunPython.noop, atomic=False),
        migrations.AddIndex(
            model_name="stripeevent",
            index=models.Index(fields=["account", "received_at"], name="stripe_event_account_idx"),
        ),
        migrations.AddIndex(
            model_name="stripeevent",
            index=models.Index(fields=["object_id", "created"], name="stripe_event_object_idx"),
        ),
    ]
