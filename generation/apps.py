from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        """Register media owners, file cleanup and generation's system checks."""
        from generation.models import Content, ContentControlImage
        from studio.media import register_media_owner

        see_content = ("generation.view_content",)
        for field in (
            "output_image",
            "output_thumbnail",
            "before_thumbnail",
            "detailer_before_image",
            "inpaint_mask",
        ):
            register_media_owner(Content, field, permissions=see_content)
        register_media_owner(ContentControlImage, "image", permissions=see_content)
        from generation.training_models import TrainingSample

        register_media_owner(
            TrainingSample, "image", permissions=("generation.view_trainingrun",)
        )

        from generation import cleanup

        cleanup.connect(self)  # the files of deleted rows (see its docstring)

        from generation import checks

        checks.register()
