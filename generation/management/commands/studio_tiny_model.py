"""``python manage.py studio_tiny_model``: write the built-in tiny model."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from generation.engine_settings import tiny_model_dir


class Command(BaseCommand):
    help = (
        "Write the built-in tiny Stable Diffusion 1.5-architecture model (random "
        "weights: its images are noise) into STUDIO_TINY_MODEL_DIR."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        from generation.engine.tiny_model import write_tiny_model

        root = write_tiny_model(tiny_model_dir())
        self.stdout.write(
            self.style.SUCCESS(f"Tiny model written to {root} (its images are noise).")
        )
