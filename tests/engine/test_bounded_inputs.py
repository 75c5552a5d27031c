"""Whatever reaches a model is resized to its working size first: extreme (but
accepted) reference shapes through every method and the consistency score."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from generation.engine.errors import InvalidRequest
from generation.engine.preprocessors import MAX_DETECT_RESOLUTION, make_control_image
from generation.engine.requests import ControlType, ControlUnitInput
from generation.engine.resize import (
    IMAGE_ENCODER_SIDE,
    fit_for_image_encoder,
    image_encoder_side,
)
from studio.conf import BASE_DIR, documented_defaults

DEFAULTS = documented_defaults()
SIDE = DEFAULTS["MAX_UPLOAD_SIDE"]
RATIO = int(DEFAULTS["MAX_UPLOAD_ASPECT_RATIO"])
# The extreme shapes the upload checks accept: the longest side at the widest
# ratio both ways, the smallest at that ratio, and the largest 8-bit RGB image
# the check's memory budget lets through (about 17 MP; 4096 x 4096 is 16.8).
SHAPES = [(SIDE, SIDE // RATIO), (SIDE // RATIO, SIDE), (RATIO, 1), (4096, 4096)]
# What a run may add to the peak memory beyond the reference's own pixels (a
# converted copy and a crop while fitting): generous against noise, far below
# the gigabytes an unbounded encoder input asked for.
MARGIN_BYTES = 96 * 1024 * 1024


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_an_image_encoder_gets_its_own_square_whatever_the_shape(shape):
    fitted = fit_for_image_encoder(Image.new("RGB", shape, (10, 20, 30)))

    assert fitted.size == (IMAGE_ENCODER_SIDE, IMAGE_ENCODER_SIDE)
    assert fitted.mode == "RGB"


def test_the_encoder_side_comes_from_its_processor(tiny_model_root):
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(
        tiny_model_root / "sd15" / "feature_extractor"
    )

    assert image_encoder_side(processor) == processor.crop_size["height"]
    assert image_encoder_side(None) == IMAGE_ENCODER_SIDE


@pytest.mark.parametrize("shape", [(80, 72), (300, 200), (100, 301), (64, 64)])
def test_the_encoder_input_is_what_clips_own_processor_would_make(
    tiny_model_root, shape
):
    import numpy as np
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(
        tiny_model_root / "sd15" / "feature_extractor"
    )
    pixels = np.random.default_rng(0).integers(0, 256, (*shape[::-1], 3), np.uint8)
    image = Image.fromarray(pixels)

    direct = processor(images=[image], return_tensors="np").pixel_values
    fitted = processor(
        images=[fit_for_image_encoder(image)], return_tensors="np"
    ).pixel_values

    assert np.array_equal(direct, fitted)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_a_control_map_is_made_at_the_generation_size(shape):
    unit = ControlUnitInput(ControlType.CANNY)

    control = make_control_image(
        unit,
        Image.new("RGB", shape, (200, 10, 10)),
        64,
        48,
        annotators_dir=None,
        seg_model=None,
        offline=True,
    )

    assert control.size == (64, 48)


def test_a_detection_resolution_past_the_working_size_is_refused():
    unit = ControlUnitInput(
        ControlType.CANNY,
        preprocessor_options={"detect_resolution": MAX_DETECT_RESOLUTION + 1},
    )

    with pytest.raises(InvalidRequest) as refused:
        make_control_image(
            unit,
            Image.new("RGB", (64, 64)),
            64,
            64,
            annotators_dir=None,
            seg_model=None,
            offline=True,
        )

    assert f"at most {MAX_DETECT_RESOLUTION}" in str(refused.value)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: "x".join(map(str, shape)))
def test_every_method_and_the_score_stay_within_their_working_memory(
    tiny_model_root, shape
):
    probe = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.engine.bounded_inputs_probe",
            str(tiny_model_root),
            *map(str, shape),
        ],
        cwd=BASE_DIR,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    figures = json.loads(probe.stdout.strip().splitlines()[-1])

    added = figures["peak_after"] - figures["peak_before"]

    assert added <= 2 * figures["image_bytes"] + MARGIN_BYTES, figures
