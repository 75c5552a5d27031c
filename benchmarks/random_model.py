"""Writes SD 1.5- and SDXL-architecture models with random weights, at any size.

The benchmark needs models that cost what real ones cost, without downloading
any: ``small`` (a reduced SD 1.5 that takes real CPU time), ``sd15`` (SD 1.5's
own UNet, VAE and text-encoder configurations, so the same arithmetic as the real
model) and ``sdxl`` (SDXL base 1.0's, both text encoders). The pipeline and its
ControlNets come from the tiny models' builders (``tiny_model.random_pipeline``,
``tiny_sdxl.random_sdxl_pipeline``, ``random_controlnet``) at the given sizes; this
module adds an IP-Adapter of matching size and saves everything in the layout the
engine loads, in the tiny model's folder layout (a diffusers pipeline folder,
ControlNet folders, an IP-Adapter in the ``h94/IP-Adapter`` layout), so that
``tiny_engine_config`` and the registry benchmark serve them too, and the studio
loads them through exactly the code that loads a real model.

``write_random_qwen_image`` does the same for the ``qwen-image`` preset: Qwen-
Image-Edit-2509's configurations (``tiny_qwen.QWEN_IMAGE``) with random bf16
weights, written in the tiny Qwen-Image model's layout (one
``QwenImageEditPlusPipeline`` folder, ``qwen-image/``) by the tiny model's own
builder; about 58 GB on disk. It is built on the GPU when there is one (seconds,
not the CPU's minutes).

Their images are noise: only their cost is real.
"""

from __future__ import annotations

import gc
import json
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from generation.engine.config import (
    TINY_CONTROLNET_DIR,
    TINY_IP_ADAPTER_DIR,
    TINY_PIPELINE_DIR,
    TINY_QWEN_PIPELINE_DIR,
    TINY_SDXL_CONTROLNET_DIR,
    TINY_SDXL_PIPELINE_DIR,
)
from generation.engine.families import SD15, SDXL, Family
from generation.engine.requests import ControlType
from generation.engine.tiny_model import (
    Architecture,
    ip_attention_weights,
    random_controlnet,
    random_pipeline,
)
from generation.engine.tiny_qwen import (
    QwenImageArchitecture,
    random_qwen_image_pipeline,
)
from generation.engine.tiny_sdxl import SdxlArchitecture, random_sdxl_pipeline

MARKER_FILE = "BENCH_MODEL.json"
# The ControlNets written: enough for the multi-ControlNet growth measurement.
CONTROL_TYPES = (ControlType.CANNY, ControlType.DEPTH, ControlType.SCRIBBLE)
# Image tokens of the plain SD 1.5 IP-Adapter (``ImageProjection``).
IP_ADAPTER_TOKENS = 4


@dataclass(frozen=True)
class BenchModel:
    """The sizes of a benchmark model: the pipeline's and its ControlNets'
    (``tiny_model.Architecture``), the IP-Adapter image encoder's
    (``CLIPVisionConfig`` arguments), and the dtype its weights are saved in."""

    architecture: Architecture | SdxlArchitecture
    image_encoder: dict[str, Any] = field(default_factory=dict)
    weights_dtype: str = "float32"

    @property
    def family(self) -> Family:
        return SDXL if isinstance(self.architecture, SdxlArchitecture) else SD15

    @property
    def folders(self) -> tuple[str, str]:
        """(pipeline folder, ControlNet folder) in the tiny models' layout."""
        if self.family is SDXL:
            return TINY_SDXL_PIPELINE_DIR, TINY_SDXL_CONTROLNET_DIR
        return TINY_PIPELINE_DIR, TINY_CONTROLNET_DIR

    def build_pipeline(self) -> Any:
        """The seeded random pipeline of these sizes (float32, on the CPU)."""
        if self.family is SDXL:
            return random_sdxl_pipeline(self.architecture)
        return random_pipeline(self.architecture)


def write_random_model(model: BenchModel, root: Path) -> Path:
    """Write a random-weight model of the sizes of ``model`` under ``root``.

    Writes ``sd15/`` (a diffusers Stable Diffusion pipeline), one ControlNet per
    type of ``CONTROL_TYPES`` under ``controlnet/``, an IP-Adapter with its image
    encoder under ``ip-adapter/models/``, and ``BENCH_MODEL.json``, which
    lets a later call with the same architecture reuse what is there (writing
    SD 1.5's sizes takes minutes). Returns ``root``.
    """
    root = Path(root)
    marker = root / MARKER_FILE
    description = json.dumps(asdict(model), sort_keys=True)
    if marker.is_file() and marker.read_text() == description:
        return root
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    dtype = getattr(torch, model.weights_dtype)

    pipeline_dir, controlnet_dir = model.folders
    pipe = model.build_pipeline()
    for control_type in CONTROL_TYPES:
        controlnet = random_controlnet(
            pipe.unet, model.architecture, seed=_seed(control_type.value)
        )
        _cast(controlnet, dtype).save_pretrained(
            root / controlnet_dir / control_type.value
        )
        del controlnet
    _write_ip_adapter(model, pipe.unet, root / TINY_IP_ADAPTER_DIR, dtype)
    for component in (pipe.unet, pipe.vae, pipe.text_encoder):
        _cast(component, dtype)
    if model.family is SDXL:
        _cast(pipe.text_encoder_2, dtype)
    pipe.save_pretrained(root / pipeline_dir, safe_serialization=True)
    del pipe
    gc.collect()
    marker.write_text(description)
    return root


def write_random_qwen_image(
    architecture: QwenImageArchitecture, root: Path, *, dtype: str = "bfloat16"
) -> Path:
    """Write a random-weight Qwen-Image-Edit-Plus pipeline of ``architecture``'s
    sizes under ``root`` (``qwen-image/``), reusing one written before with the
    same sizes (``BENCH_MODEL.json``). Returns ``root``."""
    root = Path(root)
    marker = root / MARKER_FILE
    description = json.dumps(
        {"qwen-image": asdict(architecture), "weights_dtype": dtype}, sort_keys=True
    )
    if marker.is_file() and marker.read_text() == description:
        return root
    root.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    shutil.rmtree(root / TINY_QWEN_PIPELINE_DIR, ignore_errors=True)
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        pipe = random_qwen_image_pipeline(architecture, getattr(torch, dtype))
    pipe.save_pretrained(root / TINY_QWEN_PIPELINE_DIR, safe_serialization=True)
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    marker.write_text(description)
    return root


def _write_ip_adapter(
    model: BenchModel,
    unet: torch.nn.Module,
    adapter_dir: Path,
    dtype: torch.dtype,
) -> None:
    """The family's plain IP-Adapter (``models/ip-adapter_sd15.safetensors``,
    ``sdxl_models/ip-adapter_sdxl_vit-h.safetensors``; original key layout) and
    its CLIP image encoder, sized for ``model``, in the h94/IP-Adapter layout."""
    layout = model.family.ip_adapter
    torch.manual_seed(_seed("image-encoder"))
    encoder_config = CLIPVisionConfig(
        image_size=224, patch_size=14, **model.image_encoder
    )
    image_encoder = CLIPVisionModelWithProjection(encoder_config)
    _cast(image_encoder, dtype).save_pretrained(
        adapter_dir / layout.image_encoder_folder
    )
    del image_encoder
    generator = torch.Generator().manual_seed(_seed("ip-adapter"))
    cross = model.architecture.unet["cross_attention_dim"]
    projection = encoder_config.projection_dim
    # The image projection as freshly initialised: normal weights scaled by the
    # fan-in, zero bias, an identity layer norm.
    weights = {
        "image_proj.proj.weight": torch.randn(
            IP_ADAPTER_TOKENS * cross, projection, generator=generator
        )
        / projection**0.5,
        "image_proj.proj.bias": torch.zeros(IP_ADAPTER_TOKENS * cross),
        "image_proj.norm.weight": torch.ones(cross),
        "image_proj.norm.bias": torch.zeros(cross),
        **ip_attention_weights(unet, generator),
    }
    weights_path = adapter_dir / layout.subfolder / layout.weight_name
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.to(dtype) for key, value in weights.items()}, weights_path)


def _seed(name: str) -> int:
    """A stable seed per benchmark component, whatever order they are built in."""
    return zlib.crc32(f"bench-{name}".encode())


def _cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` in ``dtype``; built in float32, it is only cast to another."""
    return module if dtype == torch.float32 else module.to(dtype)
