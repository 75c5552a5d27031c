"""``python manage.py studio_tiny_model``: write the built-in tiny models (SD 1.5
and SDXL architectures, each with ControlNets, IP-Adapters and a LoRA)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from generation.engine_settings import tiny_model_dir


class Command(BaseCommand):
    help = (
        "Write the built-in tiny Stable Diffusion 1.5 and SDXL-architecture models "
        "(random weights: their images are noise) into STUDIO_TINY_MODEL_DIR."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        from generation.engine.tiny_model import write_tiny_model

        root = write_tiny_model(tiny_model_dir())
        self.stdout.write(
            self.style.SUCCESS(
                f"Tiny models (sd15, sdxl) written to {root} (their images are noise)."
            )
        )
