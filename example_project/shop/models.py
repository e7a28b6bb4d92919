from django.db import models


class Fulfilment(models.Model):
    """An order shipped because a Checkout Session was paid."""

    checkout_session_id = models.CharField(max_length=255)
    customer_email = models.EmailField(blank=True)
    stripe_event_id = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Fulfilment of {self.checkout_session_id}"


class Cancellation(models.Model):
    """A subscription ended at Stripe, reflected here."""

    subscription_id = models.CharField(max_length=255)
    stripe_event_id = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"Cancellation of {self.subscription_id}"
