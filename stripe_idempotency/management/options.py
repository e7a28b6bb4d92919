"""The options the commands share, said once."""

from __future__ import annotations

from django.core.management.base import CommandParser
from django.db import router

from stripe_idempotency.models import StripeEvent

__all__ = ["add_database_option", "events_database"]


def add_database_option(parser: CommandParser) -> None:
    """``--database ALIAS``: the events' database, when the routers' choice is not the one meant."""
    parser.add_argument(
        "--database", default=None, help="The database alias (default: where the routers write events)."
    )


def events_database(database: str | None) -> str:
    """The alias ``--database`` gave, else where the routers write events (reading them from a
    replica could miss the latest)."""
    return database or router.db_for_write(StripeEvent)
