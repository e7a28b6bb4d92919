from django.contrib import admin
from django.urls import include, path

from stripe_idempotency.health import HealthView

urlpatterns = [
    path("admin/", admin.site.urls),
    path("stripe/", include("stripe_idempotency.urls")),
    path("stripe/health/", HealthView.as_view(), name="stripe_health"),
]
