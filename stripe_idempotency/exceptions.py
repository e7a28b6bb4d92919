"""Every failure the app reports has a type, and all of them share one base."""

from __future__ import annotations


class StripeIdempotencyError(Exception):
    """Base class of every exception raised by stripe_idempotency."""


class WebhookRejected(StripeIdempotencyError):
    """A request that is not a well-formed, authentic Stripe event.

    ``code`` is the stable, machine-readable reason sent back in the JSON body;
    ``status`` the HTTP status it is answered with. Nothing is stored for it.
    """

    def __init__(self, code: str, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ClaimRequired(StripeIdempotencyError):
    """A claim was asked for inside a transaction.

    A claim must commit before any receiver runs (otherwise a crash or a
    rollback would take the claim with it and other instances would wait on
    an uncommitted row), so it has to be made in autocommit mode.
    """


class LeaseLost(StripeIdempotencyError):
    """The fenced commit found that another instance now owns the event.

    Raised inside the dispatch transaction so that everything the receivers
    did rolls back.
    """
