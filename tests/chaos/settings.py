"""The example project, plus receivers that misbehave on purpose (tests.chaos)."""

from example_project.settings import *  # noqa: F403
from example_project.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.chaos"]

# A test's hook between the COMMIT and the queue (see tests.chaos.receivers.die_before_queueing).
if _enqueue := env("CHAOS_ENQUEUE", default=""):  # noqa: F405
    STRIPE_IDEMPOTENCY["ENQUEUE"] = _enqueue  # noqa: F405
