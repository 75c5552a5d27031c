from django.apps import AppConfig
from django.core import checks


class StudioConfig(AppConfig):
    name = "studio"
    verbose_name = "Persona Studio"

    def ready(self) -> None:
        """Register the studio's system checks (ids in docs/deployment.md)."""
        from studio import checks as studio_checks

        for configuration_check in (
            studio_checks.check_worker_class,
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
        for runtime_check in (
            studio_checks.check_redis_reachable,
            studio_checks.check_storage_reachable,
        ):
            checks.register(runtime_check, studio_checks.RUNTIME_TAG, deploy=True)
        checks.register(
            studio_checks.check_models_available,
            studio_checks.RUNTIME_TAG,
            studio_checks.MODELS_TAG,
            deploy=True,
        )
