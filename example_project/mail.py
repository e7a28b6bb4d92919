"""Which email backend the shop sends through, said the way the running Django expects.

Django 6.1 configures email with ``MAILERS`` and deprecates ``EMAIL_BACKEND``;
5.2 and 6.0 know only ``EMAIL_BACKEND``. The settings and the demo (which
counts the confirmation emails in memory) both go through this one function.
"""

from __future__ import annotations

from typing import Any

import django


def backend_settings(backend: str) -> dict[str, Any]:
    """The settings that send every email through ``backend`` (a dotted path)."""
    if django.VERSION >= (6, 1):
        return {"MAILERS": {"default": {"BACKEND": backend}}}
    return {"EMAIL_BACKEND": backend}
