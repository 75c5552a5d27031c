"""Qwen-Image and FLUX.1 LoRAs in the key styles people publish, for the tests.

The tiny model ships its Qwen-Image LoRA in kohya/musubi-tuner's layout
(``lora_unet_transformer_blocks_0_attn_to_q.lora_down.weight``); these write
the same kind of LoRA in diffusers' layout
(``transformer.transformer_blocks.0.attn.to_q.lora_A.weight``) and ComfyUI's
(``diffusion_model.transformer_blocks.0.attn.to_q.lora_down.weight`` with an
``alpha``), on every linear layer of the blocks or on the attention alone
(``to_q``, ``to_k``, ``to_v``, ``to_out.0``: key names FLUX.1's double blocks
have too). Random, seeded weights on the tiny transformers' real modules.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
RANK = 4
COMFYUI_ALPHA = 2.0
"""Below the rank, so that a loader ignoring ``alpha`` would give other pixels."""


def tiny_transformer(root: Path, family: str) -> torch.nn.Module:
    """The tiny model's transformer of ``family`` ("qwen-image" or "flux")."""
    from diffusers import FluxTransformer2DModel, QwenImageTransformer2DModel

    cls = (
        QwenImageTransformer2DModel
        if family == "qwen-image"
        else FluxTransformer2DModel
    )
    return cls.from_pretrained(root / family, subfolder="transformer")


def transformer_lora(
    transformer: torch.nn.Module,
    style: str,
    *,
    attention_only: bool = False,
    seed: int = 7,
) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on the ``transformer_blocks`` (the double-stream blocks)
    in ``style`` "diffusers" or "comfyui"."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if not name.startswith("transformer_blocks.") or not isinstance(
            module, torch.nn.Linear
        ):
            continue
        if attention_only and not name.endswith(tuple(f".attn.{p}" for p in ATTENTION)):
            continue
        down = torch.randn(RANK, module.in_features, generator=generator) * 0.5
        up = torch.randn(module.out_features, RANK, generator=generator) * 0.5
        if style == "diffusers":
            weights[f"transformer.{name}.lora_A.weight"] = down
            weights[f"transformer.{name}.lora_B.weight"] = up
        elif style == "comfyui":
            weights[f"diffusion_model.{name}.lora_down.weight"] = down
            weights[f"diffusion_model.{name}.lora_up.weight"] = up
            weights[f"diffusion_model.{name}.alpha"] = torch.tensor(COMFYUI_ALPHA)
        else:
            raise ValueError(f"unknown LoRA style {style!r}")
    return weights


def write_lora(weights: dict[str, torch.Tensor], path: Path) -> Path:
    save_file(weights, path)
    return path
