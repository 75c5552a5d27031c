"""Engine configuration: which models exist, where they may live, how to run them.

Plain dataclasses with documented defaults (STYLE.md habit 5), filled by the Django
side from settings or by tests directly. Importing this module costs nothing: no
torch, no diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from generation.engine.requests import ControlType

# Layout of the built-in tiny model (written by ``tiny_model.write_tiny_model``).
TINY_MODEL_KEY = "tiny-sd15"
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
    """

    key: str
    source: str
    revision: str | None = None
    label: str = ""
    config: str | None = None


@dataclass
class IPAdapterSpec:
    """Where the IP-Adapter weights live, in the layout of ``h94/IP-Adapter``."""

    source: str
    subfolder: str = "models"
    weight_name: str = "ip-adapter_sd15.safetensors"
    face_weight_name: str = "ip-adapter-plus-face_sd15.safetensors"
    image_encoder_folder: str = "models/image_encoder"


@dataclass
class EngineConfig:
    """Everything the engine needs to know about its models and its device.

    ``controlnets`` maps a ``ControlType`` value to a ControlNet source (Hub id or
    local folder). ``device`` None picks cuda, then mps, then cpu; ``dtype`` None
    picks float16 on cuda and float32 elsewhere. ``memory_budget_mb`` None never
    evicts. ``offline`` True (the default) never downloads, like
    ``HF_HUB_OFFLINE=1``, which is honoured as well. The footprint switches
    (``cpu_offload``, ``attention_slicing``, ``vae_tiling``, ``channels_last``,
    ``compile``) are applied to every base pipeline when it is loaded.
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
    cpu_offload: bool = False
    attention_slicing: bool = False
    vae_tiling: bool = False
    channels_last: bool = False
    compile: bool = False


def tiny_engine_config(root: Path) -> EngineConfig:
    """A configuration serving the tiny model written by ``write_tiny_model(root)``."""
    root = Path(root)
    return EngineConfig(
        models={
            TINY_MODEL_KEY: ModelSpec(
                key=TINY_MODEL_KEY,
                source=str(root / TINY_PIPELINE_DIR),
                label="Tiny SD 1.5 (random weights: its images are noise)",
            )
        },
        model_roots=[root],
        controlnets={
            control_type.value: str(root / TINY_CONTROLNET_DIR / control_type.value)
            for control_type in ControlType
        },
        ip_adapter=IPAdapterSpec(source=str(root / TINY_IP_ADAPTER_DIR)),
    )
