"""Live previews: the families' latent-to-RGB maps, the throttle, and previews
made during real runs on the tiny models (approximate and tiny autoencoder),
which leave the output's pixels as they are."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generation.engine.config import PreviewConfig, tiny_engine_config
from generation.engine.families import SD15, SDXL
from generation.engine.preview import PreviewThrottle, approximate_rgb
from generation.engine.requests import GenerationRequest, Method, ReferenceInput
from generation.engine.runner import Engine
from generation.engine.vocabulary import PreviewMethod, ProgressPhase

SIZE = 64


def make_request(**overrides) -> GenerationRequest:
    values = {
        "model": "tiny-sd15",
        "prompt": "a persona",
        "method": Method.TEXT,
        "steps": 8,
        "width": SIZE,
        "height": SIZE,
        "seed": 3,
    }
    return GenerationRequest(**{**values, **overrides})


@pytest.mark.parametrize("family_row", [SD15, SDXL], ids=lambda row: row.key)
def test_the_approximate_preview_is_the_familys_linear_map(family_row):
    latents = torch.zeros(2, 4, 3, 5)
    latents[0, 1, 0, 0] = 1.0  # channel 1 only, at the top-left pixel
    latents[0, 3, 2, 4] = -0.5  # channel 3, at the bottom-right pixel
    image = approximate_rgb(latents, family_row)
    pixels = np.asarray(image).astype(float)
    assert image.size == (5, 3)
    factors = np.array(family_row.latent_rgb.factors)
    expected_top_left = (np.clip(factors[1], -1, 1) + 1) * 127.5
    expected_bottom_right = (np.clip(-0.5 * factors[3], -1, 1) + 1) * 127.5
    assert np.abs(pixels[0, 0] - expected_top_left).max() <= 0.5
    assert np.abs(pixels[2, 4] - expected_bottom_right).max() <= 0.5
    assert (pixels[1, 1] == 128).all()  # zero latents are mid grey


def test_the_two_families_have_different_maps():
    assert SD15.latent_rgb.factors != SDXL.latent_rgb.factors
    assert SD15.latent_rgb.factors[0] == (0.298, 0.207, 0.208)


def test_latents_of_another_shape_have_no_approximate_preview():
    assert approximate_rgb(torch.zeros(1, 16, 4, 4), SD15) is None
    assert approximate_rgb(torch.zeros(1, 64, 16), SD15) is None


def test_the_throttle_waits_for_every_n_steps_and_the_interval_never_the_last():
    now = [0.0]
    throttle = PreviewThrottle(
        every_steps=2, min_interval_seconds=1.0, clock=lambda: now[0]
    )
    due = []
    for step in range(1, 11):
        now[0] += 0.4  # 0.4 s per step
        if throttle.due(step, 10):
            due.append(step)
    # Steps 2, 4, 6, 8 and 10 are candidates: 4 and 8 come only 0.8 s after
    # the last preview, and 10 is the last step.
    assert due == [2, 6]
    assert not PreviewThrottle(every_steps=1, min_interval_seconds=0).due(10, 10)


def test_a_preview_config_refuses_unknown_methods_and_families():
    with pytest.raises(ValueError, match="choose one of: off, approx"):
        PreviewConfig(method="sharp")
    with pytest.raises(ValueError, match="give 1 or more"):
        PreviewConfig(every_steps=0)
    with pytest.raises(Exception, match="flux"):
        PreviewConfig(tiny_autoencoders={"flux": "/nowhere"})


def _engine(root: Path, **preview) -> Engine:
    config = tiny_engine_config(root)
    config.preview = PreviewConfig(min_interval_seconds=0, **preview)
    return Engine(config)


def test_a_run_reports_its_phases_and_previews_every_n_steps_without_changing_pixels(
    tiny_model_root,
):
    engine = _engine(tiny_model_root, every_steps=3)
    phases, previews, totals = [], [], set()
    result = engine.generate(
        make_request(),
        on_step=lambda step, total: totals.add(total),
        on_phase=phases.append,
        on_preview=lambda step, total, image: previews.append((step, total, image)),
    )
    assert phases == [
        ProgressPhase.PREPARING,
        ProgressPhase.LOADING,
        ProgressPhase.DENOISING,
    ]
    # (The tiny model's scheduler runs a step more than asked: 9 for 8.)
    (total,) = totals
    expected = [(step, total) for step in range(3, total, 3)]
    assert [(step, total) for step, total, _ in previews] == expected
    assert len(expected) >= 2
    assert all(image.size == (SIZE // 8, SIZE // 8) for *_, image in previews)
    plain = engine.generate(make_request())
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(plain.images[0]))


def test_previews_off_make_none(tiny_model_root):
    engine = _engine(tiny_model_root, method=PreviewMethod.OFF, every_steps=1)
    previews = []
    engine.generate(make_request(steps=3), on_preview=lambda *args: previews.append(1))
    assert previews == []


def test_an_sdxl_run_previews_through_the_sdxl_map(tiny_model_root):
    engine = _engine(tiny_model_root, every_steps=2)
    previews = []
    engine.generate(
        make_request(model="tiny-sdxl", steps=4),
        on_preview=lambda step, total, image: previews.append((step, image)),
    )
    assert [step for step, _ in previews] == [2]
    assert previews[0][1].size == (SIZE // 8, SIZE // 8)


@pytest.fixture(scope="module")
def tiny_autoencoder(tmp_path_factory) -> Path:
    """A random-weight AutoencoderTiny (TAESD's architecture, narrower)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("taesd")
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
    ).save_pretrained(folder)
    return folder


def test_a_configured_tiny_autoencoder_makes_full_size_previews(
    tiny_model_root, tiny_autoencoder
):
    engine = _engine(
        tiny_model_root,
        method=PreviewMethod.TINY_AUTOENCODER,
        every_steps=2,
        tiny_autoencoders={"sd15": str(tiny_autoencoder)},
    )
    previews = []
    engine.generate(
        make_request(steps=4),
        on_preview=lambda step, total, image: previews.append(image),
    )
    assert previews
    assert all(image.size == (SIZE, SIZE) for image in previews)
    # SDXL has no tiny autoencoder configured: the approximate map serves it.
    previews.clear()
    engine.generate(
        make_request(model="tiny-sdxl", steps=4),
        on_preview=lambda step, total, image: previews.append(image),
    )
    assert previews[0].size == (SIZE // 8, SIZE // 8)


def test_a_broken_tiny_autoencoder_folder_falls_back_to_the_map(
    tiny_model_root, tmp_path
):
    engine = _engine(
        tiny_model_root,
        method=PreviewMethod.TINY_AUTOENCODER,
        every_steps=2,
        tiny_autoencoders={"sd15": str(tmp_path / "missing")},
    )
    previews = []
    result = engine.generate(
        make_request(steps=4),
        on_preview=lambda step, total, image: previews.append(image),
    )
    assert result.images and previews[0].size == (SIZE // 8, SIZE // 8)


# --- diffusers' float32 casting warnings -----------------------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_sdxl_img2img_logs_no_float32_casting_warning(tiny_model_root):
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    collect = _Collect()
    modeling.addHandler(collect)
    try:
        engine = Engine(tiny_engine_config(tiny_model_root))
        reference = Image.new("RGB", (SIZE, SIZE), (180, 90, 40))
        for method in (Method.IMG2IMG, Method.HYBRID):
            extra = {}
            if method is Method.HYBRID:
                from generation.engine.requests import ControlUnitInput

                extra["control_units"] = [ControlUnitInput(control_type="canny")]
            engine.generate(
                make_request(
                    model="tiny-sdxl",
                    method=method,
                    steps=4,
                    references=[ReferenceInput(image=reference)],
                    **extra,
                )
            )
    finally:
        modeling.removeHandler(collect)
    assert not [m for m in collect.messages if "float32" in m], collect.messages


def test_a_float32_warning_that_names_a_module_still_passes():
    modeling = logging.getLogger("diffusers.models.modeling_utils")
    collect = _Collect()
    modeling.addHandler(collect)
    try:
        modeling.warning("There are modules in X that should be kept in float32: [].")
        modeling.warning(
            "There are modules in X that should be kept in float32: ['wo']."
        )
    finally:
        modeling.removeHandler(collect)
    assert collect.messages == [
        "There are modules in X that should be kept in float32: ['wo']."
    ]
