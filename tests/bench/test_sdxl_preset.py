"""The ``sdxl`` benchmark preset: SDXL base 1.0's real configurations.

Its weights are about 7 GB, written for a GPU; here the configurations are
built on the meta device (shapes without data) and their parameter counts
compared with the published model's, and the same writer runs at the tiny
SDXL sizes through the engine.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from benchmarks.presets import PRESETS, SDXL, SMALL
from benchmarks.random_model import BenchModel, write_random_model
from generation.engine.families import SDXL as SDXL_FAMILY
from generation.engine.requests import ControlType, GenerationRequest, Method
from generation.engine.runner import Engine
from generation.engine.sources import model_traits, resolve_source
from generation.engine.tiny_sdxl import TINY_SDXL

# stabilityai/stable-diffusion-xl-base-1.0 (its own tokenizers' vocabulary,
# 49408, for the text encoders' counts; the preset keeps the byte-level one).
CLIP_VOCABULARY = 49408
PUBLISHED = {
    "unet": 2_567_463_684,
    "vae": 83_653_863,
    "text_encoder": 123_060_480,
    "text_encoder_2": 694_659_840,
}


def parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def text_config(sizes: dict) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=CLIP_VOCABULARY, max_position_embeddings=77, **sizes
    )


def test_the_sdxl_preset_has_sdxl_base_1_0s_configurations():
    preset = PRESETS["sdxl"]
    assert preset.model is SDXL and SDXL.family is SDXL_FAMILY
    assert (preset.width, preset.height) == (1024, 1024)
    assert SDXL.weights_dtype == "float16"
    architecture = SDXL.architecture
    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **architecture.unet)
        vae = AutoencoderKL(in_channels=3, out_channels=3, **architecture.vae)
        text_encoder = CLIPTextModel(text_config(architecture.text_encoder))
        text_encoder_2 = CLIPTextModelWithProjection(
            text_config(architecture.text_encoder_2)
        )
        controlnet = ControlNetModel.from_unet(
            unet,
            conditioning_embedding_out_channels=(
                architecture.controlnet_conditioning_channels
            ),
        )
        image_encoder = CLIPVisionModelWithProjection(
            CLIPVisionConfig(image_size=224, patch_size=14, **SDXL.image_encoder)
        )
    counts = {
        "unet": parameters(unet),
        "vae": parameters(vae),
        "text_encoder": parameters(text_encoder),
        "text_encoder_2": parameters(text_encoder_2),
    }
    assert counts == PUBLISHED
    # The pooled projection and the size conditioning fit together as in SDXL.
    assert (
        6 * architecture.unet["addition_time_embed_dim"]
        + architecture.text_encoder_2["projection_dim"]
        == architecture.unet["projection_class_embeddings_input_dim"]
    )
    assert unet.config.cross_attention_dim == (
        architecture.text_encoder["hidden_size"]
        + architecture.text_encoder_2["hidden_size"]
    )
    # A full SDXL ControlNet (diffusers/controlnet-canny-sdxl-1.0: 1.25 B).
    assert 1.2e9 < parameters(controlnet) < 1.3e9
    # OpenCLIP ViT-H/14, h94/IP-Adapter's models/image_encoder (632 M).
    assert 6.3e8 < parameters(image_encoder) < 6.4e8


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_each_gpu_preset_is_a_real_family_at_its_native_size(name):
    preset = PRESETS[name]
    assert preset.width == preset.model.family.default_size


def test_the_sdxl_writer_at_tiny_sizes_gives_a_model_the_engine_runs(tmp_path: Path):
    """The preset's own writer and configuration, at the tiny SDXL sizes."""
    tiny = BenchModel(architecture=TINY_SDXL, image_encoder=SMALL.image_encoder)
    preset = replace(PRESETS["sdxl"], model=tiny, width=64, height=64)
    config = preset.write_model(tmp_path / "model")
    assert write_random_model(tiny, tmp_path / "model") == tmp_path / "model"
    assert list(config.models) == [preset.model_key]
    spec = config.models[preset.model_key]
    source = resolve_source(spec.source, config)
    assert model_traits(source).family is SDXL_FAMILY
    assert sorted(config.controlnets) == sorted(
        t.value for t in (ControlType.CANNY, ControlType.DEPTH, ControlType.SCRIBBLE)
    )
    assert (
        tmp_path
        / "model"
        / "ip-adapter"
        / "sdxl_models"
        / "ip-adapter_sdxl_vit-h.safetensors"
    ).is_file()
    assert config.ip_adapter.subfolder == "sdxl_models"
    result = Engine(config).generate(
        GenerationRequest(
            model=preset.model_key,
            prompt="a portrait",
            method=Method.TEXT,
            steps=2,
            width=64,
            height=64,
            seed=1,
        )
    )
    assert result.snapshot["pipeline_class"] == "StableDiffusionXLPipeline"
    assert result.images[0].size == (64, 64)
