"""Writes the built-in tiny Qwen-Image model beside the tiny SD 1.5 one.

The shapes follow diffusers' own tiny Qwen-Image (``get_dummy_components`` in
``tests/pipelines/qwenimage/test_qwenimage_edit_plus.py``): a two-layer
``QwenImageTransformer2DModel`` (three 16-wide heads, 16-wide text features,
2x2 patches of 4 latent channels), Qwen-Image's causal 3D VAE and a two-layer
Qwen2.5-VL text encoder with a two-block vision tower, 16 wide. Three things
differ on purpose: the VAE downsamples by 8 as the released one does (so sizes
come in the real model's steps of 16, and a one-megapixel reference gives the
real number of latent tokens), it is 4 channels wide at every level (the edit
pipeline encodes every reference at about one megapixel, whatever its size, so
the VAE is what a tiny edit costs), and the tokenizer and processor are built
here (diffusers' tests download theirs):

- the tokenizer is Qwen2's byte-level BPE (``Qwen2Tokenizer``, built with the
  ``tokenizers`` library) over the 256 byte characters without merges, plus
  Qwen2.5-VL's special tokens in their released order (``<|endoftext|>``,
  ``<|im_start|>``, ``<|im_end|>`` ... ``<|vision_start|>``,
  ``<|vision_end|>``, ``<|vision_pad|>``, ``<|image_pad|>``,
  ``<|video_pad|>``): everything the pipelines' prompt templates use;
- the processor is ``Qwen2VLProcessor`` (Qwen2.5-VL's): that tokenizer, the
  Qwen2-VL image processor (14-pixel patches merged 2 x 2, as released) and its
  video processor, which the processor requires.

The text encoder's image, video and vision-boundary token ids are the
tokenizer's, so a reference image's features land where its ``<|image_pad|>``
tokens are, as in the released model.

Written under the tiny model's root (``write_tiny_qwen_image(root)``):

- ``qwen-image/``: one diffusers folder in the layout of
  ``Qwen/Qwen-Image-Edit-2509`` (``QwenImageEditPlusPipeline``: transformer,
  vae, text_encoder, tokenizer, processor, Qwen-Image's flow-matching
  scheduler config); the text pipeline (``QwenImagePipeline``) is derived from
  it with ``from_pipe`` and shares every module;
- ``lora/persona-qwen-image.safetensors``: a LoRA in the kohya/musubi-tuner
  layout that community Qwen-Image LoRAs use (``lora_unet_transformer_blocks_*``
  with ``alpha``), on the attention and MLP projections of both streams.

``QWEN_IMAGE`` holds the released sizes, for the ``qwen-image`` benchmark
preset (random bf16 weights on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImageEditPlusPipeline,
    QwenImageTransformer2DModel,
)
from tokenizers.pre_tokenizers import ByteLevel
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from generation.engine.config import TINY_QWEN_LORA_FILE, TINY_QWEN_PIPELINE_DIR
from generation.engine.tiny_model import (
    _seed_for,
    lora_weights,
    write_pipeline_with_lora,
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen2.5-VL's added tokens, in the order of its vocabulary (151643 on)."""

# The released VAE's per-channel latent statistics (its first channels are the
# tiny VAE's), so the pipelines' (un)normalisation is exercised, not an identity.
_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075)
_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558)


@dataclass(frozen=True)
class QwenImageArchitecture:
    """Sizes of a Qwen-Image-layout model (diffusers/transformers kwargs)."""

    transformer: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    """``Qwen2_5_VLTextConfig`` fields (its width is the transformer's
    ``joint_attention_dim``)."""
    vision: dict[str, Any]
    vocab_size: int
    """At least the tokenizer's size (the released embedding is larger)."""


TINY_QWEN_IMAGE = QwenImageArchitecture(
    transformer={
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 4,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 3,
        "joint_attention_dim": 16,
        "guidance_embeds": False,
        "axes_dims_rope": (8, 4, 4),
    },
    # As narrow as the VAE goes: every reference is encoded at about one
    # megapixel (the edit pipeline's own size), which is this model's main cost.
    vae={
        "base_dim": 4,
        "z_dim": 4,
        "dim_mult": [1, 1, 1, 1],
        "num_res_blocks": 1,
        "temperal_downsample": [False, True, True],
        "latents_mean": list(_LATENTS_MEAN),
        "latents_std": list(_LATENTS_STD),
    },
    text={
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": [1, 1, 2],
            "rope_theta": 1000000.0,
        },
    },
    vision={
        "depth": 2,
        "hidden_size": 16,
        "intermediate_size": 16,
        "num_heads": 2,
        "out_hidden_size": 16,
    },
    vocab_size=0,
)

QWEN_IMAGE = QwenImageArchitecture(
    # Qwen/Qwen-Image-Edit-2509's transformer/config.json (the class defaults).
    transformer={
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": 60,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 3584,
        "guidance_embeds": False,
        "axes_dims_rope": (16, 56, 56),
    },
    vae={},  # AutoencoderKLQwenImage's defaults are the released VAE
    # Qwen2.5-VL-7B-Instruct's text_encoder/config.json.
    text={
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "max_position_embeddings": 128000,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": [16, 24, 24],
            "rope_theta": 1000000.0,
        },
    },
    vision={
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 3584,
        "window_size": 112,
        "fullatt_block_indexes": [7, 15, 23, 31],
        "tokens_per_second": 2,
    },
    vocab_size=152064,
)


def write_tiny_qwen_image(root: Path) -> dict[str, str]:
    """Write the tiny Qwen-Image model's files under ``root`` (module doc).

    The caller (``tiny_model.write_tiny_model``) owns the folder and its marker;
    returns what was written, for the marker.
    """
    pipe = random_qwen_image_pipeline(TINY_QWEN_IMAGE)
    return write_pipeline_with_lora(
        Path(root),
        pipe,
        TINY_QWEN_PIPELINE_DIR,
        qwen_image_lora("qwen-image-lora", pipe.transformer),
        TINY_QWEN_LORA_FILE,
        metadata={"ss_network_module": "networks.lora_qwen_image"},
    )


def random_qwen_image_pipeline(
    architecture: QwenImageArchitecture, dtype: torch.dtype = torch.float32
) -> QwenImageEditPlusPipeline:
    """A seeded, randomly initialised Qwen-Image-Edit-Plus-layout pipeline.

    ``dtype`` is the dtype the modules are built in (bfloat16 for the
    full-size benchmark model, which would not fit twice in float32).
    """
    tokenizer = qwen_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        torch.manual_seed(_seed_for("qwen-image-transformer"))
        transformer = QwenImageTransformer2DModel(**architecture.transformer)
        torch.manual_seed(_seed_for("qwen-image-vae"))
        vae = AutoencoderKLQwenImage(**architecture.vae)
        torch.manual_seed(_seed_for("qwen-image-text_encoder"))
        text_encoder = Qwen2_5_VLForConditionalGeneration(
            _text_encoder_config(tokenizer, architecture)
        )
    finally:
        torch.set_default_dtype(previous)
    return QwenImageEditPlusPipeline(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessor(),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
        ),
        scheduler=qwen_image_scheduler(),
    )


def qwen_tokenizer() -> Qwen2Tokenizer:
    """Qwen2's byte-level BPE over the 256 byte characters (no merges: one token
    per byte) and Qwen2.5-VL's special tokens, which are never split."""
    characters = sorted(ByteLevel.alphabet())
    tokenizer = Qwen2Tokenizer(
        vocab={character: index for index, character in enumerate(characters)},
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=32768,
    )
    # Added first, so their ids follow the released order; then named.
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def qwen_image_scheduler() -> FlowMatchEulerDiscreteScheduler:
    """Qwen-Image's own ``scheduler/scheduler_config.json``: flow matching with a
    shift that grows with the image's token count, stretched to end at 0.02."""
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
        invert_sigmas=False,
        stochastic_sampling=False,
        use_karras_sigmas=False,
        use_exponential_sigmas=False,
        use_beta_sigmas=False,
    )


def qwen_image_lora(
    seed: str, transformer: QwenImageTransformer2DModel
) -> dict[str, torch.Tensor]:
    """A rank-4 LoRA on every block's attention and MLP projections, in the
    kohya/musubi-tuner layout of Qwen-Image LoRAs (``lora_unet_`` + the module
    path with underscores; ``lora_down``/``lora_up``/``alpha``)."""
    return lora_weights(
        torch.Generator().manual_seed(_seed_for(seed)),
        (
            (f"lora_unet_{name.replace('.', '_')}", module)
            for name, module in transformer.named_modules()
            if name.startswith("transformer_blocks.")
            and isinstance(module, torch.nn.Linear)
            and any(part in name for part in (".attn.", "_mlp."))
        ),
    )


def _text_encoder_config(
    tokenizer: Qwen2Tokenizer, architecture: QwenImageArchitecture
) -> Qwen2_5_VLConfig:
    ids = dict(
        zip(
            SPECIAL_TOKENS,
            tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)),
            strict=True,
        )
    )
    vocab_size = max(architecture.vocab_size, len(tokenizer))
    return Qwen2_5_VLConfig(
        text_config={
            **architecture.text,
            "vocab_size": vocab_size,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
        },
        vision_config=architecture.vision,
        vocab_size=vocab_size,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
