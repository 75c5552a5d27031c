"""The face detailer on a real photo (scikit-image's astronaut) and the tiny
model: it finds the face, redraws only inside the feathered mask, and gives
what raw diffusers' inpaint gives on the same crop and mask, pasted the same
way; with no face the image comes back unchanged with the reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

from generation.engine.config import tiny_engine_config
from generation.engine.detailer import NO_FACE_REASON, DetailerRequest
from generation.engine.face import crop_face
from generation.engine.requests import (
    IPAdapterInput,
    LoraInput,
    ReferenceInput,
    ReferenceRole,
)
from generation.engine.resize import fit_for_image_encoder
from generation.engine.runner import Engine
from generation.engine.vocabulary import TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY
from tests.engine.test_inpaint import (
    GUIDANCE,
    NEGATIVE,
    PROMPT,
    SEED,
    SIZE,
    STEPS,
    STRENGTH,
    pixels,
    raw_inpaint,
)

SIDE = 256
BLUR = 4
PADDING = 16


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    return Engine(tiny_engine_config(tiny_model_root))


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((SIDE, SIDE))


def detailer_request(image: Image.Image, **overrides) -> DetailerRequest:
    values = {
        "model": TINY_MODEL_KEY,
        "image": image,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "strength": STRENGTH,
        "padding": PADDING,
        "mask_blur": BLUR,
        "size": SIZE,
    }
    return DetailerRequest(**{**values, **overrides})


def feathered_face_mask(face) -> Image.Image:
    """The face box in white, blurred: built here with PIL alone."""
    mask = Image.new("L", (SIDE, SIDE), 0)
    ImageDraw.Draw(mask).rectangle(
        (face.left, face.top, face.left + face.width - 1, face.top + face.height - 1),
        fill=255,
    )
    return mask.filter(ImageFilter.GaussianBlur(BLUR))


def expected_paste(astronaut, box, feathered, raw) -> Image.Image:
    left, top, right, bottom = box
    patch = raw.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    expected = astronaut.copy()
    expected.paste(
        Image.composite(patch, astronaut.crop(box), feathered.crop(box)), (left, top)
    )
    return expected


def raw_detail(
    root, astronaut, run, feathered, model=TINY_MODEL_KEY, **kwargs
) -> Image.Image:
    crop = astronaut.crop(run.box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    crop_mask = feathered.crop(run.box).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    raw = raw_inpaint(root, model, crop, crop_mask, SIZE, SIZE, **kwargs)
    return expected_paste(astronaut, run.box, feathered, raw)


@pytest.mark.parametrize("model", [TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY])
def test_detailer_redraws_the_astronauts_face_only_as_raw_diffusers_would(
    engine, tiny_model_root, astronaut, model
):
    result = engine.detail(detailer_request(astronaut, model=model))

    assert result.reason is None
    assert len(result.faces) == 1 == len(result.passes)
    face = result.faces[0]
    # The astronaut's face (not the mission patch low on her suit).
    assert 0.3 * SIDE < face.left + face.width / 2 < 0.6 * SIDE
    assert face.top + face.height / 2 < 0.45 * SIDE
    feathered = feathered_face_mask(face)
    outside = np.asarray(feathered) == 0
    assert np.array_equal(pixels(result.image)[outside], pixels(astronaut)[outside])
    assert not np.array_equal(pixels(result.image), pixels(astronaut))
    assert np.array_equal(pixels(result.before), pixels(astronaut))

    run = result.passes[0]
    left, top, right, bottom = run.box
    assert right - left == bottom - top
    assert left <= face.left - PADDING and top <= face.top - PADDING
    expected = raw_detail(tiny_model_root, astronaut, run, feathered, model)
    assert np.array_equal(pixels(result.image), pixels(expected))
    assert result.snapshot["faces"][0]["box"] == face.as_list()


def test_detailer_with_plus_face_and_lora_equals_raw_diffusers_and_resets(
    engine, tiny_model_root, astronaut
):
    lora = (tiny_model_root / "lora" / "persona.safetensors").read_bytes()
    reference = ReferenceInput(image=astronaut, role=ReferenceRole.FACE)
    result = engine.detail(
        detailer_request(
            astronaut,
            references=[reference],
            ip_adapter=IPAdapterInput(scale=0.5, face_crop=True),
            lora=LoraInput(weights=lora, scale=0.8, name="persona"),
        )
    )
    face_image, info = crop_face(astronaut)
    assert info["face_found"]

    def setup(pipe) -> None:
        import safetensors.torch

        pipe.load_ip_adapter(
            tiny_model_root / "ip-adapter",
            subfolder="models",
            weight_name="ip-adapter-plus-face_sd15.safetensors",
            image_encoder_folder="models/image_encoder",
        )
        pipe.set_ip_adapter_scale(0.5)
        pipe.load_lora_weights(safetensors.torch.load(lora), adapter_name="persona")
        pipe.set_adapters(["persona"], adapter_weights=[0.8])

    feathered = feathered_face_mask(result.faces[0])
    expected = raw_detail(
        tiny_model_root,
        astronaut,
        result.passes[0],
        feathered,
        setup=setup,
        ip_adapter_image=[[fit_for_image_encoder(face_image)]],
    )
    assert np.array_equal(pixels(result.image), pixels(expected))
    snapshot = result.passes[0].snapshot
    assert snapshot["ip_adapter"]["weight_name"].startswith("ip-adapter-plus-face")
    assert snapshot["lora"]["scale"] == 0.8

    # The adapters were for that job only: a plain pass gives the plain pixels.
    plain = engine.detail(detailer_request(astronaut))
    again = raw_detail(tiny_model_root, astronaut, plain.passes[0], feathered)
    assert np.array_equal(pixels(plain.image), pixels(again))
    assert not np.array_equal(pixels(plain.image), pixels(result.image))


def test_detailer_scores_the_identity_before_and_after(engine, astronaut):
    from generation.engine.face import analyse_faces

    embedding = analyse_faces(astronaut).embedding
    assert embedding is not None
    result = engine.detail(
        detailer_request(astronaut, reference_embeddings=[embedding])
    )
    before, after = result.identity_before, result.identity_after
    # The photo is its own reference: before the pass the distance is zero.
    assert before.scored and before.distance == pytest.approx(0.0, abs=1e-6)
    # The tiny model's noise face may or may not still be found; whatever the
    # detector says is recorded, never made up.
    assert after is not None
    assert result.snapshot["identity_before"]["status"] == "scored"
    assert result.snapshot["identity_after"]["status"] == after.status.value


def test_detailer_without_a_face_returns_the_image_unchanged_with_the_reason(
    engine,
):
    noise = Image.fromarray(
        np.random.default_rng(3).integers(0, 256, (SIDE, SIDE, 3), np.uint8)
    )
    result = engine.detail(detailer_request(noise))
    assert result.reason == NO_FACE_REASON
    assert result.faces == [] and result.passes == []
    assert np.array_equal(pixels(result.image), pixels(noise))
