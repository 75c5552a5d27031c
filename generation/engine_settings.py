"""The engine's configuration and model catalog, built from the ``STUDIO_*`` settings.

This is the one place where Django settings become the framework-free
``EngineConfig`` and its catalog of ``ModelSpec`` (DESIGN.md decision 2): a thin
adapter over ``generation.engine.config``. With ``STUDIO_MODELS`` empty the studio
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
    IPAdapterSpec,
    ModelSpec,
    PreviewConfig,
    model_catalog,
    tiny_engine_config,
)
from generation.engine.vocabulary import Quantization, SafetyPolicy


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
    from generation.engine.sources import model_traits, resolve_source

    spec = configured_models()[key]
    config = engine_config()
    try:
        source = resolve_source(
            spec.source,
            config,
            revision=spec.revision,
            single_file=True,
            single_file_config=spec.config,
        )
    except (ModelNotFound, SourceRefused):
        if spec.family is None:
            raise
        return spec.family
    where = f"Model {key!r} ({spec.source})"
    return model_traits(source, declared=spec.family, where=where).family.key


def tiny_model_dir() -> Path:
    return Path(settings.STUDIO_TINY_MODEL_DIR)


def tiny_model_written() -> bool:
    """True when the tiny model's folder holds a complete tiny model."""
    return (tiny_model_dir() / TINY_MARKER_FILE).is_file()


def engine_config() -> EngineConfig:
    """An ``EngineConfig`` from the settings, read now (settings are lazy)."""
    if uses_tiny_model():
        config = tiny_engine_config(tiny_model_dir())
    else:
        config = EngineConfig(
            models=configured_models(),
            model_roots=[Path(root) for root in settings.STUDIO_MODEL_ROOTS],
        )
    if settings.STUDIO_CONTROLNETS:
        config.controlnets = dict(settings.STUDIO_CONTROLNETS)
    if settings.STUDIO_IP_ADAPTER:
        config.ip_adapter = IPAdapterSpec(**settings.STUDIO_IP_ADAPTER)
    config.annotators_dir = _optional_path(settings.STUDIO_ANNOTATORS_DIR)
    config.seg_model = settings.STUDIO_SEG_MODEL or None
    config.device = settings.STUDIO_DEVICE or None
    config.dtype = settings.STUDIO_DTYPE or None
    config.quantization = Quantization(settings.STUDIO_QUANTIZATION)
    config.memory_budget_mb = settings.STUDIO_MEMORY_BUDGET_MB or None
    config.safety_policy = SafetyPolicy(settings.STUDIO_SAFETY_CHECKER)
    config.safety_checker = settings.STUDIO_SAFETY_CHECKER_MODEL or None
    # The fields of ``vocabulary.Footprint``, each from the setting it names
    # (tests/engine/test_vocabulary.py keeps the two lists equal).
    config.cpu_offload = settings.STUDIO_CPU_OFFLOAD
    config.sequential_cpu_offload = settings.STUDIO_SEQUENTIAL_CPU_OFFLOAD
    config.attention_slicing = settings.STUDIO_ATTENTION_SLICING
    config.vae_tiling = settings.STUDIO_VAE_TILING
    config.channels_last = settings.STUDIO_CHANNELS_LAST
    config.compile = settings.STUDIO_TORCH_COMPILE
    config.compile_sizes = compile_sizes(settings.STUDIO_COMPILE_SIZES)
    config.compile_lora_rank = settings.STUDIO_COMPILE_LORA_RANK
    config.compile_backend = settings.STUDIO_COMPILE_BACKEND
    config.compile_ip_adapter = settings.STUDIO_COMPILE_IP_ADAPTER
    config.preview = PreviewConfig(
        method=settings.STUDIO_PREVIEW_METHOD,
        every_steps=settings.STUDIO_PREVIEW_EVERY_STEPS,
        min_interval_seconds=settings.STUDIO_PREVIEW_MIN_INTERVAL_MS / 1000,
        tiny_autoencoders=dict(settings.STUDIO_PREVIEW_TINY_AUTOENCODERS),
    )
    return config


def compile_sizes(values: str) -> tuple[tuple[int, int], ...]:
    """``STUDIO_COMPILE_SIZES`` ("512x512,512x768") as (width, height) pairs;
    refuses, naming it, an entry that is not WIDTHxHEIGHT in positive pixels."""
    sizes = []
    for value in filter(None, (part.strip() for part in values.split(","))):
        width, _, height = value.strip().lower().partition("x")
        if not (width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise ImproperlyConfigured(
                f"STUDIO_COMPILE_SIZES: {value!r} is not WIDTHxHEIGHT "
                "(512x512, say)."
            )
        sizes.append((int(width), int(height)))
    return tuple(sizes)


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None
