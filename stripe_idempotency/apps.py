from __future__ import annotations

from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class StripeIdempotencyConfig(AppConfig):
    name = "stripe_idempotency"
    verbose_name = _("Stripe idempotency")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Importing the module registers its checks; nothing else happens at import.
        from stripe_idempotency import checks  # noqa: F401
