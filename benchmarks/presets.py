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
- ``sdxl``: SDXL base 1.0's configurations (its UNet, VAE, both text encoders,
  the ControlNets' conditioning embedding, the ViT-H image encoder) with random
  fp16 weights, at 1024x1024: for a GPU (about 7 GB of weights to write).
- ``flux``: FLUX.1 Kontext [dev]'s configurations (the 12B transformer, T5-XXL,
  CLIP-L, the 16-channel VAE; ``tiny_flux.FLUX_KONTEXT_DEV``) with random bf16
  weights, text to image at 1024x1024 and 28 steps: for a GPU with 48 GB or more
  (about 34 GB of weights, written once: about 34 GB of disk). It runs the
  overhead and gpu sections (the others measure Stable Diffusion's ControlNets,
  strengths and IP-Adapter).
- ``qwen-image``: Qwen-Image-Edit-2509's own transformer, VAE and Qwen2.5-VL
  configurations (``tiny_qwen.QWEN_IMAGE``) with random bf16 weights, text to
  image at 1024x1024 with true CFG (two transformer passes per step), for a GPU
  with 80 GB or more and about 60 GB of free disk. Its three paths (raw, engine,
  studio) each hold the 58 GB model, so they are loaded one after another, not
  side by side (``paths_together``). It runs the overhead, queue and gpu
  sections.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from benchmarks.random_model import (
    BenchModel,
    write_random_model,
    write_random_qwen_image,
)
from benchmarks.registry import SD15_SIZES
from generation.engine.config import (
    TINY_QWEN_PIPELINE_DIR,
    EngineConfig,
    ModelSpec,
    tiny_engine_config,
)
from generation.engine.families import SDXL as SDXL_FAMILY
from generation.engine.tiny_model import Architecture, write_tiny_model
from generation.engine.tiny_qwen import QWEN_IMAGE, QwenImageArchitecture
from generation.engine.tiny_sdxl import SdxlArchitecture
from generation.engine.vocabulary import TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY

FLUX_MARKER = "BENCH_FLUX.json"
ALL_SECTIONS = ("overhead", "registry", "growth", "queue", "gpu")
"""The benchmark's sections, in the order they run (``suite``)."""

# Stable Diffusion 1.5's configurations, as the registry benchmark writes them
# (the text encoder keeps the tiny model's byte-level vocabulary: a smaller
# embedding table, the same arithmetic).
SD15 = BenchModel(
    architecture=Architecture(**SD15_SIZES),
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
# h94/IP-Adapter's image encoder (OpenCLIP ViT-H/14), for SD 1.5 and SDXL's
# ViT-H editions alike.
VIT_H = SD15.image_encoder
# stabilityai/stable-diffusion-xl-base-1.0's configurations (unet/, vae/,
# text_encoder/ CLIP ViT-L, text_encoder_2/ OpenCLIP ViT-bigG); the text encoders
# keep the tiny model's byte-level vocabulary, as SD15's does.
SDXL = BenchModel(
    architecture=SdxlArchitecture(
        unet={
            "sample_size": 128,
            "block_out_channels": (320, 640, 1280),
            "layers_per_block": 2,
            "down_block_types": (
                "DownBlock2D",
                "CrossAttnDownBlock2D",
                "CrossAttnDownBlock2D",
            ),
            "up_block_types": (
                "CrossAttnUpBlock2D",
                "CrossAttnUpBlock2D",
                "UpBlock2D",
            ),
            "attention_head_dim": (5, 10, 20),
            "use_linear_projection": True,
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 2816,
            "transformer_layers_per_block": (1, 2, 10),
            "cross_attention_dim": 2048,
            "norm_num_groups": 32,
        },
        vae={
            **SD15_SIZES["vae"],
            "sample_size": 1024,
            "scaling_factor": 0.13025,
        },
        text_encoder={
            **SD15_SIZES["text_encoder"],
            "hidden_act": "quick_gelu",
        },
        text_encoder_2={
            "hidden_size": 1280,
            "intermediate_size": 5120,
            "num_hidden_layers": 32,
            "num_attention_heads": 20,
            "projection_dim": 1280,
            "hidden_act": "gelu",
        },
        controlnet_conditioning_channels=SD15_SIZES["controlnet_conditioning_channels"],
    ),
    image_encoder=VIT_H,
    weights_dtype="float16",
)
# SD 1.5's layout at a quarter of its widths (latents 32x32 for 256x256 images).
SMALL = BenchModel(
    architecture=Architecture(
        unet={
            **SD15_SIZES["unet"],
            "sample_size": 32,
            "block_out_channels": (64, 128, 256, 256),
            "cross_attention_dim": 256,
        },
        vae={
            **SD15_SIZES["vae"],
            "block_out_channels": (32, 64, 128, 128),
            "sample_size": 256,
        },
        text_encoder={
            "hidden_size": 256,
            "intermediate_size": 1024,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "projection_dim": 256,
        },
        controlnet_conditioning_channels=SD15_SIZES["controlnet_conditioning_channels"],
    ),
    image_encoder={
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 64,
    },
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
    model: BenchModel | QwenImageArchitecture | None
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
    family: str = "sd15"
    sections: tuple[str, ...] = ALL_SECTIONS
    """The sections run when ``--only`` is not given."""
    guidance_scale: float = 7.5
    paths_together: bool = True
    """Whether raw diffusers, the engine and the studio are loaded side by side
    and run in turns (False: one after another, for a model of which the GPU
    holds one copy only)."""

    @property
    def model_key(self) -> str:
        return f"bench-{self.name}"

    def write_model(self, root: Path) -> EngineConfig:
        """Write (or reuse) this preset's model under ``root``; its engine config.

        Both writers use the tiny model's layout, so one configuration serves
        both; it lists only the ControlNets that were written.
        """
        if self.family == "flux":
            return write_random_flux(root, self.model_key, self.summary)
        if isinstance(self.model, QwenImageArchitecture):
            write_random_qwen_image(self.model, root)
            spec = ModelSpec(
                key=self.model_key,
                source=str(root / TINY_QWEN_PIPELINE_DIR),
                label=self.summary,
                family=self.family,
            )
            return EngineConfig(models={self.model_key: spec}, model_roots=[root])
        if self.model is None:
            write_tiny_model(root)
        else:
            write_random_model(self.model, root)
        config = tiny_engine_config(root)
        sdxl = self.model is not None and self.model.family is SDXL_FAMILY
        spec = config.models[TINY_SDXL_MODEL_KEY if sdxl else TINY_MODEL_KEY]
        spec.key, spec.label = self.model_key, self.summary
        config.models = {self.model_key: spec}
        if sdxl:
            # The one model's own adapters become the engine-wide ones, which
            # every measurement (and the sandboxed studio's settings) reads.
            config.controlnets, config.ip_adapter = spec.controlnets, spec.ip_adapter
            spec.controlnets = spec.ip_adapter = None
        config.controlnets = _written(config.controlnets)
        return config


def _written(controlnets: dict[str, str]) -> dict[str, str]:
    """The ControlNets whose folders were written."""
    return {
        control_type: source
        for control_type, source in controlnets.items()
        if Path(source).is_dir()
    }
def write_random_flux(root: Path, model_key: str, label: str) -> EngineConfig:
    """Write (or reuse) a random-weight FLUX.1 Kontext [dev]-architecture model
    in bf16 under ``root/flux``; its engine config."""
    import torch

    from generation.engine.tiny_flux import FLUX_KONTEXT_DEV, random_flux_pipeline

    folder = Path(root) / "flux"
    marker = Path(root) / FLUX_MARKER
    if not marker.is_file():
        # Built in bf16 directly: 17B parameters in float32 would need 68 GB.
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            pipe = random_flux_pipeline(FLUX_KONTEXT_DEV, dtype=torch.bfloat16)
        finally:
            torch.set_default_dtype(default)
        pipe.save_pretrained(folder, safe_serialization=True)
        marker.write_text('{"architecture": "FLUX.1-Kontext-dev", "dtype": "bf16"}\n')
    spec = ModelSpec(key=model_key, source=str(folder), label=label, family="flux")
    return EngineConfig(models={model_key: spec}, model_roots=[Path(root)])


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
            step_counts=(5, 10),
            sizes=(64, 128),
            strengths=(0.2, 0.6, 1.0),
            image_counts=(1, 2),
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
        Preset(
            name="sdxl",
            summary="SDXL architecture, random fp16 weights, 1024x1024",
            model=SDXL,
            width=1024,
            height=1024,
            steps=30,
            runs=10,
            step_counts=(10, 20, 30, 50),
            sizes=(768, 1024),
        ),
        Preset(
            name="flux",
            summary="FLUX.1 Kontext [dev] architecture, random bf16 weights, 1024x1024",
            model=None,
            width=1024,
            height=1024,
            steps=28,
            runs=5,
            step_counts=(14, 28),
            sizes=(1024,),
            family="flux",
            sections=("overhead", "gpu"),
            guidance_scale=3.5,
        ),
        Preset(
            name="qwen-image",
            summary="Qwen-Image-Edit-2509 architecture, random bf16 weights, "
            "1024x1024, true CFG",
            model=QWEN_IMAGE,
            width=1024,
            height=1024,
            steps=20,
            runs=3,
            step_counts=(),
            sizes=(),
            queue_jobs=20,
            family="qwen-image",
            sections=("overhead", "queue", "gpu"),
            paths_together=False,
        ),
    )
}
