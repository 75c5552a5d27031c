"""The base models this studio is configured with (``STUDIO_MODELS``).

With no model configured, the catalog holds the built-in tiny model that
``studio_tiny_model`` writes: its images are noise, and the studio says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

TINY_MODEL_KEY = "tiny-sd15"


@dataclass(frozen=True)
class CatalogModel:
    key: str
    source: str
    revision: str | None
    label: str
    is_tiny: bool


def configured_models() -> dict[str, CatalogModel]:
    configured = settings.STUDIO_MODELS
    if not configured:
        tiny_dir = Path(settings.STUDIO_TINY_MODEL_DIR)
        return {
            TINY_MODEL_KEY: CatalogModel(
                key=TINY_MODEL_KEY,
                source=str(tiny_dir / "sd15"),
                revision=None,
                label="Built-in tiny model (random weights: images are noise)",
                is_tiny=True,
            )
        }
    models = {}
    for key, spec in configured.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        models[key] = CatalogModel(
            key=key,
            source=spec["source"],
            revision=spec.get("revision"),
            label=spec.get("label", key),
            is_tiny=bool(spec.get("tiny", False)),
        )
    return models


def model_choices() -> list[tuple[str, str]]:
    return [(model.key, model.label) for model in configured_models().values()]


def default_model_key() -> str:
    return next(iter(configured_models()))
