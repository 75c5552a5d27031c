"""Engine configuration: which models exist, where they may live, how to run them.

Plain dataclasses with documented defaults (STYLE.md habit 5), filled by the Django
side from settings or by tests directly. Importing this module costs nothing: no
torch, no diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generation.engine.vocabulary import (
    TINY_MODEL_KEY,
    TINY_MODEL_LABEL,
    ControlType,
    Footprint,
)

# Layout of the built-in tiny model (written by ``tiny_model.write_tiny_model``).
TINY_MARKER_FILE = "TINY_MODEL.json"
TINY_PIPELINE_DIR = "sd15"
TINY_SINGLE_FILE = "sd15.safetensors"
TINY_CONTROLNET_DIR = "controlnet"
TINY_IP_ADAPTER_DIR = "ip-adapter"
TINY_LORA_FILE = "lora/persona.safetensors"


@dataclass
class ModelSpec:
    """A base model the studio serves.

    ``source`` is a Hub id, a local diffusers folder or a single-file
    ``.safetensors`` checkpoint (see ``sources.resolve_source``). ``config`` is only
    read for single-file checkpoints: the diffusers folder or Hub id whose
    component configs describe the checkpoint's architecture (None: the default
    SD 1.5 configs, which must then be in the Hugging Face cache when offline).
    ``tiny`` marks a model whose weights are random (``is_tiny`` asks).
    """

    key: str
    source: str
    revision: str | None = None
    label: str = ""
    config: str | None = None
    tiny: bool = False

    @property
    def is_tiny(self) -> bool:
        """The one test of "is this the tiny model" (its images are noise):
        marked so, or its source lies in a folder the tiny-model writer marked."""
        return self.tiny or is_tiny_model_path(self.source)


def is_tiny_model_path(path: Path | str) -> bool:
    """True when ``path`` is the tiny model's folder or lies inside it."""
    path = Path(path).expanduser()
    for folder in (path, *path.parents):
        marker = folder / TINY_MARKER_FILE
        if marker.is_file():
            try:
                return json.loads(marker.read_text()).get("tiny") is True
            except (OSError, ValueError):
                return False
    return False


def model_catalog(
    models: Mapping[str, str | Mapping[str, Any]], *, tiny_model_dir: Path | str
) -> dict[str, ModelSpec]:
    """The base models a studio serves, from its ``STUDIO_MODELS`` mapping (key ->
    source, or key -> {"source", "revision", "label", "config", "tiny"}); an
    empty mapping serves the built-in tiny model from ``tiny_model_dir``."""
    if not models:
        return {TINY_MODEL_KEY: _tiny_model_spec(Path(tiny_model_dir))}
    catalog = {}
    for key, spec in models.items():
        spec = {"source": spec} if isinstance(spec, str) else spec
        catalog[key] = ModelSpec(
            key=key,
            source=spec["source"],
            revision=spec.get("revision"),
            label=spec.get("label", key),
            config=spec.get("config"),
            tiny=bool(spec.get("tiny", False)),
        )
    return catalog


def _tiny_model_spec(root: Path) -> ModelSpec:
    return ModelSpec(
        key=TINY_MODEL_KEY,
        source=str(root / TINY_PIPELINE_DIR),
        label=TINY_MODEL_LABEL,
        tiny=True,
    )


@dataclass
class IPAdapterSpec:
    """Where the IP-Adapter weights live, in the layout of ``h94/IP-Adapter``."""

    source: str
    subfolder: str = "models"
    weight_name: str = "ip-adapter_sd15.safetensors"
    face_weight_name: str = "ip-adapter-plus-face_sd15.safetensors"
    image_encoder_folder: str = "models/image_encoder"


@dataclass
class EngineConfig(Footprint):
    """Everything the engine needs to know about its models and its device.

    ``controlnets`` maps a ``ControlType`` value to a ControlNet source (Hub id or
    local folder). ``device`` None picks cuda, then mps, then cpu; ``dtype`` None
    picks float16 on cuda and float32 elsewhere. ``memory_budget_mb`` None never
    evicts. ``offline`` True (the default) never downloads, like
    ``HF_HUB_OFFLINE=1``, which is honoured as well. The footprint switches
    (the fields of ``vocabulary.Footprint``, keyword-only) are applied to every
    base pipeline when it is loaded.
    """

    models: dict[str, ModelSpec]
    model_roots: list[Path]
    controlnets: dict[str, str] = field(default_factory=dict)
    ip_adapter: IPAdapterSpec | None = None
    annotators_dir: Path | None = None
    seg_model: str | None = None
    device: str | None = None
    dtype: str | None = None
    memory_budget_mb: int | None = None
    offline: bool = True


def tiny_engine_config(root: Path) -> EngineConfig:
    """A configuration serving the tiny model written by ``write_tiny_model(root)``."""
    root = Path(root)
    return EngineConfig(
        models={TINY_MODEL_KEY: _tiny_model_spec(root)},
        model_roots=[root],
        controlnets={
            control_type.value: str(root / TINY_CONTROLNET_DIR / control_type.value)
            for control_type in ControlType
        },
        ip_adapter=IPAdapterSpec(source=str(root / TINY_IP_ADAPTER_DIR)),
    )
