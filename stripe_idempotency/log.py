"""The app's log lines: one logger, ``stripe_idempotency``, and the fields its lines carry.

Every line about a delivery or an event carries structured fields through ``extra`` (so
a JSON formatter, or :class:`FieldsFormatter`, shows them), never the payload:

* ``event_id``, ``event_type``: the Stripe event, when it is known (a request rejected
  before its signature was verified has neither);
* ``outcome``: ``rejected``, ``busy``, ``unavailable``, ``ignored`` (the answer's ``status``),
  ``failed``, ``fenced``, ``not_queued``, ``callback_failed``; for an effect's run ``failed``,
  ``dead``, ``fenced`` or ``not_run`` (the database stopped it; the reaper runs it);
* ``code``: a rejection's code (``invalid_signature``...);
* ``endpoint``: the endpoint that received the request (``""`` for the default one);
* ``attempts``: the dispatches (an effect's runs) started so far, on a failure;
* ``effect``: an effect's idempotency key, on the lines about one of its runs.
"""

from __future__ import annotations

import logging

__all__ = ["FIELDS", "FieldsFormatter", "fields", "logger"]

logger = logging.getLogger("stripe_idempotency")

#: The names of the structured fields, in the order :class:`FieldsFormatter` writes them.
FIELDS = ("event_id", "event_type", "outcome", "code", "endpoint", "attempts", "effect")


def fields(**values: str | int | None) -> dict[str, str | int]:
    """The ``extra`` of a log line: the given :data:`FIELDS` that have a value."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError(f"Not a log field: {', '.join(sorted(unknown))}")
    return {key: value for key, value in values.items() if value is not None}


class FieldsFormatter(logging.Formatter):
    """A plain-text formatter that writes the app's fields after the message, as
    ``key=value``, for consoles and log services that parse logfmt::

        "formatters": {"stripe": {"()": "stripe_idempotency.log.FieldsFormatter",
                                  "format": "%(levelname)s %(name)s: %(message)s"}}
    """

    def formatMessage(self, record: logging.LogRecord) -> str:
        pairs = "".join(f" {key}={getattr(record, key)}" for key in FIELDS if hasattr(record, key))
        return super().formatMessage(record) + pairs
