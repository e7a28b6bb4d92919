"""The example shop. Its Celery app is created when Django starts (Celery's convention), so
that tasks the web process queues go to the configured broker; Celery is optional."""

import importlib.util

if importlib.util.find_spec("celery") is not None:
    from example_project.celery import app as celery_app

    __all__ = ["celery_app"]
