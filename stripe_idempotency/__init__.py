"""Process every Stripe webhook event exactly once, with an idempotent ledger beside it."""

__version__ = "0.1.0.dev0"
