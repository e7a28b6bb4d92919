from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from stripe_idempotency.health import HealthView


@csrf_exempt
def healthz(request: HttpRequest) -> HttpResponse:
    """For load balancers; also the benchmarks' floor: Django answering without the database."""
    return HttpResponse(b'{"status": "ok"}', content_type="application/json")


urlpatterns = [
    path("admin/", admin.site.urls),
    path("stripe/", include("stripe_idempotency.urls")),  # POST stripe/webhook/
    path("stripe/health/", HealthView.as_view(), name="stripe_health"),  # GET, for monitors
    path("healthz/", healthz),
]
