from __future__ import annotations

from django.urls import path

from stripe_idempotency.views import WebhookView

app_name = "stripe_idempotency"

# One name for both: reverse("stripe_idempotency:webhook") is the default endpoint,
# reverse("stripe_idempotency:webhook", kwargs={"endpoint": "connect"}) a named one.
urlpatterns = [
    path("webhook/", WebhookView.as_view(), name="webhook"),
    path("webhook/<str:endpoint>/", WebhookView.as_view(), name="webhook"),
]
