"""A project's router that keeps payments in a database of their own (tests/test_databases.py)."""

from __future__ import annotations

from typing import Any

PAYMENT_APPS = {"stripe_idempotency"}


class PaymentsRouter:
    def db_for_read(self, model: type[Any], **hints: Any) -> str | None:
        return "payments" if model._meta.app_label in PAYMENT_APPS else None

    db_for_write = db_for_read

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None  # every app everywhere: the tests compare where rows land
