"""Weights as downloaded: an fp16-only download through ``variant``, and an
external VAE in place of the model's own, both equal to raw diffusers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from generation.engine.config import EngineConfig, ModelSpec, model_catalog
from generation.engine.errors import ModelNotFound
from generation.engine.requests import GenerationRequest, Method
from generation.engine.runner import Engine
from generation.engine.tiny_model import TINY

SEED = 99


def request(model: str) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        prompt="a portrait",
        method=Method.TEXT,
        steps=2,
        width=64,
        height=64,
        seed=SEED,
    )


def raw_images(pipe: StableDiffusionPipeline) -> list[np.ndarray]:
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a portrait",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images
    return [np.asarray(image) for image in images]


def with_models(config: EngineConfig, root: Path, *specs: ModelSpec) -> Engine:
    return Engine(
        replace(
            config,
            models={**config.models, **{spec.key: spec for spec in specs}},
            model_roots=[*config.model_roots, root],
        )
    )


def test_the_catalog_reads_variant_and_vae():
    spec = model_catalog(
        {"xl": {"source": "a/b", "variant": "fp16", "vae": "c/d"}},
        tiny_model_dir="unused",
    )["xl"]
    assert (spec.variant, spec.vae) == ("fp16", "c/d")


def test_an_fp16_only_download_loads_with_its_variant(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    folder = tmp_path / "fp16-only"
    StableDiffusionPipeline.from_pretrained(tiny_model_root / "sd15").save_pretrained(
        folder, variant="fp16"
    )
    assert (folder / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    engine = with_models(
        engine_config,
        tmp_path,
        ModelSpec(key="plain", source=str(folder)),
        ModelSpec(key="fp16", source=str(folder), variant="fp16"),
    )
    with pytest.raises(ModelNotFound, match="Could not load the model"):
        engine.generate(request("plain"))
    result = engine.generate(request("fp16"))
    raw = raw_images(StableDiffusionPipeline.from_pretrained(folder, variant="fp16"))
    assert all(
        np.array_equal(np.asarray(mine), theirs)
        for mine, theirs in zip(result.images, raw, strict=True)
    )
    assert result.snapshot["model"]["variant"] == "fp16"


def test_an_external_vae_replaces_the_models_own(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    torch.manual_seed(5)
    AutoencoderKL(in_channels=3, out_channels=3, **TINY.vae).save_pretrained(
        tmp_path / "vae"
    )
    source = str(tiny_model_root / "sd15")
    engine = with_models(
        engine_config,
        tmp_path,
        ModelSpec(key="own", source=source),
        ModelSpec(key="other-vae", source=source, vae=str(tmp_path / "vae")),
    )
    result = engine.generate(request("other-vae"))
    raw = raw_images(
        StableDiffusionPipeline.from_pretrained(
            source, vae=AutoencoderKL.from_pretrained(tmp_path / "vae")
        )
    )
    assert all(
        np.array_equal(np.asarray(mine), theirs)
        for mine, theirs in zip(result.images, raw, strict=True)
    )
    own = engine.generate(request("own"))
    assert not np.array_equal(np.asarray(own.images[0]), raw[0])
    vae = result.snapshot["model"]["vae"]
    assert vae["source"] == str((tmp_path / "vae").resolve())
    assert len(vae["sha256"]) == 64
