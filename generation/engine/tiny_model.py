"""Writes the built-in tiny model: random weights in the formats the real ones use.

Nothing can be downloaded here, so tests, CI and the out-of-the-box demo run on a
tiny Stable Diffusion 1.5-architecture model that the studio writes itself
(DESIGN.md decision 5), loaded through exactly the same code as a real model:

- ``sd15/``: a diffusers pipeline folder (UNet with cross-attention blocks, a VAE
  that downsamples by 8 like SD 1.5's, a CLIP text encoder, a byte-level CLIP
  tokenizer, SD 1.5's PNDM scheduler config, no safety checker);
- ``controlnet/<type>/``: one ControlNet per ``ControlType``, matching the UNet;
- ``ip-adapter/models/``: ``ip-adapter_sd15.safetensors`` and
  ``ip-adapter-plus-face_sd15.safetensors`` in the original ``h94/IP-Adapter`` key
  layout (``image_proj.*`` and ``ip_adapter.*``; the plus-face one with the
  Resampler's keys) and ``image_encoder/`` (a CLIP vision model);
- ``lora/persona.safetensors``: a kohya-style LoRA (``lora_unet_*``,
  ``lora_te_*``) for the UNet and the text encoder;
- ``sd15.safetensors``: the same pipeline as one original-layout (LDM) checkpoint,
  the single-file format of AUTOMATIC1111 and model sites, read with
  ``sd15/`` as its config;
- ``flux/`` and its LoRA: the tiny FLUX.1 Kontext model (``tiny_flux.py``);
- ``qwen-image/`` and its LoRA: the tiny Qwen-Image-Edit model (``tiny_qwen.py``);
- ``TINY_MODEL.json``: the marker that tells the UI its images are noise.

Every tensor comes from a fixed seed, so writing twice gives identical bytes
(with the same library versions, which the config files record).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING
from safetensors.torch import save_file
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from generation.engine.config import (
    TINY_CONTROLNET_DIR,
    TINY_IP_ADAPTER_DIR,
    TINY_LORA_FILE,
    TINY_MARKER_FILE,
    TINY_PIPELINE_DIR,
    TINY_SINGLE_FILE,
)
from generation.engine.vocabulary import ControlType


@dataclass(frozen=True)
class Architecture:
    """Sizes of a Stable Diffusion 1.5-layout model (diffusers/transformers kwargs).

    ``TINY`` is the built-in model; the registry benchmark also builds a full-size
    one from the same code.
    """

    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    controlnet_conditioning_channels: tuple[int, ...]


# Shared by the UNet, its ControlNets, the text encoder and the adapters.
CROSS_ATTENTION_DIM = 32
TINY = Architecture(
    unet={
        "sample_size": 8,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": CROSS_ATTENTION_DIM,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    # Four blocks: latents are 8 times smaller than images, as in SD 1.5.
    vae={
        "block_out_channels": (8, 16, 32, 32),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "norm_num_groups": 8,
        "layers_per_block": 1,
        "sample_size": 64,
    },
    text_encoder={
        "hidden_size": CROSS_ATTENTION_DIM,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": CROSS_ATTENTION_DIM,
    },
    # Three stride-2 convolutions: control images at full size, like SD 1.5's.
    controlnet_conditioning_channels=(8, 8, 16, 16),
)
IMAGE_ENCODER_HIDDEN = 32
LORA_RANK = 4
# 2: the tiny SDXL model beside the SD 1.5 one; 3: FLUX.1 and Qwen-Image
MARKER_VERSION = 3


def write_tiny_model(root: Path) -> Path:
    """Write the tiny model under ``root`` (replacing an earlier tiny model there).

    Refuses a non-empty folder that is not a tiny model, so that a mistyped path
    never deletes anything else. Returns ``root``.
    """
    root = Path(root)
    marker = root / TINY_MARKER_FILE
    if root.exists() and any(root.iterdir()) and not marker.exists():
        raise FileExistsError(
            f"{root} is not empty and holds no tiny model: choose an empty folder."
        )
    lora_dir = Path(TINY_LORA_FILE).parent
    for entry in (
        TINY_PIPELINE_DIR,
        TINY_CONTROLNET_DIR,
        TINY_IP_ADAPTER_DIR,
        lora_dir,
    ):
        shutil.rmtree(root / entry, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    pipe = random_pipeline(TINY)
    pipe.save_pretrained(root / TINY_PIPELINE_DIR, safe_serialization=True)
    save_file(_ldm_checkpoint(pipe), root / TINY_SINGLE_FILE)
    for control_type in ControlType:
        controlnet = random_controlnet(
            pipe.unet, TINY, seed=_seed_for(control_type.value)
        )
        controlnet.save_pretrained(root / TINY_CONTROLNET_DIR / control_type.value)
    _write_ip_adapter(root / TINY_IP_ADAPTER_DIR / "models", pipe.unet)
    lora_path = root / TINY_LORA_FILE
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        kohya_lora(
            "lora", unet=pipe.unet, text_encoders={"lora_te": pipe.text_encoder}
        ),
        lora_path,
        # One entry only: safetensors writes several in a random order.
        metadata={"ss_network_module": "networks.lora"},
    )
    from generation.engine.tiny_sdxl import write_tiny_sdxl  # it builds on this

    sdxl = write_tiny_sdxl(root)
    from generation.engine.tiny_flux import write_tiny_flux

    flux = write_tiny_flux(root)
    from generation.engine.tiny_qwen import write_tiny_qwen_image

    qwen_image = write_tiny_qwen_image(root)
    marker.write_text(
        json.dumps(
            {
                "tiny": True,
                "version": MARKER_VERSION,
                "note": "Randomly initialised weights: every image is noise.",
                "pipeline": TINY_PIPELINE_DIR,
                "single_file": TINY_SINGLE_FILE,
                "controlnets": [t.value for t in ControlType],
                "ip_adapter": TINY_IP_ADAPTER_DIR,
                "lora": TINY_LORA_FILE,
                "sdxl": sdxl,
                "flux": flux,
                "qwen-image": qwen_image,
            },
            indent=2,
        )
        + "\n"
    )
    return root


def write_pipeline_with_lora(
    root: Path,
    pipe: Any,
    pipeline_dir: str,
    lora: dict[str, torch.Tensor],
    lora_file: str,
    metadata: dict[str, str] | None = None,
) -> dict[str, str]:
    """Save a tiny pipeline (replacing an earlier one) and its LoRA under
    ``root``; what was written, for the marker (the transformer families'
    writers, ``tiny_flux`` and ``tiny_qwen``)."""
    shutil.rmtree(root / pipeline_dir, ignore_errors=True)
    pipe.save_pretrained(root / pipeline_dir, safe_serialization=True)
    lora_path = root / lora_file
    lora_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora, lora_path, metadata=metadata)
    return {"pipeline": pipeline_dir, "lora": lora_file}


def _seed_for(name: str) -> int:
    """A stable seed per component, independent of the order they are built in."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def random_pipeline(architecture: Architecture) -> StableDiffusionPipeline:
    """A seeded, randomly initialised SD 1.5-layout pipeline of the given sizes."""
    torch.manual_seed(_seed_for("unet"))
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **architecture.unet)
    torch.manual_seed(_seed_for("vae"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, **architecture.vae)
    tokenizer = byte_level_tokenizer()
    torch.manual_seed(_seed_for("text_encoder"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **architecture.text_encoder,
        )
    )
    # Stable Diffusion 1.5's own scheduler configuration.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    # As SD 1.5's scheduler_config.json does: a DDIM or DDPM scheduler built from
    # this config then has clip_sample off, and the pipeline has no deprecated
    # default to warn about and patch at every job.
    scheduler.register_to_config(clip_sample=False)
    return StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(),
        image_encoder=None,
        requires_safety_checker=False,
    )


def byte_level_tokenizer(pad_token: str | None = None) -> CLIPTokenizer:
    """CLIP's byte-level vocabulary without any merges: one token per character.

    The ids follow the layout of CLIP's vocabulary (the 256 byte characters, the
    same with ``</w>``, then the special tokens), so prompts tokenize the way
    CLIP's would before merging; a prompt of a few dozen words already exceeds
    the 77-token window. ``pad_token`` replaces the default padding token (the
    end of text), as SDXL's second tokenizer pads with ``!``.
    """
    characters = sorted(ByteLevel.alphabet())
    tokens = [*characters, *(c + "</w>" for c in characters)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    padding = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=[],
        model_max_length=77,
        **padding,
    )


def random_controlnet(
    unet: UNet2DConditionModel, architecture: Any, *, seed: int
) -> ControlNetModel:
    """A ControlNet initialised from ``unet`` as in training, then made random
    where training starts from zero.

    A fresh ControlNet has zero output convolutions and so no effect at all; a
    trained one has, which is what the tests must see. ``architecture`` gives
    the ``controlnet_conditioning_channels`` (any family's architecture).
    """
    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(
        unet,
        conditioning_embedding_out_channels=(
            architecture.controlnet_conditioning_channels
        ),
    )
    return randomise_zero_parameters(controlnet, seed=seed)


def randomise_zero_parameters(model: torch.nn.Module, *, seed: int) -> Any:
    """``model`` with every all-zero parameter (a ControlNet's zero-initialised
    output layers) drawn at random, so that it changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if not parameter.any():
                parameter.normal_(0.0, 0.05, generator=generator)
    return model


def _write_ip_adapter(models_dir: Path, unet: UNet2DConditionModel) -> None:
    """The two SD 1.5 IP-Adapters of ``h94/IP-Adapter`` and their image encoder."""
    torch.manual_seed(_seed_for("image_encoder"))
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=IMAGE_ENCODER_HIDDEN,
            projection_dim=IMAGE_ENCODER_HIDDEN,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=14,
        )
    )
    image_encoder.save_pretrained(models_dir / "image_encoder")
    plain, plus_face = ip_adapter_weights(unet, "")
    save_file(plain, models_dir / "ip-adapter_sd15.safetensors")
    save_file(plus_face, models_dir / "ip-adapter-plus-face_sd15.safetensors")


def ip_adapter_weights(
    unet: UNet2DConditionModel, family_prefix: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The plain and plus-face IP-Adapters of a tiny UNet of any family, in the
    ``h94/IP-Adapter`` key layout, for the tiny image encoder.

    Their token width is the UNet's cross-attention width; ``family_prefix``
    seeds them apart ("" for SD 1.5, whose seeds came first).
    """
    width = unet.config.cross_attention_dim
    seed = f"{family_prefix}-ip-adapter" if family_prefix else "ip-adapter"
    generator = torch.Generator().manual_seed(_seed_for(seed))
    plain = {
        "image_proj.proj.weight": _random(generator, 4 * width, IMAGE_ENCODER_HIDDEN),
        "image_proj.proj.bias": _random(generator, 4 * width),
        **_layer_norm("image_proj.norm", width),
        **ip_attention_weights(unet, generator),
    }
    generator = torch.Generator().manual_seed(_seed_for(f"{seed}-plus-face"))
    plus_face = {
        **_resampler_weights(generator, width),
        **ip_attention_weights(unet, generator),
    }
    return plain, plus_face


def ip_attention_weights(
    unet: UNet2DConditionModel, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """``ip_adapter.<n>.to_k_ip/to_v_ip`` for each cross-attention layer of any
    SD 1.5-layout UNet (the tiny model's and the benchmark's).

    ``n`` is the layer's index among all of the UNet's attention processors, as
    in the original training code (so cross-attention layers get odd numbers).
    """
    weights = {}
    for index, name in enumerate(unet.attn_processors):
        if not name.endswith("attn2.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        hidden_size = attention.to_q.in_features
        cross_attention_dim = attention.to_k.in_features
        for projection in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{index}.{projection}.weight"] = _random(
                generator, hidden_size, cross_attention_dim
            )
    return weights


def _resampler_weights(
    generator: torch.Generator, output_width: int
) -> dict[str, torch.Tensor]:
    """The plus-face Resampler in its original key layout (depth 4, 64-dim heads),
    giving tokens of ``output_width`` (the UNet's cross-attention width)."""
    width, queries, head_width, ff_width = IMAGE_ENCODER_HIDDEN, 4, 64, 4 * 32
    weights = {
        "image_proj.latents": _random(generator, 1, queries, width),
        "image_proj.proj_in.weight": _random(generator, width, IMAGE_ENCODER_HIDDEN),
        "image_proj.proj_in.bias": _random(generator, width),
        "image_proj.proj_out.weight": _random(generator, output_width, width),
        "image_proj.proj_out.bias": _random(generator, output_width),
        **_layer_norm("image_proj.norm_out", output_width),
    }
    for layer in range(4):
        prefix = f"image_proj.layers.{layer}"
        weights.update(
            {
                **_layer_norm(f"{prefix}.0.norm1", width),
                **_layer_norm(f"{prefix}.0.norm2", width),
                f"{prefix}.0.to_q.weight": _random(generator, head_width, width),
                f"{prefix}.0.to_kv.weight": _random(generator, 2 * head_width, width),
                f"{prefix}.0.to_out.weight": _random(generator, width, head_width),
                **_layer_norm(f"{prefix}.1.0", width),
                f"{prefix}.1.1.weight": _random(generator, ff_width, width),
                f"{prefix}.1.3.weight": _random(generator, width, ff_width),
            }
        )
    return weights


def kohya_lora(
    seed: str,
    *,
    unet: UNet2DConditionModel,
    text_encoders: dict[str, CLIPTextModel],
    original_unet_names: bool = False,
) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every attention projection, in kohya-ss naming.

    ``text_encoders`` maps each kohya prefix (``lora_te``; ``lora_te1`` and
    ``lora_te2`` for SDXL) to its encoder. ``original_unet_names`` names the
    UNet's layers by the original (SGM) blocks, as kohya's SDXL LoRAs do
    (``input_blocks_4_1_...``); SD 1.x ones use diffusers' names.
    """
    generator = torch.Generator().manual_seed(_seed_for(seed))
    targets = [
        (
            "lora_unet",
            _ldm_unet_key(f"{name}.weight", unet).removesuffix(".weight")
            if original_unet_names
            else name,
            module,
        )
        for name, module in unet.named_modules()
        if ".attn" in name and name.endswith(("to_q", "to_k", "to_v", "to_out.0"))
    ] + [
        (prefix, name, module)
        for prefix, text_encoder in text_encoders.items()
        for name, module in text_encoder.named_modules()
        if name.endswith(("q_proj", "k_proj", "v_proj", "out_proj"))
    ]
    return lora_weights(
        generator,
        (
            (f"{prefix}_{name.replace('.', '_')}", linear)
            for prefix, name, linear in targets
        ),
    )


def lora_weights(
    generator: torch.Generator, targets: Iterable[tuple[str, torch.nn.Linear]]
) -> dict[str, torch.Tensor]:
    """Rank-4 kohya-style ``lora_down``/``lora_up``/``alpha`` tensors for each
    (LoRA module name, linear layer), drawn from ``generator`` in that order."""
    weights = {}
    for lora_name, linear in targets:
        weights[f"{lora_name}.lora_down.weight"] = _random(
            generator, LORA_RANK, linear.in_features
        )
        weights[f"{lora_name}.lora_up.weight"] = _random(
            generator, linear.out_features, LORA_RANK
        )
        weights[f"{lora_name}.alpha"] = torch.tensor(float(LORA_RANK))
    return weights


def _ldm_checkpoint(pipe: StableDiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights under the original Stable Diffusion key names.

    The inverse of diffusers' single-file conversion (``convert_ldm_*`` in
    ``diffusers.loaders.single_file_utils``), for any number of blocks.
    """
    checkpoint = {
        f"model.diffusion_model.{_ldm_unet_key(key, pipe.unet)}": value
        for key, value in pipe.unet.state_dict().items()
    }
    for key, value in pipe.vae.state_dict().items():
        ldm_key = _ldm_vae_key(key, len(pipe.vae.config.up_block_types))
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", ldm_key):
            value = value[:, :, None, None]  # 1x1 convolutions in the original
        checkpoint[f"first_stage_model.{ldm_key}"] = value
    for key, value in pipe.text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel; checkpoints keep text_model.
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        checkpoint[f"cond_stage_model.transformer.{key}"] = value
    return {key: value.contiguous() for key, value in checkpoint.items()}


_HINT_BLOCK = re.compile(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)")


def ldm_controlnet_checkpoint(
    controlnet: ControlNetModel, prefix: str = "control_model."
) -> dict[str, torch.Tensor]:
    """A ControlNet's weights under the original key names (``input_blocks``,
    ``zero_convs``, ``input_hint_block``, ``middle_block_out``), as in
    ``control_v11p_sd15_openpose_fp16.safetensors``: the inverse of diffusers'
    ``convert_controlnet_checkpoint``. ``prefix`` is ``control_model.`` in the
    files A1111 and ComfyUI use ("" in some others; diffusers reads both)."""
    fixed = {
        diffusers_key: ldm_key
        for mapping in DIFFUSERS_TO_LDM_MAPPING["controlnet"].values()
        for diffusers_key, ldm_key in mapping.items()
    }
    checkpoint = {}
    for key, value in controlnet.state_dict().items():
        if key in fixed:
            ldm_key = fixed[key]
        elif match := _HINT_BLOCK.fullmatch(key):
            ldm_key = f"input_hint_block.{2 * int(match[1]) + 2}.{match[2]}"
        elif match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.*)", key):
            ldm_key = f"zero_convs.{match[1]}.0.{match[2]}"
        elif key.startswith("controlnet_mid_block."):
            ldm_key = key.replace("controlnet_mid_block.", "middle_block_out.0.")
        else:
            ldm_key = _ldm_unet_key(key, controlnet)
        checkpoint[prefix + ldm_key] = value.contiguous()
    return checkpoint


_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def _ldm_unet_key(key: str, unet: UNet2DConditionModel) -> str:
    fixed = {
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"],
        # SDXL's size and pooled-text conditioning (label_emb in the original).
        **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"],
    }
    if key in fixed:
        return fixed[key]
    per_block = unet.config.layers_per_block + 1
    part, rest = _split_block(key)
    kind, block, layer = part
    if kind == "mid_block":
        index = 1 if layer[0] == "attentions" else 2 * int(layer[1])
        ldm = f"middle_block.{index}"
    elif layer[0] in ("resnets", "attentions"):
        slot = "0" if layer[0] == "resnets" else "1"
        if kind == "down_blocks":
            ldm = f"input_blocks.{1 + block * per_block + int(layer[1])}.{slot}"
        else:
            ldm = f"output_blocks.{block * per_block + int(layer[1])}.{slot}"
    elif kind == "down_blocks":  # downsamplers.0.conv
        return (
            f"input_blocks.{(block + 1) * per_block}.0.op.{rest.removeprefix('conv.')}"
        )
    else:  # upsamplers.0.conv, after the block's last resnet (and attention)
        has_attention = hasattr(unet.up_blocks[block], "attentions")
        last = block * per_block + per_block - 1
        slot = 2 if has_attention else 1
        return f"output_blocks.{last}.{slot}.{rest}"
    if layer[0] == "resnets":
        name, _, tail = rest.partition(".")
        rest = f"{_RESNET_TO_LDM[name]}.{tail}"
    return f"{ldm}.{rest}"


def _ldm_vae_key(key: str, blocks: int) -> str:
    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in fixed:
        return fixed[key]
    coder, key = key.split(".", 1)
    (kind, block, layer), rest = _split_block(key)
    if kind == "mid_block" and layer[0] == "attentions":
        name, _, tail = rest.rpartition(".")
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v"}.get(
            name, "proj_out" if name == "to_out.0" else name
        )
        return f"{coder}.mid.attn_1.{name}.{tail}"
    rest = rest.replace("conv_shortcut", "nin_shortcut")
    if kind == "mid_block":
        return f"{coder}.mid.block_{int(layer[1]) + 1}.{rest}"
    level = block if kind == "down_blocks" else blocks - 1 - block
    stage = "down" if kind == "down_blocks" else "up"
    if layer[0] == "resnets":
        return f"{coder}.{stage}.{level}.block.{layer[1]}.{rest}"
    sampler = "downsample" if kind == "down_blocks" else "upsample"
    return f"{coder}.{stage}.{level}.{sampler}.{rest}"


def _split_block(key: str) -> tuple[tuple[str, int, tuple[str, str]], str]:
    """``down_blocks.1.resnets.0.conv1.weight`` -> ((kind, 1, (resnets, 0)), rest)."""
    match = re.match(
        r"(down_blocks|up_blocks|mid_block)\.(?:(\d+)\.)?(\w+)\.(\d+)\.(.*)", key
    )
    if match is None:
        raise ValueError(f"No original name is known for {key!r}.")
    kind, block, layer, index, rest = match.groups()
    return (kind, int(block or 0), (layer, index)), rest


def _random(generator: torch.Generator, *shape: int) -> torch.Tensor:
    """Normal weights scaled by the fan-in, like a trained layer's magnitude."""
    fan_in = shape[-1]
    return torch.randn(*shape, generator=generator) / fan_in**0.5


def _layer_norm(prefix: str, width: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.ones(width), f"{prefix}.bias": torch.zeros(width)}
