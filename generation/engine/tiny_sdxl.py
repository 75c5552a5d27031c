"""Writes the built-in tiny SDXL model beside the tiny SD 1.5 one.

The shapes follow diffusers' own tiny SDXL (``get_dummy_components`` in
``tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py``): a
two-level UNet with ``addition_embed_type="text_time"``, linear projections and
two transformer layers in its cross-attention level, and two CLIP text encoders
(a ``CLIPTextModel`` and a ``CLIPTextModelWithProjection``) whose outputs are
concatenated. Here the second encoder is wider than the first (48 vs 32), so a
concatenation in the wrong order or a missing encoder fails loudly; the VAE is
the tiny SD 1.5 one (8 times smaller latents, like SDXL's) with SDXL's scaling
factor. Both tokenizers are the byte-level CLIP vocabulary built locally;
the second pads with ``!`` as SDXL's second tokenizer does.

Written under the tiny model's root (``write_tiny_sdxl(root)``):

- ``sdxl/``: the diffusers pipeline folder (``StableDiffusionXLPipeline``,
  SDXL's Euler scheduler config);
- ``controlnet-sdxl/<type>/``: one SDXL ControlNet per ``ControlType``, made
  from the UNet config (so with ``text_time`` conditioning);
- ``ip-adapter/sdxl_models/``: ``ip-adapter_sdxl_vit-h.safetensors`` and
  ``ip-adapter-plus-face_sdxl_vit-h.safetensors`` in the ``h94/IP-Adapter``
  layout; they use ``ip-adapter/models/image_encoder`` (the ViT-H editions share
  SD 1.5's image encoder, as in h94/IP-Adapter);
- ``sdxl.safetensors``: the same pipeline as one original-layout (SGM)
  checkpoint, as ``sd_xl_base_1.0.safetensors`` is published: the UNet under
  ``model.diffusion_model.``, the VAE under ``first_stage_model.``, the first
  text encoder under ``conditioner.embedders.0.transformer.`` and the second in
  OpenCLIP's layout under ``conditioner.embedders.1.model.``; read with
  ``sdxl/`` as its config;
- ``lora/persona-sdxl.safetensors``: a kohya-ss SDXL LoRA: ``lora_unet_*`` under
  the original (SGM) block names, ``lora_te1_*`` and ``lora_te2_*``;
- ``sdxl-refiner/``: a refiner in the layout of
  ``stabilityai/stable-diffusion-xl-refiner-1.0`` (``StableDiffusionXLImg2ImgPipeline``
  with the second text encoder only, a UNet conditioned on it and on the
  aesthetic score, ``requires_aesthetics_score``), sharing the base's VAE
  weights, as the real refiner does.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import save_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from generation.engine.config import (
    TINY_IP_ADAPTER_DIR,
    TINY_SDXL_CONTROLNET_DIR,
    TINY_SDXL_LORA_FILE,
    TINY_SDXL_PIPELINE_DIR,
    TINY_SDXL_REFINER_DIR,
    TINY_SDXL_SINGLE_FILE,
)
from generation.engine.families import SDXL
from generation.engine.tiny_model import (
    TINY,
    _ldm_checkpoint,
    _seed_for,
    byte_level_tokenizer,
    ip_adapter_weights,
    kohya_lora,
    random_controlnet,
)
from generation.engine.vocabulary import ControlType

TEXT_ENCODER_WIDTH = 32
TEXT_ENCODER_2_WIDTH = 48
ADDITION_TIME_EMBED_DIM = 8


@dataclass(frozen=True)
class SdxlArchitecture:
    """Sizes of an SDXL-layout model (diffusers/transformers kwargs)."""

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]
    controlnet_conditioning_channels: tuple[int, ...]


TINY_SDXL = SdxlArchitecture(
    unet={
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": ADDITION_TIME_EMBED_DIM,
        "transformer_layers_per_block": (1, 2),
        # Six size numbers (original size, crop, target size), each embedded,
        # and the second encoder's pooled projection.
        "projection_class_embeddings_input_dim": 6 * ADDITION_TIME_EMBED_DIM
        + TEXT_ENCODER_2_WIDTH,
        "cross_attention_dim": TEXT_ENCODER_WIDTH + TEXT_ENCODER_2_WIDTH,
        "norm_num_groups": 32,
    },
    vae={**TINY.vae, "scaling_factor": 0.13025},
    text_encoder={
        "hidden_size": TEXT_ENCODER_WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": TEXT_ENCODER_WIDTH,
        "hidden_act": "quick_gelu",
    },
    text_encoder_2={
        "hidden_size": TEXT_ENCODER_2_WIDTH,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": TEXT_ENCODER_2_WIDTH,
        "hidden_act": "gelu",
    },
    controlnet_conditioning_channels=TINY.controlnet_conditioning_channels,
)


def write_tiny_sdxl(root: Path) -> dict[str, str]:
    """Write the tiny SDXL model's files under ``root`` (see the module doc).

    The caller (``tiny_model.write_tiny_model``) owns the folder and its marker;
    returns what was written, for the marker.
    """
    root = Path(root)
    for entry in (
        TINY_SDXL_PIPELINE_DIR,
        TINY_SDXL_CONTROLNET_DIR,
        TINY_SDXL_REFINER_DIR,
    ):
        shutil.rmtree(root / entry, ignore_errors=True)
    pipe = random_sdxl_pipeline(TINY_SDXL)
    pipe.save_pretrained(root / TINY_SDXL_PIPELINE_DIR, safe_serialization=True)
    random_sdxl_refiner(pipe, TINY_SDXL_REFINER).save_pretrained(
        root / TINY_SDXL_REFINER_DIR, safe_serialization=True
    )
    save_file(_sgm_checkpoint(pipe), root / TINY_SDXL_SINGLE_FILE)
    for control_type in ControlType:
        controlnet = random_controlnet(
            pipe.unet, TINY_SDXL, seed=_seed_for(f"sdxl-{control_type.value}")
        )
        controlnet.save_pretrained(root / TINY_SDXL_CONTROLNET_DIR / control_type.value)
    adapters = root / TINY_IP_ADAPTER_DIR / SDXL.ip_adapter.subfolder
    shutil.rmtree(adapters, ignore_errors=True)
    adapters.mkdir(parents=True)
    plain, plus_face = ip_adapter_weights(pipe.unet, "sdxl")
    save_file(plain, adapters / SDXL.ip_adapter.weight_name)
    save_file(plus_face, adapters / SDXL.ip_adapter.face_weight_name)
    lora_path = root / TINY_SDXL_LORA_FILE
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        kohya_lora(
            "sdxl-lora",
            unet=pipe.unet,
            text_encoders={
                "lora_te1": pipe.text_encoder,
                "lora_te2": pipe.text_encoder_2,
            },
            original_unet_names=True,
        ),
        lora_path,
        metadata={"ss_network_module": "networks.lora"},
    )
    return {
        "pipeline": TINY_SDXL_PIPELINE_DIR,
        "refiner": TINY_SDXL_REFINER_DIR,
        "single_file": TINY_SDXL_SINGLE_FILE,
        "controlnets": TINY_SDXL_CONTROLNET_DIR,
        "ip_adapter": f"{TINY_IP_ADAPTER_DIR}/{SDXL.ip_adapter.subfolder}",
        "lora": TINY_SDXL_LORA_FILE,
    }


def random_sdxl_pipeline(architecture: SdxlArchitecture) -> StableDiffusionXLPipeline:
    """A seeded, randomly initialised SDXL-layout pipeline of the given sizes."""
    torch.manual_seed(_seed_for("sdxl-unet"))
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **architecture.unet)
    torch.manual_seed(_seed_for("sdxl-vae"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, **architecture.vae)
    tokenizer = byte_level_tokenizer()
    tokenizer_2 = byte_level_tokenizer(pad_token="!")
    torch.manual_seed(_seed_for("sdxl-text_encoder"))
    text_encoder = CLIPTextModel(_text_config(tokenizer, architecture.text_encoder))
    torch.manual_seed(_seed_for("sdxl-text_encoder_2"))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(tokenizer_2, architecture.text_encoder_2)
    )
    # SDXL base 1.0's own scheduler configuration.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
        interpolation_type="linear",
        prediction_type="epsilon",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
    )


# The refiner's UNet: conditioned on the second encoder alone, and on five size
# numbers (original size, crop, aesthetic score) with the pooled projection, as
# stable-diffusion-xl-refiner-1.0's is (there: 1280 wide, 2560 inputs).
TINY_SDXL_REFINER = {
    **TINY_SDXL.unet,
    "attention_head_dim": (2, 4),
    "transformer_layers_per_block": (1, 1),
    "cross_attention_dim": TEXT_ENCODER_2_WIDTH,
    "projection_class_embeddings_input_dim": 5 * ADDITION_TIME_EMBED_DIM
    + TEXT_ENCODER_2_WIDTH,
}


def random_sdxl_refiner(
    base: StableDiffusionXLPipeline, unet_sizes: dict[str, Any]
) -> StableDiffusionXLImg2ImgPipeline:
    """A seeded random refiner for ``base``: its own UNet, the base's second
    text encoder, tokenizer, VAE and scheduler configuration (the real refiner
    ships the same OpenCLIP encoder and VAE as the base)."""
    torch.manual_seed(_seed_for("sdxl-refiner-unet"))
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **unet_sizes)
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(base.scheduler.config),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _text_config(tokenizer: CLIPTokenizer, sizes: dict[str, Any]) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=77,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sizes,
    )


def _sgm_checkpoint(pipe: StableDiffusionXLPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights under the original SDXL (SGM) key names: the inverse
    of diffusers' single-file conversion (``convert_ldm_*``,
    ``convert_open_clip_checkpoint``)."""
    first = "cond_stage_model.transformer."
    checkpoint = {
        key.replace(first, "conditioner.embedders.0.transformer.", 1): value
        for key, value in _ldm_checkpoint(pipe).items()
    }
    checkpoint.update(_open_clip_weights(pipe.text_encoder_2))
    return {key: value.contiguous() for key, value in checkpoint.items()}


def _open_clip_weights(
    text_encoder: CLIPTextModelWithProjection,
) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP's layout, as SDXL's second
    text encoder is stored (query, key and value in one ``in_proj``)."""
    prefix = "conditioner.embedders.1.model."
    state = text_encoder.state_dict()
    weights = {
        f"{prefix}token_embedding.weight": state[
            "text_model.embeddings.token_embedding.weight"
        ],
        f"{prefix}positional_embedding": state[
            "text_model.embeddings.position_embedding.weight"
        ],
        f"{prefix}ln_final.weight": state["text_model.final_layer_norm.weight"],
        f"{prefix}ln_final.bias": state["text_model.final_layer_norm.bias"],
        f"{prefix}text_projection": state["text_projection.weight"].T,
    }
    names = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for layer in range(text_encoder.config.num_hidden_layers):
        source = f"text_model.encoder.layers.{layer}."
        target = f"{prefix}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            for original, ours in names.items():
                weights[f"{target}{original}.{kind}"] = state[f"{source}{ours}.{kind}"]
            weights[f"{target}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{source}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
    return weights
