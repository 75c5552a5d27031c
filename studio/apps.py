from django.apps import AppConfig
from django.core import checks


class StudioConfig(AppConfig):
    name = "studio"
    verbose_name = "Persona Studio"

    def ready(self) -> None:
        """Register the project's system checks (ids in docs/deployment.md);
        generation registers its own."""
        from studio import checks as studio_checks

        for configuration_check in (
            studio_checks.check_storage,
            studio_checks.check_production_basics,
        ):
            checks.register(configuration_check, "studio")
        checks.register(
            studio_checks.check_media_not_public,
            "studio",
            checks.Tags.security,
            deploy=True,
        )
        checks.register(
            studio_checks.check_storage_reachable,
            studio_checks.RUNTIME_TAG,
            deploy=True,
        )
