"""Engine.generate on the tiny model: results, progress, cancellation, out of
memory, long prompts, and every awkward request refused before any loading."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionImg2ImgPipeline
from PIL import Image

from generation.engine.config import tiny_engine_config
from generation.engine.errors import (
    GenerationCancelled,
    InvalidRequest,
    MissingWeights,
    ModelNotFound,
    OutOfMemory,
)
from generation.engine.preprocessors import make_control_image
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    Method,
    ReferenceInput,
    ReferenceRole,
    ResizeMode,
)
from generation.engine.runner import Engine
from generation.engine.snapshot import image_sha256

SIZE = 64


def noise_image(seed: int, width: int = 80, height: int = 72) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels)


def make_request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "model": "tiny-sd15",
        "prompt": "a persona",
        "steps": 4,
        "width": SIZE,
        "height": SIZE,
    }
    return GenerationRequest(**{**values, **overrides})


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    return Engine(tiny_engine_config(tiny_model_root))


@pytest.fixture
def fresh_engine(tiny_model_root: Path) -> Engine:
    return Engine(tiny_engine_config(tiny_model_root))


def test_a_result_carries_images_controls_method_timings_and_snapshot(fresh_engine):
    reference = noise_image(1)
    request = make_request(
        references=[ReferenceInput(reference, primary=True)],
        control_units=[ControlUnitInput(ControlType.CANNY)],
        appearance_locked=True,
        num_images=2,
    )
    first = fresh_engine.generate(request)
    assert first.method is Method.HYBRID
    assert "locked appearance" in first.method_reason
    assert [image.size for image in first.images] == [(SIZE, SIZE)] * 2
    assert first.registry_hit is False
    expected_canny = make_control_image(
        request.control_units[0],
        reference,
        SIZE,
        SIZE,
        annotators_dir=None,
        seg_model=None,
        offline=True,
        resize_mode=ResizeMode.CROP_AND_RESIZE,
    )
    assert first.control_images[0].control_type is ControlType.CANNY
    assert image_sha256(first.control_images[0].image) == image_sha256(expected_canny)
    timings = first.timings
    assert min(timings.load, timings.preprocess, timings.inference) > 0
    assert timings.load + timings.preprocess + timings.inference <= timings.total
    snapshot = first.snapshot
    assert snapshot["method"] == "hybrid" and snapshot["requested_method"] == "auto"
    assert snapshot["pipeline_class"] == "StableDiffusionControlNetImg2ImgPipeline"
    assert snapshot["call"]["controlnet_conditioning_scale"] == 1.0
    assert snapshot["call"]["strength"] == request.strength
    assert snapshot["control_units"][0]["controlnet"]["source"].endswith("canny")
    assert snapshot["outputs"] == [image_sha256(image) for image in first.images]
    assert set(first.call_images) == {
        snapshot["call"]["image"]["pixel_sha256"],
        snapshot["call"]["control_image"]["pixel_sha256"],
    }
    assert any("images are noise" in note for note in first.notes)
    assert fresh_engine.generate(request).registry_hit is True


def test_choose_method_reports_the_auto_choice_without_loading(fresh_engine):
    request = make_request(references=[ReferenceInput(noise_image(2))])
    method, reason = fresh_engine.choose_method(request)
    assert method is Method.TEXT
    assert "appearance not locked" in reason
    face = make_request(references=[ReferenceInput(noise_image(2), ReferenceRole.FACE)])
    assert fresh_engine.choose_method(face)[0] is Method.IP_ADAPTER
    assert fresh_engine.registry.stats()["loads"] == 0


def test_progress_is_reported_for_every_denoising_step(engine):
    steps: list[tuple[int, int]] = []
    engine.generate(
        make_request(
            method=Method.IMG2IMG,
            references=[ReferenceInput(noise_image(3))],
            steps=4,
            strength=0.5,
            scheduler="EulerDiscreteScheduler",  # one UNet call per step
        ),
        on_step=lambda step, total: steps.append((step, total)),
    )
    assert steps == [(1, 2), (2, 2)]


def test_cancelling_mid_run_stops_the_job(engine):
    steps: list[int] = []
    with pytest.raises(GenerationCancelled, match="after step 1 of "):
        engine.generate(
            make_request(method=Method.TEXT),
            on_step=lambda step, total: steps.append(step),
            should_cancel=lambda: bool(steps),
        )
    assert steps == [1]


def test_cancelling_before_the_start_runs_nothing(engine):
    steps: list[int] = []
    with pytest.raises(GenerationCancelled, match="before it started"):
        engine.generate(
            make_request(method=Method.TEXT),
            on_step=lambda step, total: steps.append(step),
            should_cancel=lambda: True,
        )
    assert steps == []


def test_running_out_of_device_memory_is_transient_and_shrinks_the_footprint(
    fresh_engine,
):
    def out_of_memory(step: int, total: int) -> None:
        # The device's error, raised from inside the pipeline's denoising loop.
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    with pytest.raises(OutOfMemory) as error:
        fresh_engine.generate(make_request(method=Method.TEXT), on_step=out_of_memory)
    assert error.value.permanent is False
    footprint = fresh_engine.registry.footprint
    assert footprint.attention_slicing and footprint.vae_tiling
    assert fresh_engine.generate(make_request(method=Method.TEXT)).images


def test_a_long_prompt_is_chunked_not_truncated(engine):
    prompt = ", ".join(f"detail number {index}" for index in range(60))
    short = engine.generate(make_request(method=Method.TEXT, prompt=prompt[:40]))
    long = engine.generate(make_request(method=Method.TEXT, prompt=prompt))
    encoding = long.snapshot["prompt_encoding"]
    assert encoding["chunks"] > 1 and encoding["truncated"] is False
    assert encoding["prompt_tokens"] > 75
    assert "prompt_embeds" in long.snapshot["call"]
    assert "prompt" not in long.snapshot["call"]
    assert any("encoded in" in note for note in long.notes)
    assert short.snapshot["call"]["prompt"] == prompt[:40]
    assert short.snapshot["prompt_encoding"]["chunks"] == 1


def test_the_strength_rule_matches_where_diffusers_itself_fails(
    engine, tiny_model_root
):
    reference = noise_image(4, SIZE, SIZE)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_model_root / "sd15")
    pipe.set_progress_bar_config(disable=True)
    # With one timestep per step (PNDM has an extra one) diffusers itself fails
    # on zero denoising steps, deep inside the UNet with an empty batch.
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    with pytest.raises((ValueError, RuntimeError)):
        pipe("x", image=reference, num_inference_steps=3, strength=0.33)
    request = make_request(
        method=Method.IMG2IMG,
        references=[ReferenceInput(reference)],
        steps=3,
        scheduler="EulerDiscreteScheduler",
    )
    with pytest.raises(InvalidRequest, match="gives 0 denoising steps"):
        engine.validate(GenerationRequest(**{**vars(request), "strength": 0.33}))
    steps: list[int] = []
    engine.generate(
        GenerationRequest(**{**vars(request), "strength": 0.34}),
        on_step=lambda step, total: steps.append(total),
    )
    assert steps == [1]


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (
            {"method": Method.IMG2IMG, "steps": 4, "strength": 0.2},
            InvalidRequest,
            "gives 0 denoising steps",
        ),
        ({"width": 100}, InvalidRequest, "not a multiple of 8"),
        (
            {"method": Method.IMG2IMG, "references": []},
            InvalidRequest,
            "needs a reference image",
        ),
        ({"model": "sd-xl"}, ModelNotFound, "Unknown model"),
        (
            {"control_units": [ControlUnitInput(ControlType.OPENPOSE)]},
            MissingWeights,
            "body_pose_model.pth",
        ),
    ],
)
def test_awkward_requests_fail_before_any_model_is_loaded(
    fresh_engine, overrides, error, message
):
    request = make_request(
        **{"references": [ReferenceInput(noise_image(5))], **overrides}
    )
    with pytest.raises(error, match=message):
        fresh_engine.generate(request)
    stats = fresh_engine.registry.stats()
    assert stats["loads"] == stats["controlnet_loads"] == 0
