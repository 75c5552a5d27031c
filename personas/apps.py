from django.apps import AppConfig


class PersonasConfig(AppConfig):
    name = "personas"
    verbose_name = "Personas"

    def ready(self) -> None:
        from personas.files import connect_file_cleanup

        # The files of deleted references, units and personas (LoRA weights) go
        # once the deletion commits, also when it cascades from a persona.
        connect_file_cleanup(self)
