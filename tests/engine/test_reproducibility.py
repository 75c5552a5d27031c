"""The engine gives exactly what raw diffusers gives, every time.

For each method the same inputs go through the engine and through a diffusers
pipeline built here directly with ``from_pretrained`` (never through the
registry); the pixels must be identical. Each engine result is also replayed
with raw diffusers from its snapshot alone, the way an outside script would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import (
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.controlnets import MultiControlNetModel
from PIL import Image
from skimage import data

from generation.engine.config import tiny_engine_config
from generation.engine.errors import GenerationCancelled, InvalidRequest
from generation.engine.face import crop_face
from generation.engine.families import family
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    GenerationResult,
    IPAdapterInput,
    LoraInput,
    Method,
    ReferenceInput,
    ReferenceRole,
    ResizeMode,
)
from generation.engine.resize import fit_to_size
from generation.engine.runner import Engine
from generation.engine.snapshot import image_sha256, request_from_snapshot
from generation.engine.vocabulary import Denoiser

SEED = 1234
STEPS = 3
SIZE = 64
PROMPT = "portrait of the persona, studio light"
NEGATIVE = "blurry"
GUIDANCE = 6.0
STRENGTH = 0.75


def noise_image(seed: int, width: int = 96, height: int = 80) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    """One engine for the module: every case also checks that the jobs before it
    left nothing behind in the shared modules."""
    return Engine(tiny_engine_config(tiny_model_root))


@pytest.fixture(scope="module")
def lora_bytes(tiny_model_root: Path) -> bytes:
    return (tiny_model_root / "lora" / "persona.safetensors").read_bytes()


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    """A real photograph with a face the detector finds."""
    return Image.fromarray(data.astronaut()).resize((160, 160))


def make_request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "model": "tiny-sd15",
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


def reference_of(image: Image.Image, **fields: Any) -> ReferenceInput:
    return ReferenceInput(image=image, **fields)


def raw_pipeline(root: Path, pipeline_cls: type, controlnets: tuple[str, ...] = ()):
    """The pipeline a person would build with diffusers alone."""
    components: dict[str, Any] = {}
    if controlnets:
        models = [
            ControlNetModel.from_pretrained(root / "controlnet" / name)
            for name in controlnets
        ]
        components["controlnet"] = (
            models[0] if len(models) == 1 else MultiControlNetModel(models)
        )
    pipe = pipeline_cls.from_pretrained(
        root / "sd15", dtype=torch.float32, **components
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def raw_call(pipe, **kwargs: Any) -> list[Image.Image]:
    return pipe(
        prompt=PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=torch.Generator("cpu").manual_seed(SEED),
        **kwargs,
    ).images


def load_ip_adapter(pipe, root: Path, weight_name: str, scale: float) -> None:
    pipe.load_ip_adapter(
        root / "ip-adapter",
        subfolder="models",
        weight_name=weight_name,
        image_encoder_folder="models/image_encoder",
    )
    pipe.set_ip_adapter_scale(scale)


def assert_same_pixels(actual: list[Image.Image], expected: list[Image.Image]) -> None:
    assert len(actual) == len(expected)
    for mine, theirs in zip(actual, expected, strict=True):
        assert mine.size == theirs.size
        assert np.array_equal(np.asarray(mine), np.asarray(theirs))


def replay_snapshot(result: GenerationResult, lora: bytes | None) -> list[Image.Image]:
    """Rebuild the call from the snapshot alone with raw diffusers (what an
    outside reproduction script does), given the images it names by hash."""
    snapshot = result.snapshot
    components: dict[str, Any] = {}
    if snapshot["control_units"]:
        row = family(snapshot["family"])
        controlnet_cls = getattr(diffusers, row.controlnet_class)
        models = [
            controlnet_cls.from_pretrained(unit["controlnet"]["source"])
            for unit in snapshot["control_units"]
        ]
        multi = getattr(diffusers, row.multi_controlnet_class)
        components["controlnet"] = models[0] if len(models) == 1 else multi(models)
    pipe = getattr(diffusers, snapshot["pipeline_class"]).from_pretrained(
        snapshot["model"]["source"],
        dtype=getattr(torch, snapshot["dtype"]),
        **components,
    )
    pipe.set_progress_bar_config(disable=True)
    scheduler = snapshot["scheduler"]
    pipe.scheduler = getattr(diffusers, scheduler["class"]).from_config(
        scheduler["config"]
    )
    if snapshot["ip_adapter"] is not None:
        ip_adapter = snapshot["ip_adapter"]
        if family(snapshot["family"]).denoiser is Denoiser.TRANSFORMER:
            # FLUX.1's loader (FluxIPAdapterMixin) takes the encoder's source.
            encoder = {
                "image_encoder_pretrained_model_name_or_path": ip_adapter.get(
                    "image_encoder_source", ip_adapter["source"]
                ),
                "image_encoder_subfolder": ip_adapter["image_encoder_folder"],
                "image_encoder_dtype": getattr(torch, snapshot["dtype"]),
            }
        else:
            encoder = {"image_encoder_folder": ip_adapter["image_encoder_folder"]}
        pipe.load_ip_adapter(
            ip_adapter["source"],
            subfolder=ip_adapter["subfolder"],
            weight_name=ip_adapter["weight_name"],
            **encoder,
        )
        pipe.set_ip_adapter_scale(ip_adapter["scale"])
    if snapshot["lora"] is not None:
        name = snapshot["lora"]["name"]
        pipe.load_lora_weights(safetensors.torch.load(lora), adapter_name=name)
        pipe.set_adapters([name], adapter_weights=[snapshot["lora"]["scale"]])

    def resolve(value: Any) -> Any:
        if isinstance(value, dict) and "pixel_sha256" in value:
            return result.call_images[value["pixel_sha256"]]
        if isinstance(value, list):
            return [resolve(item) for item in value]
        return value

    kwargs = {name: resolve(value) for name, value in snapshot["call"].items()}
    generator = kwargs.pop("generator")
    images = pipe(
        **kwargs,
        generator=torch.Generator(generator["device"]).manual_seed(generator["seed"]),
    ).images
    assert [image_sha256(image) for image in images] == snapshot["outputs"]
    return images


def check(
    engine: Engine,
    request: GenerationRequest,
    raw_images: list[Image.Image],
    lora: bytes | None = None,
) -> GenerationResult:
    result = engine.generate(request)
    assert_same_pixels(result.images, raw_images)
    assert_same_pixels(replay_snapshot(result, lora), raw_images)
    return result


def test_text_equals_raw_diffusers(engine, tiny_model_root):
    raw = raw_call(
        raw_pipeline(tiny_model_root, StableDiffusionPipeline),
        width=SIZE,
        height=SIZE,
        num_images_per_prompt=2,
    )
    result = check(engine, make_request(method=Method.TEXT, num_images=2), raw)
    assert result.snapshot["pipeline_class"] == "StableDiffusionPipeline"


def test_img2img_equals_raw_diffusers(engine, tiny_model_root):
    reference = noise_image(1)
    raw = raw_call(
        raw_pipeline(tiny_model_root, StableDiffusionImg2ImgPipeline),
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.RESIZE_AND_FILL),
        strength=STRENGTH,
    )
    check(
        engine,
        make_request(
            method=Method.IMG2IMG,
            references=[ReferenceInput(reference)],
            resize_mode=ResizeMode.RESIZE_AND_FILL,
        ),
        raw,
    )


def test_controlnet_equals_raw_diffusers(engine, tiny_model_root):
    pose = noise_image(2, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(tiny_model_root, StableDiffusionControlNetPipeline, ("openpose",)),
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
    assert_same_pixels([result.control_images[0].image], [pose])


def test_two_controlnets_at_once_equal_raw_multicontrolnet(engine, tiny_model_root):
    pose, edges = noise_image(3, SIZE, SIZE), noise_image(4, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(
            tiny_model_root, StableDiffusionControlNetPipeline, ("openpose", "canny")
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
    result = check(
        engine, make_request(method=Method.CONTROLNET, control_units=units), raw
    )
    assert [control.control_type for control in result.control_images] == [
        ControlType.OPENPOSE,
        ControlType.CANNY,
    ]


def test_hybrid_equals_raw_diffusers_with_our_conditioning_scale(
    engine, tiny_model_root
):
    reference = noise_image(5)
    unit = ControlUnitInput(ControlType.CANNY, conditioning_scale=1.0)
    result = engine.generate(
        make_request(
            method=Method.HYBRID,
            references=[reference_of(reference)],
            control_units=[unit],
        )
    )
    canny = result.control_images[0].image
    pipe = raw_pipeline(
        tiny_model_root, StableDiffusionControlNetImg2ImgPipeline, ("canny",)
    )
    raw = raw_call(
        pipe,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        control_image=canny,
        width=SIZE,
        height=SIZE,
        strength=STRENGTH,
        controlnet_conditioning_scale=1.0,
    )
    assert_same_pixels(result.images, raw)
    assert_same_pixels(replay_snapshot(result, None), raw)
    # The pipeline's own default (0.8) would give other pixels: ours was passed.
    default = raw_call(
        pipe,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        control_image=canny,
        width=SIZE,
        height=SIZE,
        strength=STRENGTH,
    )
    assert not np.array_equal(np.asarray(default[0]), np.asarray(raw[0]))


def test_hybrid_with_face_ip_adapter_equals_raw_diffusers(
    engine, tiny_model_root, astronaut
):
    pose = noise_image(6, SIZE, SIZE)
    face, info = crop_face(astronaut)
    assert info["face_found"]
    pipe = raw_pipeline(
        tiny_model_root, StableDiffusionControlNetImg2ImgPipeline, ("openpose",)
    )
    load_ip_adapter(pipe, tiny_model_root, "ip-adapter-plus-face_sd15.safetensors", 0.5)
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
        references=[reference_of(astronaut, role=ReferenceRole.FACE)],
        control_units=[
            ControlUnitInput(
                ControlType.OPENPOSE, conditioning_scale=0.8, control_image=pose
            )
        ],
        ip_adapter=IPAdapterInput(scale=0.5, face_crop=True),
    )
    result = check(engine, request, raw)
    crops = result.snapshot["ip_adapter"]["face_crops"]
    assert crops[0]["face_found"] and crops[0]["crop_box"] == info["crop_box"]


def test_ip_adapter_with_several_references_equals_raw_diffusers(
    engine, tiny_model_root
):
    references = [noise_image(7), noise_image(8, 72, 72)]
    pipe = raw_pipeline(tiny_model_root, StableDiffusionPipeline)
    load_ip_adapter(pipe, tiny_model_root, "ip-adapter_sd15.safetensors", 0.7)
    raw = raw_call(pipe, width=SIZE, height=SIZE, ip_adapter_image=[references])
    request = make_request(
        method=Method.IP_ADAPTER,
        references=[reference_of(image) for image in references],
        ip_adapter=IPAdapterInput(scale=0.7, face_crop=False, reference_indexes=[0, 1]),
    )
    result = check(engine, request, raw)
    assert result.snapshot["base_method"] == "text"
    assert result.snapshot["ip_adapter"]["weight_name"] == "ip-adapter_sd15.safetensors"


def test_ip_adapter_face_crop_falls_back_to_the_whole_image(engine, tiny_model_root):
    reference = noise_image(9)
    pipe = raw_pipeline(tiny_model_root, StableDiffusionImg2ImgPipeline)
    load_ip_adapter(pipe, tiny_model_root, "ip-adapter-plus-face_sd15.safetensors", 0.6)
    raw = raw_call(
        pipe,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        strength=STRENGTH,
        ip_adapter_image=[[reference]],
    )
    request = make_request(
        method=Method.IP_ADAPTER,
        appearance_locked=True,
        references=[reference_of(reference, role=ReferenceRole.FACE)],
    )
    result = check(engine, request, raw)
    assert result.snapshot["ip_adapter"]["face_crops"][0]["face_found"] is False
    assert any("No face found in reference 0" in note for note in result.notes)


def test_lora_on_img2img_equals_raw_diffusers(engine, tiny_model_root, lora_bytes):
    reference = noise_image(10)
    pipe = raw_pipeline(tiny_model_root, StableDiffusionImg2ImgPipeline)
    pipe.load_lora_weights(
        tiny_model_root / "lora", weight_name="persona.safetensors", adapter_name="p"
    )
    pipe.set_adapters(["p"], adapter_weights=[0.9])
    raw = raw_call(
        pipe,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.JUST_RESIZE),
        strength=STRENGTH,
    )
    request = make_request(
        method=Method.IMG2IMG,
        references=[reference_of(reference)],
        resize_mode=ResizeMode.JUST_RESIZE,
        lora=LoraInput(weights=lora_bytes, scale=0.9),
    )
    check(engine, request, raw, lora_bytes)


def test_a_requested_scheduler_equals_raw_diffusers(engine, tiny_model_root):
    pipe = raw_pipeline(tiny_model_root, StableDiffusionPipeline)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    raw = raw_call(pipe, width=SIZE, height=SIZE)
    request = make_request(method=Method.TEXT, scheduler="EulerDiscreteScheduler")
    result = check(engine, request, raw)
    assert result.snapshot["scheduler"]["class"] == "EulerDiscreteScheduler"


def test_the_same_request_twice_gives_identical_pixels(engine, lora_bytes):
    request = make_request(
        references=[reference_of(noise_image(11), role=ReferenceRole.FACE)],
        control_units=[ControlUnitInput(ControlType.CANNY)],
        appearance_locked=True,
        lora=LoraInput(weights=lora_bytes),
    )
    first, second = engine.generate(request), engine.generate(request)
    assert first.method is Method.HYBRID
    assert_same_pixels(first.images, second.images)
    assert first.snapshot["outputs"] == second.snapshot["outputs"]
    assert second.registry_hit


def test_a_different_seed_gives_different_pixels(engine):
    first = engine.generate(make_request(method=Method.TEXT))
    other = engine.generate(make_request(method=Method.TEXT, seed=SEED + 1))
    assert not np.array_equal(np.asarray(first.images[0]), np.asarray(other.images[0]))


@pytest.mark.parametrize("layers", ["ip_adapter", "lora", "both"])
def test_a_job_with_adapters_leaves_the_next_job_untouched(
    tiny_model_root, lora_bytes, layers
):
    reference = noise_image(12)
    plain = make_request(method=Method.IMG2IMG, references=[reference_of(reference)])
    with_layers = make_request(
        method=Method.IMG2IMG,
        references=[reference_of(reference, role=ReferenceRole.FACE)],
        ip_adapter=IPAdapterInput() if layers != "lora" else None,
        lora=LoraInput(weights=lora_bytes) if layers != "ip_adapter" else None,
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


def test_a_job_cancelled_with_adapters_on_leaves_the_next_job_untouched(
    tiny_model_root, lora_bytes
):
    reference = noise_image(12)
    plain = make_request(method=Method.IMG2IMG, references=[reference_of(reference)])
    layered = make_request(
        method=Method.IMG2IMG,
        references=[reference_of(reference)],
        ip_adapter=IPAdapterInput(),
        lora=LoraInput(weights=lora_bytes),
    )
    config = tiny_engine_config(tiny_model_root)
    warm = Engine(config)
    steps: list[int] = []
    with pytest.raises(GenerationCancelled):
        warm.generate(
            layered,
            on_step=lambda step, total: steps.append(step),
            should_cancel=lambda: bool(steps),
        )
    after = warm.generate(plain)
    assert_same_pixels(after.images, Engine(config).generate(plain).images)


def test_regenerating_from_the_snapshot_gives_identical_pixels(
    tiny_model_root, lora_bytes, astronaut
):
    references = [
        reference_of(noise_image(13), primary=True),
        reference_of(astronaut, role=ReferenceRole.FACE),
    ]
    request = make_request(
        references=references,
        control_units=[ControlUnitInput(ControlType.CANNY, reference_index=1)],
        appearance_locked=True,
        lora=LoraInput(weights=lora_bytes, scale=0.5),
    )
    first = Engine(tiny_engine_config(tiny_model_root)).generate(request)
    assert first.snapshot["requested_method"] == "auto"
    assert first.snapshot["request"]["method"] == "hybrid"
    by_key = {
        first.snapshot["references"][i]["key"]: r.image
        for i, r in enumerate(references)
    }
    again = request_from_snapshot(
        first.snapshot,
        open_image=by_key.__getitem__,
        read_bytes=lambda key: lora_bytes,
    )
    assert again.method is Method.HYBRID
    assert again.ip_adapter.reference_indexes == [1]
    second = Engine(tiny_engine_config(tiny_model_root)).generate(again)
    assert_same_pixels(second.images, first.images)
    assert second.snapshot["outputs"] == first.snapshot["outputs"]


def test_a_changed_input_is_refused_when_regenerating(engine):
    reference = noise_image(14)
    result = engine.generate(
        make_request(method=Method.IMG2IMG, references=[reference_of(reference)])
    )
    with pytest.raises(InvalidRequest, match="reference 0 differs"):
        request_from_snapshot(
            result.snapshot,
            open_image=lambda key: noise_image(15),
            read_bytes=lambda key: b"",
        )
