from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "example_project.shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the receivers.
        from example_project.shop import receivers  # noqa: F401
