import os

from django.core.asgi import get_asgi_application

from stripe_idempotency.asgi import WebhookBodyLimit

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

# Refuse an over-large webhook body before Django spools it to disk.
application = WebhookBodyLimit(get_asgi_application())
