from django.db import models


class Effect(models.Model):
    """A database effect of a receiver: one row per receiver run that committed."""

    event_id = models.CharField(max_length=255)
    receiver = models.CharField(max_length=100)

    def __str__(self) -> str:
        return f"{self.receiver} for {self.event_id}"
