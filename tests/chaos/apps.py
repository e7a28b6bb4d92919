from django.apps import AppConfig


class ChaosConfig(AppConfig):
    """Receivers that misbehave on purpose, for the chaos tests (never installed in the test suite)."""

    name = "tests.chaos"
    label = "chaos"

    def ready(self) -> None:
        from tests.chaos import receivers  # noqa: F401
