from django.apps import AppConfig


class PersonasConfig(AppConfig):
    name = "personas"
    verbose_name = "Personas"

    def ready(self) -> None:
        from personas.models import (
            ControlNetUnit,
            Persona,
            PersonaLoraVersion,
            ReferenceImage,
        )
        from studio.media import register_media_owner

        see_reference = ("personas.view_referenceimage", "personas.view_persona")
        register_media_owner(ReferenceImage, "image", permissions=see_reference)
        register_media_owner(ReferenceImage, "thumbnail", permissions=see_reference)
        register_media_owner(
            ControlNetUnit,
            "control_image",
            permissions=("personas.view_controlnetunit", "personas.view_persona"),
        )
        # LoRA weights are the persona's own to change, not to browse.
        register_media_owner(
            Persona, "lora_weights", permissions=("personas.change_persona",)
        )
        register_media_owner(
            PersonaLoraVersion, "weights", permissions=("personas.change_persona",)
        )

        from personas.files import connect_file_cleanup

        # The files of deleted references, units and personas (LoRA weights) go
        # once the deletion commits, also when it cascades from a persona.
        connect_file_cleanup(self)
