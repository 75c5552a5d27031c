from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        """Register generation's system checks (worker class, Redis, models)."""
        from generation import checks

        checks.register()
