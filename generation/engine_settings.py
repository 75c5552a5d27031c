"""The engine's configuration, built from the ``STUDIO_*`` settings.

This is the one place where Django settings become a framework-free
``EngineConfig`` (DESIGN.md decision 2). With ``STUDIO_MODELS`` empty the studio
serves the built-in tiny model from ``STUDIO_TINY_MODEL_DIR`` (its images are
noise); ``studio_tiny_model`` writes it there.
"""

from __future__ import annotations

from pathlib import Path

from generation.engine.config import (
    TINY_MARKER_FILE,
    EngineConfig,
    IPAdapterSpec,
    ModelSpec,
    tiny_engine_config,
)
from studio.conf import studio_setting
from studio.models_catalog import configured_models


def uses_tiny_model() -> bool:
    """True when no real model is configured, so the tiny model is served."""
    return not studio_setting("MODELS")


def tiny_model_dir() -> Path:
    return Path(studio_setting("TINY_MODEL_DIR"))


def tiny_model_written() -> bool:
    """True when the tiny model's folder holds a complete tiny model."""
    return (tiny_model_dir() / TINY_MARKER_FILE).is_file()


def engine_config() -> EngineConfig:
    """An ``EngineConfig`` from the settings, read now (settings are lazy)."""
    if uses_tiny_model():
        config = tiny_engine_config(tiny_model_dir())
    else:
        raw = studio_setting("MODELS")
        config = EngineConfig(
            models={
                key: ModelSpec(
                    key=key,
                    source=model.source,
                    revision=model.revision,
                    label=model.label,
                    config=raw[key].get("config")
                    if isinstance(raw[key], dict)
                    else None,
                )
                for key, model in configured_models().items()
            },
            model_roots=[Path(root) for root in studio_setting("MODEL_ROOTS")],
        )
    if studio_setting("CONTROLNETS"):
        config.controlnets = dict(studio_setting("CONTROLNETS"))
    if studio_setting("IP_ADAPTER"):
        config.ip_adapter = IPAdapterSpec(**studio_setting("IP_ADAPTER"))
    config.annotators_dir = _optional_path(studio_setting("ANNOTATORS_DIR"))
    config.seg_model = studio_setting("SEG_MODEL") or None
    config.device = studio_setting("DEVICE") or None
    config.dtype = studio_setting("DTYPE") or None
    config.memory_budget_mb = studio_setting("MEMORY_BUDGET_MB") or None
    config.cpu_offload = studio_setting("CPU_OFFLOAD")
    config.attention_slicing = studio_setting("ATTENTION_SLICING")
    config.vae_tiling = studio_setting("VAE_TILING")
    config.channels_last = studio_setting("CHANNELS_LAST")
    config.compile = studio_setting("TORCH_COMPILE")
    return config


def _optional_path(value: str) -> Path | None:
    return Path(value) if value else None
