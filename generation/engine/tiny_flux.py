"""Writes the built-in tiny FLUX.1 Kontext model beside the tiny SD ones.

The shapes follow diffusers' own tiny Flux (``get_dummy_components`` in
``tests/pipelines/flux/test_pipeline_flux_kontext.py``): a
``FluxTransformer2DModel`` with one double-stream and one single-stream block
(two heads of 16, rotary axes 4/4/8), a five-layer CLIP text encoder of width 32
(its pooled projection conditions the transformer) and a tiny T5 encoder (width
32) for the sequence. Two changes: the transformer has FLUX.1 [dev]'s
``guidance_embeds`` (the guidance scale is an input of the model, as in the
released guidance-distilled models), and the VAE has four levels, so latents are
8 times smaller than images as in FLUX.1's VAE (diffusers' test VAE has one),
with FLUX.1's scaling and shift factors and no quant convolutions. The
scheduler is FLUX.1's ``FlowMatchEulerDiscreteScheduler`` config (dynamic
shifting). Both tokenizers are built here with the ``tokenizers`` library: the
byte-level CLIP vocabulary of the tiny SD model, and a character-level T5
(Unigram, SentencePiece's ``▁`` word marks, ``</s>`` appended, ``<pad>`` 0).

Written under the tiny model's root (``write_tiny_flux(root)``):

- ``flux/``: the diffusers pipeline folder, saved as ``FluxKontextPipeline``
  (as ``black-forest-labs/FLUX.1-Kontext-dev`` is); the studio loads it as
  ``FluxPipeline`` and derives img2img and Kontext with ``from_pipe``;
- ``lora/persona-flux.safetensors``: a LoRA for the transformer in diffusers'
  Flux layout (``transformer.<module>.lora_A/lora_B.weight``), and
  ``lora/persona-flux-kohya.safetensors`` one in kohya-ss's layout
  (``lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight``...);
- ``flux-transformer.safetensors``: its transformer as one file in diffusers'
  names, and ``flux1-tiny-bfl.safetensors`` the same weights in BFL's original
  layout (``double_blocks.0.img_attn.qkv.weight``...), as
  ``flux1-kontext-dev.safetensors`` is published (``bfl_flux_checkpoint``);
- ``ip-adapter-flux/ip_adapter.safetensors``: an IP-Adapter in XLabs' layout
  (``XLabs-AI/flux-ip-adapter``) for the tiny SD model's image encoder
  (``ip-adapter/models/image_encoder``), as XLabs' is CLIP ViT-L/14's;
- ``controlnet-flux/<control type>/``: one ``FluxControlNetModel`` per control
  type, in the shapes of diffusers' tiny Flux ControlNet
  (``tests/pipelines/controlnet_flux``: one double- and one single-stream
  block), with the transformer's ``guidance_embeds``.

``FLUX_KONTEXT_DEV`` holds the released model's configurations, for the
benchmark's ``flux`` preset (random bf16 weights on a GPU).
"""

from __future__ import annotations

import shutil
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxControlNetModel,
    FluxKontextPipeline,
    FluxTransformer2DModel,
)
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

from generation.engine.config import (
    TINY_FLUX_BFL_SINGLE_FILE,
    TINY_FLUX_CONTROLNET_DIR,
    TINY_FLUX_IP_ADAPTER_DIR,
    TINY_FLUX_KOHYA_LORA_FILE,
    TINY_FLUX_LORA_FILE,
    TINY_FLUX_PIPELINE_DIR,
    TINY_FLUX_SINGLE_FILE,
)
from generation.engine.families import FLUX
from generation.engine.tiny_model import (
    IMAGE_ENCODER_HIDDEN,
    _seed_for,
    byte_level_tokenizer,
    randomise_zero_parameters,
    write_pipeline_with_lora,
)
from generation.engine.vocabulary import ControlType

LORA_RANK = 4


@dataclass(frozen=True)
class FluxArchitecture:
    """Sizes of a FLUX.1-layout model (diffusers/transformers kwargs)."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: dict[str, Any]


TINY_FLUX = FluxArchitecture(
    transformer={
        "patch_size": 1,
        "in_channels": 16,  # 4 latent channels, packed 2x2
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "guidance_embeds": True,
        "axes_dims_rope": (4, 4, 8),
    },
    vae={
        "block_out_channels": (4, 8, 8, 8),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 4,
        "sample_size": 64,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
    },
    text_encoder={
        "hidden_size": 32,
        "intermediate_size": 37,
        "layer_norm_eps": 1e-05,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "hidden_act": "gelu",
        "projection_dim": 32,
    },
    text_encoder_2={
        "d_model": 32,
        "d_ff": 37,
        "d_kv": 8,
        "num_heads": 4,
        "num_layers": 5,
        "relative_attention_num_buckets": 8,
        "feed_forward_proj": "gated-gelu",
    },
)

# black-forest-labs/FLUX.1-Kontext-dev's configurations (transformer,
# vae, text_encoder = CLIP ViT-L/14's text model, text_encoder_2 = T5 v1.1 XXL's
# encoder).
FLUX_KONTEXT_DEV = FluxArchitecture(
    transformer={
        "patch_size": 1,
        "in_channels": 64,
        "num_layers": 19,
        "num_single_layers": 38,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": True,
        "axes_dims_rope": (16, 56, 56),
    },
    vae={
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "latent_channels": 16,
        "norm_num_groups": 32,
        "sample_size": 1024,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "force_upcast": True,
    },
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
        "vocab_size": 49408,
    },
    text_encoder_2={
        "d_model": 4096,
        "d_ff": 10240,
        "d_kv": 64,
        "num_heads": 64,
        "num_layers": 24,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
        "vocab_size": 32128,
    },
)


def write_tiny_flux(root: Path) -> dict[str, str]:
    """Write the tiny FLUX.1 Kontext model's files under ``root`` (module doc).

    The caller (``tiny_model.write_tiny_model``) owns the folder and its marker;
    returns what was written, for the marker.
    """
    root = Path(root)
    pipe = random_flux_pipeline(TINY_FLUX)
    written = write_pipeline_with_lora(
        root,
        pipe,
        TINY_FLUX_PIPELINE_DIR,
        flux_lora(pipe.transformer, seed=_seed_for("flux-lora")),
        TINY_FLUX_LORA_FILE,
    )
    shutil.rmtree(root / TINY_FLUX_CONTROLNET_DIR, ignore_errors=True)
    for control_type in ControlType:
        controlnet = random_flux_controlnet(
            pipe.transformer, seed=_seed_for(f"flux-controlnet-{control_type.value}")
        )
        controlnet.save_pretrained(root / TINY_FLUX_CONTROLNET_DIR / control_type.value)
    weights = pipe.transformer.state_dict()
    transformer = {name: tensor.contiguous() for name, tensor in weights.items()}
    save_file(bfl_flux_checkpoint(transformer), root / TINY_FLUX_BFL_SINGLE_FILE)
    save_file(transformer, root / TINY_FLUX_SINGLE_FILE)
    adapter = root / TINY_FLUX_IP_ADAPTER_DIR / FLUX.ip_adapter.weight_name
    adapter.parent.mkdir(parents=True, exist_ok=True)
    save_file(xlabs_ip_adapter(pipe.transformer, seed=_seed_for("flux-ip")), adapter)
    kohya_path = root / TINY_FLUX_KOHYA_LORA_FILE
    save_file(
        kohya_flux_lora(pipe.transformer, seed=_seed_for("flux-kohya-lora")),
        kohya_path,
        metadata={"ss_network_module": "networks.lora_flux"},
    )
    return {
        **written,
        "single_file": TINY_FLUX_SINGLE_FILE,
        "bfl_single_file": TINY_FLUX_BFL_SINGLE_FILE,
        "kohya_lora": TINY_FLUX_KOHYA_LORA_FILE,
        "ip_adapter": TINY_FLUX_IP_ADAPTER_DIR,
        "controlnets": TINY_FLUX_CONTROLNET_DIR,
    }


def random_flux_controlnet(
    transformer: FluxTransformer2DModel, *, seed: int
) -> FluxControlNetModel:
    """A FLUX.1 ControlNet (XLabs/InstantX layout without an input hint block:
    the control image is VAE-encoded) of the transformer's sizes, started from
    its weights as in training, its zero-initialised output layers made random
    (``randomise_zero_parameters``)."""
    config = transformer.config
    torch.manual_seed(seed)
    controlnet = FluxControlNetModel.from_transformer(
        transformer,
        num_layers=config.num_layers,
        num_single_layers=config.num_single_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
    )
    return randomise_zero_parameters(controlnet, seed=seed)


def random_flux_pipeline(
    architecture: FluxArchitecture, dtype: torch.dtype = torch.float32
) -> FluxKontextPipeline:
    """A seeded, randomly initialised FLUX.1-layout pipeline of the given sizes."""
    torch.manual_seed(_seed_for("flux-transformer"))
    transformer = FluxTransformer2DModel(**architecture.transformer)
    torch.manual_seed(_seed_for("flux-vae"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, **architecture.vae)
    tokenizer = byte_level_tokenizer()
    tokenizer_2 = t5_character_tokenizer()
    clip = {"vocab_size": len(tokenizer), **architecture.text_encoder}
    torch.manual_seed(_seed_for("flux-text_encoder"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **clip,
        )
    )
    t5 = {"vocab_size": len(tokenizer_2), **architecture.text_encoder_2}
    torch.manual_seed(_seed_for("flux-text_encoder_2"))
    text_encoder_2 = T5EncoderModel(
        T5Config(
            pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            decoder_start_token_id=tokenizer_2.pad_token_id,
            is_encoder_decoder=False,
            **t5,
        )
    )
    # FLUX.1 [dev]'s own scheduler configuration.
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=4096,
        max_shift=1.15,
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
    )
    pipe = FluxKontextPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)


def t5_character_tokenizer(max_length: int = 512) -> T5TokenizerFast:
    """A T5 tokenizer of single characters, built locally (nothing downloaded).

    SentencePiece's layout: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then each
    printable character alone and after the ``▁`` word mark; ``</s>`` closes
    every sequence, as T5's post-processor does.
    """
    characters = sorted(set(string.printable) - set(string.whitespace))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in characters]
    vocab += [("▁" + c, -2.5) for c in characters]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always"
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )


def flux_lora(
    transformer: FluxTransformer2DModel, *, seed: int
) -> dict[str, torch.Tensor]:
    """A LoRA on every attention projection of the transformer, in diffusers'
    Flux layout; non-zero up projections, so it changes the output."""
    generator = torch.Generator().manual_seed(seed)
    weights: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name.split(".")[-1] not in {"to_q", "to_k", "to_v", "add_q_proj"}:
            continue
        prefix = f"transformer.{name}"
        down = torch.randn(LORA_RANK, module.in_features, generator=generator)
        up = torch.randn(module.out_features, LORA_RANK, generator=generator)
        weights[f"{prefix}.lora_A.weight"] = down * 0.1
        weights[f"{prefix}.lora_B.weight"] = up * 0.1
    return weights


# kohya-ss (sd-scripts ``networks/lora_flux.py``) module names in BFL's
# original layout -> the diffusers module whose shape each has (a fused qkv
# projection is three of them). ``single_blocks_N_linear1`` is left out:
# diffusers splits it at the released model's widths (3 x 3072 + 12288), which
# a tiny model does not have.
_KOHYA_FLUX_MODULES = {
    "double_blocks_{i}_img_attn_qkv": ("transformer_blocks.{i}.attn.to_q", 3),
    "double_blocks_{i}_img_attn_proj": ("transformer_blocks.{i}.attn.to_out.0", 1),
    "double_blocks_{i}_img_mlp_0": ("transformer_blocks.{i}.ff.net.0.proj", 1),
    "double_blocks_{i}_img_mod_lin": ("transformer_blocks.{i}.norm1.linear", 1),
    "double_blocks_{i}_txt_attn_qkv": ("transformer_blocks.{i}.attn.add_q_proj", 3),
    "double_blocks_{i}_txt_mlp_2": ("transformer_blocks.{i}.ff_context.net.2", 1),
    "single_blocks_{i}_linear2": ("single_transformer_blocks.{i}.proj_out", 1),
    "single_blocks_{i}_modulation_lin": (
        "single_transformer_blocks.{i}.norm.linear",
        1,
    ),
}


def kohya_flux_lora(
    transformer: FluxTransformer2DModel, *, seed: int
) -> dict[str, torch.Tensor]:
    """A LoRA in kohya-ss's FLUX.1 format (``lora_unet_double_blocks_...``,
    ``lora_unet_single_blocks_...`` with ``lora_down``/``lora_up``/``alpha``),
    as sd-scripts saves one and ComfyUI loads it, over the transformer's
    attention, MLP and modulation layers (``_KOHYA_FLUX_MODULES``)."""
    generator = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    weights: dict[str, torch.Tensor] = {}
    for kohya_name, (module_name, fused) in _KOHYA_FLUX_MODULES.items():
        blocks = (
            transformer.config.num_layers
            if kohya_name.startswith("double")
            else transformer.config.num_single_layers
        )
        for index in range(blocks):
            module = modules[module_name.format(i=index)]
            key = f"lora_unet_{kohya_name.format(i=index)}"
            down = torch.randn(LORA_RANK, module.in_features, generator=generator)
            out_features = module.out_features * fused
            up = torch.randn(out_features, LORA_RANK, generator=generator)
            weights[f"{key}.lora_down.weight"] = down * 0.1
            weights[f"{key}.lora_up.weight"] = up * 0.1
            weights[f"{key}.alpha"] = torch.tensor(float(LORA_RANK) / 2)
    return weights


def bfl_flux_checkpoint(
    transformer: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """A diffusers ``FluxTransformer2DModel`` state dict in BFL's original
    layout: the inverse of diffusers' ``convert_flux_transformer_checkpoint_
    to_diffusers`` (fused qkv and linear1, the final modulation's shift and
    scale halves in BFL's order)."""
    state = dict(transformer)
    bfl: dict[str, torch.Tensor] = {}

    def move(target: str, source: str) -> None:
        for kind in ("weight", "bias"):
            if f"{source}.{kind}" in state:
                bfl[f"{target}.{kind}"] = state.pop(f"{source}.{kind}")

    def fuse(target: str, sources: list[str]) -> None:
        for kind in ("weight", "bias"):
            bfl[f"{target}.{kind}"] = torch.cat(
                [state.pop(f"{source}.{kind}") for source in sources]
            )

    for bfl_name, name in (
        ("time_in", "time_text_embed.timestep_embedder"),
        ("vector_in", "time_text_embed.text_embedder"),
        ("guidance_in", "time_text_embed.guidance_embedder"),
    ):
        move(f"{bfl_name}.in_layer", f"{name}.linear_1")
        move(f"{bfl_name}.out_layer", f"{name}.linear_2")
    move("txt_in", "context_embedder")
    move("img_in", "x_embedder")
    blocks = {int(key.split(".")[1]) for key in state if key.startswith("transformer_")}
    for i in sorted(blocks):
        old, new = f"transformer_blocks.{i}", f"double_blocks.{i}"
        move(f"{new}.img_mod.lin", f"{old}.norm1.linear")
        move(f"{new}.txt_mod.lin", f"{old}.norm1_context.linear")
        fuse(f"{new}.img_attn.qkv", [f"{old}.attn.to_{x}" for x in "qkv"])
        fuse(f"{new}.txt_attn.qkv", [f"{old}.attn.add_{x}_proj" for x in "qkv"])
        for stream, added in (("img", ""), ("txt", "added_")):
            for norm, letter in (("query_norm", "q"), ("key_norm", "k")):
                bfl[f"{new}.{stream}_attn.norm.{norm}.scale"] = state.pop(
                    f"{old}.attn.norm_{added}{letter}.weight"
                )
        move(f"{new}.img_mlp.0", f"{old}.ff.net.0.proj")
        move(f"{new}.img_mlp.2", f"{old}.ff.net.2")
        move(f"{new}.txt_mlp.0", f"{old}.ff_context.net.0.proj")
        move(f"{new}.txt_mlp.2", f"{old}.ff_context.net.2")
        move(f"{new}.img_attn.proj", f"{old}.attn.to_out.0")
        move(f"{new}.txt_attn.proj", f"{old}.attn.to_add_out")
    singles = {int(key.split(".")[1]) for key in state if key.startswith("single_")}
    for i in sorted(singles):
        old, new = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        move(f"{new}.modulation.lin", f"{old}.norm.linear")
        fuse(
            f"{new}.linear1",
            [f"{old}.attn.to_{x}" for x in "qkv"] + [f"{old}.proj_mlp"],
        )
        bfl[f"{new}.norm.query_norm.scale"] = state.pop(f"{old}.attn.norm_q.weight")
        bfl[f"{new}.norm.key_norm.scale"] = state.pop(f"{old}.attn.norm_k.weight")
        move(f"{new}.linear2", f"{old}.proj_out")
    move("final_layer.linear", "proj_out")
    for kind in ("weight", "bias"):
        scale, shift = state.pop(f"norm_out.linear.{kind}").chunk(2, dim=0)
        bfl[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale])
    assert not state, f"unmapped transformer weights: {sorted(state)}"
    return bfl


def xlabs_ip_adapter(
    transformer: FluxTransformer2DModel, *, seed: int
) -> dict[str, torch.Tensor]:
    """An IP-Adapter in XLabs' FLUX.1 layout: the image projection
    (``ip_adapter_proj_model``: 4 tokens of the text width from the image
    encoder's embedding, then a layer norm) and, per double-stream block, the
    key and value projections of the image tokens."""
    generator = torch.Generator().manual_seed(seed)
    width = transformer.config.joint_attention_dim
    inner = transformer.inner_dim

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.1

    weights = {
        "ip_adapter_proj_model.proj.weight": rand(4 * width, IMAGE_ENCODER_HIDDEN),
        "ip_adapter_proj_model.proj.bias": rand(4 * width),
        "ip_adapter_proj_model.norm.weight": torch.ones(width),
        "ip_adapter_proj_model.norm.bias": torch.zeros(width),
    }
    for index in range(transformer.config.num_layers):
        prefix = f"double_blocks.{index}.processor.ip_adapter_double_stream"
        for projection in ("k_proj", "v_proj"):
            weights[f"{prefix}_{projection}.weight"] = rand(inner, width)
            weights[f"{prefix}_{projection}.bias"] = rand(inner)
    return weights
