"""SDXL through the engine gives exactly what raw diffusers gives, for every method.

The same pattern as test_reproducibility.py, on the tiny SDXL model: the same
inputs go through the engine and through a diffusers SDXL pipeline built here
with ``from_pretrained``; the pixels must be identical, and each engine result
replays with raw diffusers from its snapshot alone. Then the registry's sharing
and per-job state, and long prompts on both text encoders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionXLControlNetImg2ImgPipeline,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)
from diffusers.models.controlnets import MultiControlNetModel
from PIL import Image
from skimage import data

from generation.engine.config import ModelSpec, tiny_engine_config
from generation.engine.face import crop_face
from generation.engine.families import SDXL
from generation.engine.prompts import encode_long_prompt, prompt_token_ids
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    LoraInput,
    Method,
    ReferenceInput,
    ReferenceRole,
    ResizeMode,
)
from generation.engine.resize import fit_to_size
from generation.engine.runner import Engine
from generation.engine.snapshot import request_from_snapshot
from generation.engine.vocabulary import TINY_SDXL_MODEL_KEY
from tests.engine.test_reproducibility import (
    assert_same_pixels,
    noise_image,
    replay_snapshot,
)

SEED = 4321
STEPS = 3
SIZE = 64
PROMPT = "portrait of the persona, studio light"
NEGATIVE = "blurry"
GUIDANCE = 6.0
STRENGTH = 0.75


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    """One engine for the module: each case also checks that the jobs before it
    left nothing behind in the shared modules."""
    return Engine(tiny_engine_config(tiny_model_root))


@pytest.fixture(scope="module")
def lora_bytes(tiny_model_root: Path) -> bytes:
    return (tiny_model_root / "lora" / "persona-sdxl.safetensors").read_bytes()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((160, 160))


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
    }
    return GenerationRequest(**{**values, **overrides})


def raw_pipeline(root: Path, pipeline_cls: type, controlnets: tuple[str, ...] = ()):
    """The SDXL pipeline a person would build with diffusers alone."""
    components: dict[str, Any] = {}
    if controlnets:
        models = [
            ControlNetModel.from_pretrained(root / "controlnet-sdxl" / name)
            for name in controlnets
        ]
        components["controlnet"] = (
            models[0] if len(models) == 1 else MultiControlNetModel(models)
        )
    pipe = pipeline_cls.from_pretrained(
        root / "sdxl", dtype=torch.float32, **components
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def raw_call(pipe, **kwargs: Any) -> list[Image.Image]:
    return pipe(
        **{
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "generator": torch.Generator("cpu").manual_seed(SEED),
            **kwargs,
        }
    ).images


def load_ip_adapter(pipe, root: Path, weight_name: str, scale: float) -> None:
    pipe.load_ip_adapter(
        root / "ip-adapter",
        subfolder="sdxl_models",
        weight_name=weight_name,
        image_encoder_folder="models/image_encoder",
    )
    pipe.set_ip_adapter_scale(scale)


def check(engine, request, raw, lora: bytes | None = None):
    result = engine.generate(request)
    assert_same_pixels(result.images, raw)
    assert_same_pixels(replay_snapshot(result, lora), raw)
    assert result.snapshot["family"] == "sdxl"
    return result


def test_text_equals_raw_diffusers_with_the_size_conditioning_recorded(
    engine, tiny_model_root
):
    raw = raw_call(
        raw_pipeline(tiny_model_root, StableDiffusionXLPipeline),
        width=SIZE,
        height=SIZE,
        num_images_per_prompt=2,
    )
    result = check(engine, make_request(method=Method.TEXT, num_images=2), raw)
    snapshot = result.snapshot
    assert snapshot["pipeline_class"] == "StableDiffusionXLPipeline"
    assert snapshot["call"]["original_size"] == [SIZE, SIZE]
    assert snapshot["call"]["target_size"] == [SIZE, SIZE]
    assert snapshot["call"]["crops_coords_top_left"] == [0, 0]
    assert snapshot["scheduler"]["class"] == "EulerDiscreteScheduler"


def test_a_non_square_size_conditions_on_height_then_width(engine, tiny_model_root):
    raw = raw_call(
        raw_pipeline(tiny_model_root, StableDiffusionXLPipeline),
        width=96,
        height=64,
    )
    result = check(engine, make_request(method=Method.TEXT, width=96, height=64), raw)
    assert result.images[0].size == (96, 64)
    assert result.snapshot["call"]["original_size"] == [64, 96]


def test_img2img_equals_raw_diffusers(engine, tiny_model_root):
    reference = noise_image(1)
    raw = raw_call(
        raw_pipeline(tiny_model_root, StableDiffusionXLImg2ImgPipeline),
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.RESIZE_AND_FILL),
        strength=STRENGTH,
    )
    result = check(
        engine,
        make_request(
            method=Method.IMG2IMG,
            references=[ReferenceInput(reference)],
            resize_mode=ResizeMode.RESIZE_AND_FILL,
        ),
        raw,
    )
    assert result.snapshot["pipeline_class"] == "StableDiffusionXLImg2ImgPipeline"


def test_controlnet_equals_raw_diffusers(engine, tiny_model_root):
    pose = noise_image(2, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(
            tiny_model_root, StableDiffusionXLControlNetPipeline, ("openpose",)
        ),
        image=pose,
        width=SIZE,
        height=SIZE,
        controlnet_conditioning_scale=0.7,
        control_guidance_start=0.2,
        control_guidance_end=0.9,
    )
    unit = ControlUnitInput(
        ControlType.OPENPOSE,
        conditioning_scale=0.7,
        guidance_start=0.2,
        guidance_end=0.9,
        control_image=pose,
    )
    result = check(
        engine, make_request(method=Method.CONTROLNET, control_units=[unit]), raw
    )
    controlnet = result.snapshot["control_units"][0]["controlnet"]
    assert controlnet["source"].endswith("controlnet-sdxl/openpose")


def test_two_controlnets_at_once_equal_raw_multicontrolnet(engine, tiny_model_root):
    pose, edges = noise_image(3, SIZE, SIZE), noise_image(4, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(
            tiny_model_root,
            StableDiffusionXLControlNetPipeline,
            ("openpose", "canny"),
        ),
        image=[pose, edges],
        width=SIZE,
        height=SIZE,
        controlnet_conditioning_scale=[1.0, 0.4],
        control_guidance_start=[0.0, 0.3],
        control_guidance_end=[1.0, 0.7],
    )
    units = [
        ControlUnitInput(ControlType.OPENPOSE, control_image=pose),
        ControlUnitInput(
            ControlType.CANNY,
            conditioning_scale=0.4,
            guidance_start=0.3,
            guidance_end=0.7,
            control_image=edges,
        ),
    ]
    check(engine, make_request(method=Method.CONTROLNET, control_units=units), raw)


def test_hybrid_equals_raw_diffusers(engine, tiny_model_root):
    reference = noise_image(5)
    unit = ControlUnitInput(ControlType.CANNY, conditioning_scale=1.0)
    result = engine.generate(
        make_request(
            method=Method.HYBRID,
            references=[ReferenceInput(reference)],
            control_units=[unit],
        )
    )
    raw = raw_call(
        raw_pipeline(
            tiny_model_root, StableDiffusionXLControlNetImg2ImgPipeline, ("canny",)
        ),
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        control_image=result.control_images[0].image,
        width=SIZE,
        height=SIZE,
        strength=STRENGTH,
        controlnet_conditioning_scale=1.0,
    )
    assert_same_pixels(result.images, raw)
    assert_same_pixels(replay_snapshot(result, None), raw)
    assert result.snapshot["pipeline_class"] == (
        "StableDiffusionXLControlNetImg2ImgPipeline"
    )


def test_ip_adapter_with_several_references_equals_raw_diffusers(
    engine, tiny_model_root
):
    references = [noise_image(7), noise_image(8, 72, 72)]
    pipe = raw_pipeline(tiny_model_root, StableDiffusionXLPipeline)
    load_ip_adapter(pipe, tiny_model_root, "ip-adapter_sdxl_vit-h.safetensors", 0.7)
    raw = raw_call(pipe, width=SIZE, height=SIZE, ip_adapter_image=[references])
    request = make_request(
        method=Method.IP_ADAPTER,
        references=[ReferenceInput(image) for image in references],
        ip_adapter=IPAdapterInput(scale=0.7, face_crop=False, reference_indexes=[0, 1]),
    )
    result = check(engine, request, raw)
    adapter = result.snapshot["ip_adapter"]
    assert adapter["subfolder"] == "sdxl_models"
    assert adapter["weight_name"] == "ip-adapter_sdxl_vit-h.safetensors"


def test_plus_face_ip_adapter_on_hybrid_equals_raw_diffusers(
    engine, tiny_model_root, astronaut
):
    pose = noise_image(6, SIZE, SIZE)
    face, info = crop_face(astronaut)
    assert info["face_found"]
    pipe = raw_pipeline(
        tiny_model_root, StableDiffusionXLControlNetImg2ImgPipeline, ("openpose",)
    )
    load_ip_adapter(
        pipe, tiny_model_root, "ip-adapter-plus-face_sdxl_vit-h.safetensors", 0.5
    )
    raw = raw_call(
        pipe,
        image=fit_to_size(astronaut, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        control_image=pose,
        width=SIZE,
        height=SIZE,
        strength=STRENGTH,
        controlnet_conditioning_scale=0.8,
        ip_adapter_image=[[face]],
    )
    request = make_request(
        method=Method.HYBRID,
        references=[ReferenceInput(astronaut, role=ReferenceRole.FACE)],
        control_units=[
            ControlUnitInput(
                ControlType.OPENPOSE, conditioning_scale=0.8, control_image=pose
            )
        ],
        ip_adapter=IPAdapterInput(scale=0.5, face_crop=True),
    )
    check(engine, request, raw)


def test_kohya_lora_on_both_text_encoders_equals_raw_diffusers(
    engine, tiny_model_root, lora_bytes
):
    reference = noise_image(10)
    pipe = raw_pipeline(tiny_model_root, StableDiffusionXLImg2ImgPipeline)
    pipe.load_lora_weights(
        tiny_model_root / "lora",
        weight_name="persona-sdxl.safetensors",
        adapter_name="p",
    )
    assert pipe.get_list_adapters() == {
        "unet": ["p"],
        "text_encoder": ["p"],
        "text_encoder_2": ["p"],
    }
    pipe.set_adapters(["p"], adapter_weights=[0.9])
    raw = raw_call(
        pipe,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.JUST_RESIZE),
        strength=STRENGTH,
    )
    request = make_request(
        method=Method.IMG2IMG,
        references=[ReferenceInput(reference)],
        resize_mode=ResizeMode.JUST_RESIZE,
        lora=LoraInput(weights=lora_bytes, scale=0.9),
    )
    check(engine, request, raw, lora_bytes)


def test_auto_chooses_for_sdxl_by_the_same_rules(engine, tiny_model_root):
    face = noise_image(11)
    request = make_request(
        references=[ReferenceInput(face, role=ReferenceRole.FACE)],
        appearance_locked=True,
        ip_adapter=IPAdapterInput(face_crop=False),
    )
    plan = engine.plan(request)
    assert (plan.method, plan.base, plan.family) == (
        Method.IP_ADAPTER,
        Method.IMG2IMG,
        "sdxl",
    )
    assert plan.pipeline_class_name == "StableDiffusionXLImg2ImgPipeline"
    pipe = raw_pipeline(tiny_model_root, StableDiffusionXLImg2ImgPipeline)
    load_ip_adapter(pipe, tiny_model_root, "ip-adapter_sdxl_vit-h.safetensors", 0.6)
    raw = raw_call(
        pipe,
        image=fit_to_size(face, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        strength=STRENGTH,
        ip_adapter_image=[[face]],
    )
    check(engine, request, raw)


def test_every_method_shares_the_sdxl_base_modules(engine):
    registry = engine.registry
    text, _ = registry.pipeline(TINY_SDXL_MODEL_KEY, Method.TEXT)
    img2img, _ = registry.pipeline(TINY_SDXL_MODEL_KEY, Method.IMG2IMG)
    hybrid, hit = registry.pipeline(
        TINY_SDXL_MODEL_KEY, Method.HYBRID, [ControlType.CANNY]
    )
    assert hit
    assert type(hybrid) is StableDiffusionXLControlNetImg2ImgPipeline
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        assert getattr(text, name) is getattr(img2img, name) is getattr(hybrid, name)
    assert text.scheduler is not img2img.scheduler
    assert (
        engine.registry.controlnet(ControlType.CANNY, TINY_SDXL_MODEL_KEY)
        is hybrid.controlnet
    )
    loads = engine.registry.stats()["loaded"]
    assert [e["label"] for e in loads if e["kind"] == "base"].count(
        TINY_SDXL_MODEL_KEY
    ) == 1


@pytest.mark.parametrize("layers", ["ip_adapter", "lora"])
def test_an_sdxl_job_with_adapters_leaves_the_next_job_untouched(
    tiny_model_root, lora_bytes, layers
):
    reference = noise_image(12)
    plain = make_request(method=Method.IMG2IMG, references=[ReferenceInput(reference)])
    with_layers = make_request(
        method=Method.IMG2IMG,
        references=[ReferenceInput(reference)],
        ip_adapter=IPAdapterInput(face_crop=False) if layers == "ip_adapter" else None,
        lora=LoraInput(weights=lora_bytes) if layers == "lora" else None,
    )
    config = tiny_engine_config(tiny_model_root)
    warm = Engine(config)
    layered = warm.generate(with_layers)
    after = warm.generate(plain)
    fresh = Engine(config).generate(plain)
    assert_same_pixels(after.images, fresh.images)
    assert not np.array_equal(
        np.asarray(layered.images[0]), np.asarray(fresh.images[0])
    )


def test_regenerating_an_sdxl_snapshot_gives_identical_pixels(
    tiny_model_root, lora_bytes
):
    references = [ReferenceInput(noise_image(13), primary=True)]
    request = make_request(
        references=references,
        control_units=[ControlUnitInput(ControlType.CANNY)],
        appearance_locked=True,
        lora=LoraInput(weights=lora_bytes, scale=0.5),
    )
    first = Engine(tiny_engine_config(tiny_model_root)).generate(request)
    assert first.snapshot["request"]["method"] == "hybrid"
    key = first.snapshot["references"][0]["key"]
    again = request_from_snapshot(
        first.snapshot,
        open_image={key: references[0].image}.__getitem__,
        read_bytes=lambda key: lora_bytes,
    )
    second = Engine(tiny_engine_config(tiny_model_root)).generate(again)
    assert_same_pixels(second.images, first.images)
    assert second.snapshot["outputs"] == first.snapshot["outputs"]


def test_the_single_file_checkpoint_gives_the_folders_pixels(engine, tiny_model_root):
    config = tiny_engine_config(tiny_model_root)
    config.models["single"] = ModelSpec(
        key="single",
        source=str(tiny_model_root / "sdxl.safetensors"),
        config=str(tiny_model_root / "sdxl"),
    )
    single = Engine(config).generate(make_request(model="single", method=Method.TEXT))
    folder = engine.generate(make_request(method=Method.TEXT))
    assert single.snapshot["model"]["kind"] == "single_file"
    assert single.snapshot["family"] == "sdxl"
    assert_same_pixels(single.images, folder.images)
    # And what diffusers' own single-file loader gives with that config.
    raw = StableDiffusionXLPipeline.from_single_file(
        tiny_model_root / "sdxl.safetensors",
        config=str(tiny_model_root / "sdxl"),
        dtype=torch.float32,
    )
    raw.set_progress_bar_config(disable=True)
    assert_same_pixels(single.images, raw_call(raw, width=SIZE, height=SIZE))


# --- Long prompts on both text encoders ------------------------------------------


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_model_root: Path) -> StableDiffusionXLPipeline:
    return raw_pipeline(tiny_model_root, StableDiffusionXLPipeline)


def words_of(tokenizer, tokens: int) -> str:
    """A prompt of exactly ``tokens`` tokens (one token per character here)."""
    text = ("red hair soft light " * 40)[: tokens - 1].rstrip() + "x"
    while len(prompt_token_ids(tokenizer, text)) < tokens:
        text += "y"
    assert len(prompt_token_ids(tokenizer, text)) == tokens
    return text


def assert_encodes_as_diffusers(pipe, encoding) -> None:
    """A fitting prompt encodes to exactly the pipeline's own ``encode_prompt``."""
    embeds, info = encode_long_prompt(pipe, encoding, PROMPT, NEGATIVE, "cpu", True)
    expected = pipe.encode_prompt(
        PROMPT, device="cpu", do_classifier_free_guidance=True, negative_prompt=NEGATIVE
    )
    names = (
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    )
    assert info["chunks"] == 1
    for name, tensor in zip(names, expected, strict=True):
        assert torch.equal(embeds[name], tensor), name


def test_a_fitting_prompt_encodes_exactly_as_diffusers_sdxl(sdxl_pipe):
    assert_encodes_as_diffusers(sdxl_pipe, SDXL.text_encoding)


def test_a_long_prompt_is_chunked_on_both_encoders_with_the_first_pooled(sdxl_pipe):
    tokenizer = sdxl_pipe.tokenizer
    head = words_of(tokenizer, 75)
    long_prompt = head + " " + words_of(tokenizer, 120)
    embeds, info = encode_long_prompt(
        sdxl_pipe, SDXL.text_encoding, long_prompt, "", "cpu", True
    )
    alone, _ = encode_long_prompt(sdxl_pipe, SDXL.text_encoding, head, "", "cpu", True)
    assert info["chunks"] == 3 and info["truncated"] is False
    assert embeds["prompt_embeds"].shape == (1, 3 * 77, 32 + 48)
    assert embeds["negative_prompt_embeds"].shape == (1, 3 * 77, 32 + 48)
    assert embeds["pooled_prompt_embeds"].shape == (1, 48)
    # The first chunk is the head's encoding, and so is the pooled embedding.
    assert torch.equal(embeds["prompt_embeds"][:, :77], alone["prompt_embeds"])
    assert torch.equal(embeds["pooled_prompt_embeds"], alone["pooled_prompt_embeds"])
    # The tail is encoded, not cut: another tail gives other embeddings.
    other, _ = encode_long_prompt(
        sdxl_pipe, SDXL.text_encoding, head + " zz" + long_prompt[78:], "", "cpu", True
    )
    assert not torch.equal(other["prompt_embeds"], embeds["prompt_embeds"])


def test_a_long_sdxl_prompt_through_the_engine_equals_raw_with_the_chunks(
    engine, sdxl_pipe
):
    long_prompt = words_of(sdxl_pipe.tokenizer, 160)
    result = engine.generate(make_request(method=Method.TEXT, prompt=long_prompt))
    embeds, _ = encode_long_prompt(
        sdxl_pipe, SDXL.text_encoding, long_prompt, NEGATIVE, "cpu", True
    )
    raw = sdxl_pipe(
        **embeds,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images
    assert_same_pixels(result.images, raw)
    assert result.snapshot["prompt_encoding"]["chunks"] == 3
    assert any("encoded in 3 chunks" in note for note in result.notes)
