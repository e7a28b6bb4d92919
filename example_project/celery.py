"""The example project's Celery app (TASK_QUEUE=celery): `celery -A example_project worker`.

Celery reads the CELERY_* settings; CELERY_IMPORTS loads stripe_idempotency's task.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example_project.settings")

app = Celery("example_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
