"""The SDXL refiner: text and img2img as diffusers' "ensemble of expert
denoisers" (the base to ``denoising_end``, the refiner from ``denoising_start``
on its latents), equal to raw diffusers on the tiny SDXL model and its tiny
refiner, recorded in the snapshot and replayed exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from generation.engine.config import (
    TINY_SDXL_REFINER_DIR,
    EngineConfig,
    ModelSpec,
    model_catalog,
    tiny_engine_config,
)
from generation.engine.errors import InvalidRequest
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    Method,
    ReferenceInput,
    ResizeMode,
)
from generation.engine.resize import fit_to_size
from generation.engine.runner import Engine
from generation.engine.vocabulary import TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY
from tests.engine.test_reproducibility import assert_same_pixels, noise_image

SEED = 77
STEPS = 5
SIZE = 64
SWITCH = 0.6
PROMPT = "portrait of the persona"
NEGATIVE = "blurry"
GUIDANCE = 5.0
STRENGTH = 0.8


def with_refiner(root: Path, model_key: str = TINY_SDXL_MODEL_KEY) -> EngineConfig:
    config = tiny_engine_config(root)
    spec = config.models[model_key]
    config.models = {
        **config.models,
        model_key: replace(
            spec, refiner=str(root / TINY_SDXL_REFINER_DIR), refiner_switch=SWITCH
        ),
    }
    return config


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    return Engine(with_refiner(tiny_model_root))


def make_request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "model": TINY_SDXL_MODEL_KEY,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "width": SIZE,
        "height": SIZE,
        "strength": STRENGTH,
        "method": Method.TEXT,
    }
    return GenerationRequest(**{**values, **overrides})


def generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(SEED)


def raw_ensemble(root: Path, base_cls: type, images: int = 1, **base_kwargs: Any):
    """diffusers' documented ensemble of expert denoisers, by hand."""
    base = base_cls.from_pretrained(root / "sdxl", dtype=torch.float32)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        root / TINY_SDXL_REFINER_DIR, dtype=torch.float32
    )
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    common = {
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
        "num_images_per_prompt": images,
    }
    latents = base(
        **common,
        **base_kwargs,
        denoising_end=SWITCH,
        output_type="latent",
        generator=generator(),
    ).images
    return refiner(
        **common, denoising_start=SWITCH, image=latents, generator=generator()
    ).images


def test_text_with_the_refiner_equals_the_raw_ensemble(engine, tiny_model_root):
    raw = raw_ensemble(
        tiny_model_root, StableDiffusionXLPipeline, images=2, width=SIZE, height=SIZE
    )
    steps: list[tuple[int, int]] = []
    result = engine.generate(
        make_request(num_images=2),
        on_step=lambda done, total: steps.append((done, total)),
    )
    assert_same_pixels(result.images, raw)

    snapshot = result.snapshot
    assert snapshot["call"]["denoising_end"] == SWITCH
    assert snapshot["call"]["output_type"] == "latent"
    refiner = snapshot["refiner"]
    assert refiner["pipeline_class"] == "StableDiffusionXLImg2ImgPipeline"
    assert refiner["call"]["denoising_start"] == SWITCH
    assert refiner["call"]["aesthetic_score"] == 6.0
    assert "image" not in refiner["call"]
    fingerprint = snapshot["model"]["refiner"]
    assert fingerprint["source"] == str(
        (tiny_model_root / TINY_SDXL_REFINER_DIR).resolve()
    )
    assert len(fingerprint["sha256"]) == 64
    # Progress counts on through the refiner's steps.
    done = [step for step, _ in steps]
    assert done == sorted(done) and steps[-1][0] == steps[-1][1] > STEPS * SWITCH


def test_img2img_with_the_refiner_equals_the_raw_ensemble(engine, tiny_model_root):
    reference = noise_image(11)
    raw = raw_ensemble(
        tiny_model_root,
        StableDiffusionXLImg2ImgPipeline,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.RESIZE_AND_FILL),
        strength=STRENGTH,
    )
    result = engine.generate(
        make_request(
            method=Method.IMG2IMG,
            references=[ReferenceInput(reference)],
            resize_mode=ResizeMode.RESIZE_AND_FILL,
        )
    )
    assert_same_pixels(result.images, raw)
    assert result.snapshot["refiner"]["call"]["denoising_start"] == SWITCH


def test_the_refiner_changes_the_pixels_and_a_snapshot_replays_them(
    engine, tiny_model_root
):
    refined = engine.generate(make_request())
    plain = Engine(tiny_engine_config(tiny_model_root)).generate(make_request())
    assert plain.snapshot["refiner"] is None
    assert "refiner" not in plain.snapshot["model"]
    with pytest.raises(AssertionError):
        assert_same_pixels(refined.images, plain.images)
    again = engine.generate(make_request())
    assert_same_pixels(again.images, refined.images)


def test_controlnet_jobs_are_not_refined(engine):
    unit = ControlUnitInput(ControlType.CANNY, control_image=noise_image(3, SIZE, SIZE))
    result = engine.generate(
        make_request(method=Method.CONTROLNET, control_units=[unit])
    )
    assert result.snapshot["refiner"] is None
    assert "denoising_end" not in result.snapshot["call"]


def test_a_refiner_on_an_sd15_model_is_refused(tiny_model_root):
    engine = Engine(with_refiner(tiny_model_root, TINY_MODEL_KEY))
    with pytest.raises(InvalidRequest, match="has no refiner"):
        engine.generate(make_request(model=TINY_MODEL_KEY))


def test_the_catalog_reads_the_refiner_and_checks_its_switch():
    spec = model_catalog(
        {
            "xl": {
                "source": "stabilityai/stable-diffusion-xl-base-1.0",
                "refiner": "stabilityai/stable-diffusion-xl-refiner-1.0",
                "refiner_switch": 0.75,
            }
        },
        tiny_model_dir="unused",
    )["xl"]
    assert (spec.refiner, spec.refiner_switch) == (
        "stabilityai/stable-diffusion-xl-refiner-1.0",
        0.75,
    )
    assert model_catalog({"xl": "a/b"}, tiny_model_dir="unused")["xl"].refiner is None
    for switch in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="refiner_switch"):
            ModelSpec(key="xl", source="a/b", refiner="c/d", refiner_switch=switch)


def test_the_plan_check_refuses_a_refiner_before_anything_is_queued(
    tiny_model_root: Path,
):
    from generation.engine.plan import plan_problems

    assert plan_problems(make_request(), with_refiner(tiny_model_root)) == []
    (problem,) = plan_problems(
        make_request(model=TINY_MODEL_KEY),
        with_refiner(tiny_model_root, TINY_MODEL_KEY),
    )
    assert "has no refiner" in problem.message
    missing = with_refiner(tiny_model_root)
    spec = missing.models[TINY_SDXL_MODEL_KEY]
    missing.models[TINY_SDXL_MODEL_KEY] = replace(
        spec, refiner=str(tiny_model_root / "no-such-refiner")
    )
    (problem,) = plan_problems(make_request(), missing)
    assert "no-such-refiner" in problem.message and problem.code == "model_not_found"
