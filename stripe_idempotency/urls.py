from __future__ import annotations

from django.urls import path

from stripe_idempotency.views import WebhookView

app_name = "stripe_idempotency"

urlpatterns = [
    path("webhook/", WebhookView.as_view(), name="webhook"),
]
