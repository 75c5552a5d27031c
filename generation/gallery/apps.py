from django.apps import AppConfig


class GalleryConfig(AppConfig):
    """The review gallery: staff pages above the generation services. An app of
    its own so that its templates and static files live beside its views."""

    name = "generation.gallery"
    label = "gallery"
    verbose_name = "Review gallery"
