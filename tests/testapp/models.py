from django.db import models


class Effect(models.Model):
    """A database effect of a receiver: one row per receiver run that committed."""

    event_id = models.CharField(max_length=255)
    receiver = models.CharField(max_length=100)

    def __str__(self) -> str:
        return f"{self.receiver} for {self.event_id}"


# A shop, for the documentation's snippets (tests/test_docs.py): the models they name.


class Order(models.Model):
    checkout_session = models.CharField(max_length=255, unique=True)
    paid = models.BooleanField(default=False)

    def __str__(self) -> str:
        return self.checkout_session


class Shipment(models.Model):
    checkout_session = models.CharField(max_length=255)

    def __str__(self) -> str:
        return self.checkout_session


class Coupon(models.Model):
    code = models.CharField(max_length=50, unique=True)
    order = models.ForeignKey(Order, on_delete=models.CASCADE)

    def __str__(self) -> str:
        return self.code


class Subscription(models.Model):
    """A Stripe subscription's status as the receivers last set it (the ordering docs and tests)."""

    stripe_id = models.CharField(max_length=255, unique=True)
    status = models.CharField(max_length=50)

    def __str__(self) -> str:
        return f"{self.stripe_id}: {self.status}"
