"""Inpainting through the engine gives exactly what raw diffusers gives.

The family's inpaint pipeline, derived from the loaded base with ``from_pipe``,
runs on the tiny SD 1.5 and SDXL models; the same region, mask and seed go
through a diffusers inpaint pipeline built here with ``from_pretrained``, the
crop, feathering and paste done here with PIL alone. Every pixel outside the
feathered mask stays the original's, and the snapshot replays the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

from generation.engine.config import tiny_engine_config
from generation.engine.errors import InvalidRequest
from generation.engine.families import FAMILIES
from generation.engine.inpaint import feather_mask, masked_box, paste_back
from generation.engine.requests import InpaintRequest
from generation.engine.runner import Engine
from generation.engine.vocabulary import TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY

SEED = 777
STEPS = 3
SIZE = 64
STRENGTH = 0.75
GUIDANCE = 6.0
PROMPT = "a red hat"
NEGATIVE = "blurry"
FOLDERS = {TINY_MODEL_KEY: "sd15", TINY_SDXL_MODEL_KEY: "sdxl"}


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    return Engine(tiny_engine_config(tiny_model_root))


def photo(size: int = 128) -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((size, size))


def rectangle_mask(size: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return mask


def make_request(**overrides: Any) -> InpaintRequest:
    values: dict[str, Any] = {
        "image": photo(),
        "mask": rectangle_mask(128, (40, 48, 79, 87)),
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "strength": STRENGTH,
        "mask_blur": 4,
        "only_masked_padding": 8,
        "size": SIZE,
    }
    return InpaintRequest(**{**values, **overrides})


def raw_inpaint(
    root: Path,
    model: str,
    image,
    mask,
    width: int,
    height: int,
    setup: Any = None,
    **extra: Any,
):
    """The inpaint call a person would make with diffusers alone (``setup``
    may load adapters on the pipeline first)."""
    import diffusers
    import torch

    row = FAMILIES[FOLDERS[model]]
    pipe = getattr(diffusers, row.inpaint_pipeline_class).from_pretrained(
        root / FOLDERS[model], dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    if setup is not None:
        setup(pipe)
    if row.size_conditioning:
        extra |= {
            "original_size": (height, width),
            "target_size": (height, width),
            "crops_coords_top_left": (0, 0),
        }
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        image=image,
        mask_image=mask,
        strength=STRENGTH,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        width=width,
        height=height,
        generator=torch.Generator("cpu").manual_seed(SEED),
        **extra,
    ).images[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def unchanged_outside(before: Image.Image, after: Image.Image, feathered) -> None:
    outside = np.asarray(feathered) == 0
    assert outside.any()
    assert np.array_equal(pixels(before)[outside], pixels(after)[outside])


@pytest.mark.parametrize("model", [TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY])
def test_only_masked_inpaint_equals_raw_diffusers_and_replays(
    engine, tiny_model_root, model
):
    request = make_request(model=model)
    result = engine.inpaint(request)

    # The region: the feathered mask's box with its padding, square, in the image.
    left, top, right, bottom = result.box
    assert right - left == bottom - top
    assert left <= 40 - 8 and top <= 48 - 8 and right >= 80 + 8 and bottom >= 88 + 8
    # The same crop, feathering and paste, done with PIL alone.
    feathered = (
        request.mask.point(lambda v: 255 if v else 0)
        .convert("L")
        .filter(ImageFilter.GaussianBlur(4))
    )
    assert np.array_equal(np.asarray(feathered), np.asarray(result.feathered_mask))
    crop = photo().crop(result.box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    crop_mask = feathered.crop(result.box).resize(
        (SIZE, SIZE), Image.Resampling.LANCZOS
    )
    raw = raw_inpaint(tiny_model_root, model, crop, crop_mask, SIZE, SIZE)
    patch = raw.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    expected = photo()
    expected.paste(
        Image.composite(patch, photo().crop(result.box), feathered.crop(result.box)),
        (left, top),
    )
    assert np.array_equal(pixels(result.image), pixels(expected))
    assert not np.array_equal(pixels(result.image), pixels(photo()))
    unchanged_outside(photo(), result.image, feathered)
    assert np.array_equal(pixels(result.before), pixels(photo()))

    snapshot = result.snapshot
    assert snapshot["kind"] == "inpaint"
    assert snapshot["pipeline_class"] == FAMILIES[FOLDERS[model]].inpaint_pipeline_class
    assert snapshot["paste"]["box"] == list(result.box)
    assert snapshot["inpaint"]["mask_blur"] == 4
    assert np.array_equal(pixels(replay(result)), pixels(result.image))


def test_whole_image_inpaint_equals_raw_diffusers(engine, tiny_model_root):
    request = make_request(model=TINY_MODEL_KEY, only_masked=False, mask_blur=0)
    result = engine.inpaint(request)
    assert result.box == (0, 0, 128, 128)
    mask = request.mask
    raw = raw_inpaint(tiny_model_root, TINY_MODEL_KEY, photo(), mask, 128, 128)
    expected = Image.composite(raw, photo(), mask)
    assert np.array_equal(pixels(result.image), pixels(expected))
    unchanged_outside(photo(), result.image, mask)
    assert np.array_equal(pixels(replay(result)), pixels(result.image))


def replay(result) -> Image.Image:
    """The snapshot's call with raw diffusers, pasted where the snapshot says."""
    import diffusers
    import torch

    snapshot = result.snapshot
    pipe = getattr(diffusers, snapshot["pipeline_class"]).from_pretrained(
        snapshot["model"]["source"], dtype=getattr(torch, snapshot["dtype"])
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = getattr(diffusers, snapshot["scheduler"]["class"]).from_config(
        snapshot["scheduler"]["config"]
    )
    call = dict(snapshot["call"])
    for name in ("image", "mask_image"):
        call[name] = result.call_images[call[name]["pixel_sha256"]]
    for name in ("original_size", "target_size", "crops_coords_top_left"):
        if name in call:
            call[name] = tuple(call[name])
    call["generator"] = torch.Generator(snapshot["generator"]["device"]).manual_seed(
        snapshot["generator"]["seed"]
    )
    output = pipe(**call).images[0]
    paste = snapshot["paste"]
    feathered = result.call_images[paste["feathered_mask"]["pixel_sha256"]]
    return paste_back(result.before, output, tuple(paste["box"]), feathered)


def test_feathered_mask_and_box_geometry():
    mask = rectangle_mask(128, (40, 48, 79, 87))
    hard = feather_mask(mask, 0)
    assert hard.getbbox() == (40, 48, 80, 88)
    soft = feather_mask(mask, 4)
    assert soft.getbbox()[0] < 40 and np.asarray(soft)[68, 60] == 255
    assert masked_box(hard, 8, 1.0) == (32, 40, 88, 96)
    # Near the edge the box stays inside the image and keeps the aspect.
    corner = feather_mask(rectangle_mask(128, (0, 0, 20, 9)), 0)
    assert masked_box(corner, 4, 1.0) == (0, 0, 25, 25)


def test_paste_back_keeps_every_pixel_outside_the_mask():
    original = photo()
    mask = feather_mask(rectangle_mask(128, (40, 48, 79, 87)), 3)
    box = masked_box(mask, 8, 1.0)
    red = Image.new("RGB", (64, 64), (255, 0, 0))
    pasted = paste_back(original, red, box, mask)
    unchanged_outside(original, pasted, mask)
    assert tuple(pixels(pasted)[68, 60]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"mask": Image.new("L", (64, 64), 255)}, "draw the mask on the image"),
        ({"mask": Image.new("L", (128, 128), 0)}, "The mask is empty"),
        ({"strength": 1.5}, "Inpaint strength"),
        ({"mask_blur": 500}, "Mask blur"),
        ({"only_masked_padding": -1}, "padding"),
        ({"size": 100}, "steps of 8"),
        (
            {
                "only_masked": False,
                "image": photo(100),
                "mask": Image.new("L", (100, 100), 9),
            },
            "steps of 8",
        ),
        ({"model": "nope"}, "Unknown model"),
    ],
)
def test_bad_inpaint_requests_are_refused_with_the_reason(engine, overrides, message):
    from generation.engine.errors import ModelNotFound

    with pytest.raises((InvalidRequest, ModelNotFound), match=message):
        engine.inpaint(make_request(**{"model": TINY_MODEL_KEY, **overrides}))


@pytest.mark.parametrize("model", [TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY])
def test_inpaint_pipeline_shares_the_loaded_base_modules(engine, model):
    from generation.engine.vocabulary import Method

    registry = engine.registry
    text, _ = registry.pipeline(model, Method.TEXT)
    inpaint, hit = registry.inpaint_pipeline(model)
    assert hit
    assert type(inpaint).__name__ == FAMILIES[FOLDERS[model]].inpaint_pipeline_class
    assert inpaint.unet is text.unet and inpaint.vae is text.vae
    assert inpaint.scheduler is not text.scheduler
