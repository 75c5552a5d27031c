from django.apps import AppConfig


class GalleryConfig(AppConfig):
    """The review gallery: staff pages above the generation services. An app of
    its own so that its templates and static files live beside its views."""

    name = "generation.gallery"
    label = "gallery"
    verbose_name = "Review gallery"

    def ready(self) -> None:
        """Watch every database connection's writes for the page cache."""
        from django.db import connections
        from django.db.backends.signals import connection_created

        from generation.gallery import page_cache

        connection_created.connect(page_cache.install)
        for connection in connections.all(initialized_only=True):
            page_cache.install(sender=None, connection=connection)
