"""The engine's configuration and model catalog, built from the ``STUDIO_*`` settings.

This is where Django settings become the framework-free ``EngineConfig`` and
its catalog of ``ModelSpec`` (DESIGN.md decision 2): a thin adapter that hands
Django's settings to ``generation.engine.config.engine_config_from_settings``,
the one reading of the ``STUDIO_*`` settings (personas, which may import only
the engine of ``generation``, calls it too). With ``STUDIO_MODELS`` empty the studio
serves the built-in tiny model from ``STUDIO_TINY_MODEL_DIR`` (its images are
noise); ``studio_tiny_model`` writes it there.
"""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from generation.engine.config import (
    TINY_MARKER_FILE,
    EngineConfig,
    ModelSpec,
    engine_config_from_settings,
    model_catalog,
)
from generation.engine.errors import InvalidConfiguration


def configured_models() -> dict[str, ModelSpec]:
    """The base models staff can choose for a persona, by key, in settings order."""
    return model_catalog(settings.STUDIO_MODELS, tiny_model_dir=tiny_model_dir())


def model_choices() -> list[tuple[str, str]]:
    return [(model.key, model.label) for model in configured_models().values()]


def default_model_key() -> str:
    return next(iter(configured_models()))


def tiny_model_keys() -> frozenset[str]:
    """Keys of the configured models whose weights are random (images are noise)."""
    return frozenset(key for key, model in configured_models().items() if model.is_tiny)


def uses_tiny_model() -> bool:
    """True when no real model is configured, so the built-in tiny model is served."""
    return not settings.STUDIO_MODELS


def model_family(key: str) -> str:
    """The family key of a configured model (``sd15``, ``sdxl``), from its files
    where they are on this host, else the family its entry declares.

    Reads two small JSON files (or a checkpoint's header), never weights; raises
    ``UnknownFamily`` for files of no served family and ``ModelNotFound`` when
    neither the files nor a declared family tell.
    """
    from generation.engine.errors import ModelNotFound, SourceRefused
    from generation.engine.sources import model_traits, resolve_model

    spec = configured_models()[key]
    config = engine_config()
    try:
        source = resolve_model(spec, config)
    except (ModelNotFound, SourceRefused):
        if spec.family is None:
            raise
        return spec.family
    where = f"Model {key!r} ({spec.source})"
    return model_traits(source, declared=spec.family, where=where).family.key


def model_has_refiner(key: str) -> bool:
    """Whether a configured model has a refiner (``"refiner"`` in its entry)."""
    spec = configured_models().get(key)
    return spec is not None and spec.refiner is not None


def tiny_model_dir() -> Path:
    return Path(settings.STUDIO_TINY_MODEL_DIR)


def tiny_model_written() -> bool:
    """True when the tiny model's folder holds a complete tiny model."""
    return (tiny_model_dir() / TINY_MARKER_FILE).is_file()


def engine_config() -> EngineConfig:
    """An ``EngineConfig`` from the settings, read now (settings are lazy), by
    the engine's one reading of them (``config.engine_config_from_settings``,
    which personas calls too); a setting the engine cannot read is an
    ``ImproperlyConfigured`` naming it."""
    try:
        return engine_config_from_settings(settings)
    except InvalidConfiguration as error:
        raise ImproperlyConfigured(str(error)) from error
