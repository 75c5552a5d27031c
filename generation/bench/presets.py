"""The benchmark's presets: which model, at which size, measured how many times.

- ``tiny``: the built-in tiny model (``engine/tiny_model.py``); seconds in all,
  for the CI smoke test. Its numbers say nothing about overhead ratios: the work
  is so small that everything around it dominates.
- ``small``: a reduced SD 1.5 (UNet channels 64-128-256-256, 256x256) with
  random weights: a denoising step takes real CPU time, so the CPU can judge
  the studio's overhead against raw diffusers.
- ``sd15``: SD 1.5's own UNet, VAE and text-encoder configurations (and a ViT-H
  image encoder for the IP-Adapter) with random weights: the same arithmetic as
  the real model at 512x512, for a GPU (fp16 there).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from generation.bench.random_model import (
    BenchModel,
    random_model_config,
    write_random_model,
)
from generation.engine.config import EngineConfig, tiny_engine_config
from generation.engine.tiny_model import Architecture, write_tiny_model


def _sd15_layout(
    channels: tuple[int, ...], cross_attention_dim: int, sample_size: int
) -> dict[str, object]:
    """SD 1.5's UNet layout (cross-attention on every level but the deepest) at
    the given widths."""
    crossed = len(channels) - 1
    return {
        "sample_size": sample_size,
        "block_out_channels": channels,
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * crossed + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * crossed,
        "cross_attention_dim": cross_attention_dim,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    }


def _vae(channels: tuple[int, ...], sample_size: int) -> dict[str, object]:
    return {
        "block_out_channels": channels,
        "down_block_types": ("DownEncoderBlock2D",) * len(channels),
        "up_block_types": ("UpDecoderBlock2D",) * len(channels),
        "latent_channels": 4,
        "norm_num_groups": 32,
        "layers_per_block": 2,
        "sample_size": sample_size,
    }


SMALL = BenchModel(
    architecture=Architecture(
        unet=_sd15_layout((64, 128, 256, 256), 256, sample_size=32),
        vae=_vae((32, 64, 128, 128), sample_size=256),
        text_encoder={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "projection_dim": 256,
        },
        controlnet_conditioning_channels=(16, 32, 96, 256),
    ),
    image_encoder={
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 64,
    },
)
# Stable Diffusion 1.5's configurations (the text encoder keeps the tiny model's
# byte-level vocabulary: a smaller embedding table, the same arithmetic).
SD15 = BenchModel(
    architecture=Architecture(
        unet=_sd15_layout((320, 640, 1280, 1280), 768, sample_size=64),
        vae=_vae((128, 256, 512, 512), sample_size=512),
        text_encoder={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "projection_dim": 768,
        },
        controlnet_conditioning_channels=(16, 32, 96, 256),
    ),
    # h94/IP-Adapter's SD 1.5 image encoder, OpenCLIP ViT-H/14.
    image_encoder={
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "projection_dim": 1024,
        "hidden_act": "gelu",
    },
    weights_dtype="float16",
)


@dataclass(frozen=True)
class Preset:
    """One benchmark configuration (see the module docstring).

    ``model`` None means the built-in tiny model. ``width``, ``height``
    and ``steps`` are those of the overhead and GPU measurements; the growth
    measurements vary one of them at a time over the tuples below.
    """

    name: str
    summary: str
    model: BenchModel | None
    width: int
    height: int
    steps: int
    runs: int
    step_counts: tuple[int, ...]
    sizes: tuple[int, ...]
    strengths: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    image_counts: tuple[int, ...] = (1, 2, 4)
    controlnet_counts: tuple[int, ...] = (0, 1, 2, 3)
    queue_jobs: int = 200

    @property
    def model_key(self) -> str:
        return f"bench-{self.name}"

    def write_model(self, root: Path) -> EngineConfig:
        """Write (or reuse) this preset's model under ``root``; its engine config."""
        if self.model is None:
            config = tiny_engine_config(write_tiny_model(root))
            (spec,) = config.models.values()
            spec.key = self.model_key
            config.models = {self.model_key: spec}
            return config
        write_random_model(self.model, root)
        return random_model_config(root, model_key=self.model_key, label=self.summary)


PRESETS = {
    preset.name: preset
    for preset in (
        Preset(
            name="tiny",
            summary="built-in tiny SD 1.5 architecture, 64x64",
            model=None,
            width=64,
            height=64,
            steps=10,
            runs=3,
            step_counts=(5, 10, 20),
            sizes=(64, 128),
            strengths=(0.2, 0.6, 1.0),
            controlnet_counts=(0, 1, 2),
        ),
        Preset(
            name="small",
            summary="reduced SD 1.5 (UNet 64-128-256-256), random weights, 256x256",
            model=SMALL,
            width=256,
            height=256,
            steps=20,
            runs=5,
            step_counts=(10, 20, 40),
            sizes=(128, 256, 384),
        ),
        Preset(
            name="sd15",
            summary="SD 1.5 architecture, random weights, 512x512",
            model=SD15,
            width=512,
            height=512,
            steps=30,
            runs=10,
            step_counts=(10, 20, 30, 50),
            sizes=(512, 768),
        ),
    )
}
