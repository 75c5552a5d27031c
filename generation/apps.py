from django.apps import AppConfig


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = "Generation"

    def ready(self) -> None:
        from generation import cleanup

        cleanup.connect(self)  # the files of deleted rows (see its docstring)
