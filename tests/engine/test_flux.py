"""FLUX.1 through the engine gives exactly what raw diffusers gives.

The pattern of test_sdxl.py on the tiny FLUX.1 Kontext model: the same inputs go
through the engine and through a diffusers Flux pipeline built here with
``from_pretrained`` (text, img2img, Kontext with one reference and with several
on a stitched canvas); the pixels must be identical, and each result replays
with raw diffusers from its snapshot alone. Then the method's references, the
family's refusals (a method it lacks, an SD LoRA, an IP-Adapter), ``auto``, and
the registry's sharing and options.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from diffusers import (
    FluxControlNetImg2ImgPipeline,
    FluxControlNetModel,
    FluxControlNetPipeline,
    FluxImg2ImgPipeline,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
)
from diffusers.models.controlnets import FluxMultiControlNetModel
from PIL import Image

from generation.engine.config import ModelSpec, tiny_engine_config
from generation.engine.errors import InvalidRequest, ModelNotFound
from generation.engine.families import (
    FLUX,
    SD15,
    FamilyMismatch,
    single_file_family,
)
from generation.engine.plan import plan_check, plan_problems
from generation.engine.registry import (
    PipelineRegistry,
    choose_dtype,
    denoiser_of,
    quantization_config,
)
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
from generation.engine.resize import fit_for_image_encoder, fit_to_size
from generation.engine.runner import Engine
from generation.engine.snapshot import request_from_snapshot
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_MODEL_KEY,
    Quantization,
)
from tests.engine.test_reproducibility import (
    assert_same_pixels,
    noise_image,
    replay_snapshot,
)

SEED = 2468
STEPS = 3
SIZE = 64
PROMPT = "the same woman, now on a night street in the rain"
GUIDANCE = 3.5
STRENGTH = 0.75
WINDOW = 512  # T5's sequence length in FLUX.1


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    """One engine for the module: each case also checks that the jobs before it
    left nothing behind in the shared modules."""
    return Engine(tiny_engine_config(tiny_model_root))


@pytest.fixture(scope="module")
def flux_lora(tiny_model_root: Path) -> bytes:
    return (tiny_model_root / "lora" / "persona-flux.safetensors").read_bytes()


def references() -> list[ReferenceInput]:
    """A gallery of four: the primary one is the second; the others have the
    roles the method ranks (face before style; pose last)."""
    return [
        ReferenceInput(noise_image(1, 96, 80), role=ReferenceRole.STYLE),
        ReferenceInput(
            noise_image(2, 64, 64), role=ReferenceRole.FULL_BODY, primary=True
        ),
        ReferenceInput(noise_image(3, 48, 96), role=ReferenceRole.FACE),
        ReferenceInput(noise_image(4, 64, 80), role=ReferenceRole.POSE),
    ]


def make_request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "model": TINY_FLUX_MODEL_KEY,
        "prompt": PROMPT,
        "seed": SEED,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "width": SIZE,
        "height": SIZE,
        "strength": STRENGTH,
    }
    return GenerationRequest(**{**values, **overrides})


def raw_pipeline(root: Path, pipeline_cls: type, controlnets: tuple[str, ...] = ()):
    """The Flux pipeline a person would build with diffusers alone (with the
    tiny FLUX.1 ControlNets of ``controlnets``)."""
    components: dict[str, Any] = {}
    if controlnets:
        models = [
            FluxControlNetModel.from_pretrained(root / "controlnet-flux" / name)
            for name in controlnets
        ]
        components["controlnet"] = (
            models[0] if len(models) == 1 else FluxMultiControlNetModel(models)
        )
    pipe = pipeline_cls.from_pretrained(
        root / "flux", dtype=torch.float32, **components
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def raw_call(pipe, **kwargs: Any) -> list[Image.Image]:
    return pipe(
        **{
            "prompt": PROMPT,
            "num_inference_steps": STEPS,
            "guidance_scale": GUIDANCE,
            "width": SIZE,
            "height": SIZE,
            "max_sequence_length": WINDOW,
            "generator": torch.Generator("cpu").manual_seed(SEED),
            **kwargs,
        }
    ).images


def check(engine: Engine, request: GenerationRequest, raw, lora=None):
    result = engine.generate(request)
    assert_same_pixels(result.images, raw)
    assert_same_pixels(replay_snapshot(result, lora), raw)
    assert result.snapshot["family"] == "flux"
    return result


# --- Each pipeline equals raw diffusers --------------------------------------------


def test_text_equals_raw_diffusers(engine, tiny_model_root):
    raw = raw_call(raw_pipeline(tiny_model_root, FluxPipeline))
    result = check(engine, make_request(method=Method.TEXT), raw)
    assert result.snapshot["pipeline_class"] == "FluxPipeline"
    assert result.snapshot["scheduler"]["class"] == "FlowMatchEulerDiscreteScheduler"
    assert result.snapshot["call"]["guidance_scale"] == GUIDANCE
    assert "negative_prompt" not in result.snapshot["call"]


def test_img2img_equals_raw_diffusers(engine, tiny_model_root):
    gallery = references()
    init = fit_to_size(gallery[1].image, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE)
    raw = raw_call(
        raw_pipeline(tiny_model_root, FluxImg2ImgPipeline),
        image=init,
        strength=STRENGTH,
    )
    result = check(engine, make_request(method=Method.IMG2IMG, references=gallery), raw)
    assert result.snapshot["pipeline_class"] == "FluxImg2ImgPipeline"
    assert result.snapshot["init_reference"] == 1


def test_kontext_with_one_reference_equals_raw_diffusers(engine, tiny_model_root):
    reference = noise_image(5, 96, 80)
    # The reference keeps its aspect ratio (1.2) at the output's area (64 x 64):
    # height sqrt(4096 / 1.2) = 58.4 -> 64 and width 76.8 -> 80, in steps of 16.
    canvas = reference.resize((80, 64), Image.Resampling.LANCZOS)
    raw = raw_call(
        raw_pipeline(tiny_model_root, FluxKontextPipeline),
        image=canvas,
        max_area=SIZE * SIZE,
        _auto_resize=False,
    )
    request = make_request(
        method=Method.REFERENCE_EDIT, references=[ReferenceInput(reference)]
    )
    result = check(engine, request, raw)
    assert result.snapshot["pipeline_class"] == "FluxKontextPipeline"
    assert result.snapshot["reference_edit"] == {
        "references": [0],
        "multi_reference": "stitch",
        "canvas": [80, 64],
        "boxes": [[0, 0, 80, 64]],
    }


def test_kontext_with_three_references_stitches_them_as_documented(
    engine, tiny_model_root
):
    gallery = references()
    # Primary (64x64, ratio 1), then the face (48x96, 0.5), then the style
    # (96x80, 1.2); the pose reference is left out. Joint ratio 2.7 at 4096
    # pixels: height 39 -> 32, width 86.4 -> 80, shared out as 30, 15 and 35.
    canvas = Image.new("RGB", (80, 32))
    left = 0
    for index, width in ((1, 30), (2, 15), (0, 35)):
        resized = gallery[index].image.resize((width, 32), Image.Resampling.LANCZOS)
        canvas.paste(resized, (left, 0))
        left += width
    raw = raw_call(
        raw_pipeline(tiny_model_root, FluxKontextPipeline),
        image=canvas,
        max_area=SIZE * SIZE,
        _auto_resize=False,
    )
    result = check(
        engine, make_request(method=Method.REFERENCE_EDIT, references=gallery), raw
    )
    assert result.snapshot["reference_edit"]["references"] == [1, 2, 0]
    assert result.snapshot["reference_edit"]["boxes"] == [
        [0, 0, 30, 32],
        [30, 0, 45, 32],
        [45, 0, 80, 32],
    ]
    assert result.snapshot["request"]["edit_reference_indexes"] == [1, 2, 0]


def test_controlnet_equals_raw_diffusers(engine, tiny_model_root):
    pose = noise_image(7, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(tiny_model_root, FluxControlNetPipeline, ("openpose",)),
        control_image=pose,
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
    assert result.snapshot["pipeline_class"] == "FluxControlNetPipeline"
    controlnet = result.snapshot["control_units"][0]["controlnet"]
    assert controlnet["source"].endswith("controlnet-flux/openpose")
    plain = engine.generate(make_request(method=Method.TEXT))
    assert plain.snapshot["outputs"] != result.snapshot["outputs"]


def test_two_controlnets_at_once_equal_raw_flux_multicontrolnet(
    engine, tiny_model_root
):
    pose, edges = noise_image(8, SIZE, SIZE), noise_image(9, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(
            tiny_model_root, FluxControlNetPipeline, ("openpose", "canny")
        ),
        control_image=[pose, edges],
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
    pipe, _ = engine.registry.pipeline(
        TINY_FLUX_MODEL_KEY,
        Method.CONTROLNET,
        [ControlType.OPENPOSE, ControlType.CANNY],
    )
    assert type(pipe.controlnet) is FluxMultiControlNetModel


def test_hybrid_equals_raw_diffusers(engine, tiny_model_root):
    gallery = references()
    edges = noise_image(10, SIZE, SIZE)
    raw = raw_call(
        raw_pipeline(tiny_model_root, FluxControlNetImg2ImgPipeline, ("canny",)),
        image=fit_to_size(gallery[1].image, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        control_image=edges,
        strength=STRENGTH,
        controlnet_conditioning_scale=0.8,
    )
    request = make_request(
        method=Method.HYBRID,
        references=gallery,
        control_units=[
            ControlUnitInput(
                ControlType.CANNY, conditioning_scale=0.8, control_image=edges
            )
        ],
    )
    result = check(engine, request, raw)
    assert result.snapshot["pipeline_class"] == "FluxControlNetImg2ImgPipeline"
    assert result.snapshot["init_reference"] == 1


def test_auto_with_control_units_on_flux_runs_a_controlnet_pipeline(engine):
    units = [ControlUnitInput(ControlType.CANNY)]
    locked = engine.plan(
        make_request(
            references=references(), control_units=units, appearance_locked=True
        )
    )
    assert locked.base is Method.HYBRID
    assert locked.pipeline_class_name == "FluxControlNetImg2ImgPipeline"
    free = engine.plan(make_request(references=references(), control_units=units))
    assert free.pipeline_class_name == "FluxControlNetPipeline"


def test_an_sd_controlnet_on_flux_is_refused_with_the_reason(tiny_model_root):
    config = tiny_engine_config(tiny_model_root)
    spec = config.models[TINY_FLUX_MODEL_KEY]
    sd_canny = str(tiny_model_root / "controlnet" / "canny")
    config.models[TINY_FLUX_MODEL_KEY] = replace(
        spec, controlnets={**spec.controlnets, "canny": sd_canny}
    )
    request = make_request(
        method=Method.CONTROLNET,
        control_units=[
            ControlUnitInput(ControlType.CANNY, control_image=noise_image(11))
        ],
    )
    with pytest.raises(FamilyMismatch) as error:
        Engine(config).plan(request)
    message = str(error.value)
    assert "is a Stable Diffusion 1.5 ControlNet" in message
    assert "model 'tiny-flux' is FLUX.1" in message


def test_true_cfg_uses_the_negative_prompt_as_raw_diffusers_does(
    engine, tiny_model_root
):
    raw = raw_call(
        raw_pipeline(tiny_model_root, FluxPipeline),
        negative_prompt="blurry",
        true_cfg_scale=2.0,
    )
    request = make_request(
        method=Method.TEXT, negative_prompt="blurry", true_cfg_scale=2.0
    )
    result = check(engine, request, raw)
    assert not any("negative prompt was not used" in note for note in result.notes)


def test_a_negative_prompt_without_true_cfg_is_not_used_and_the_result_says_so(
    engine,
):
    plain = engine.generate(make_request(method=Method.TEXT))
    negative = engine.generate(make_request(method=Method.TEXT, negative_prompt="x"))
    assert_same_pixels(negative.images, plain.images)
    assert any("guidance-distilled" in note for note in negative.notes)


def test_a_flux_lora_equals_raw_diffusers_and_is_reset_after_the_job(
    engine, tiny_model_root, flux_lora
):
    pipe = raw_pipeline(tiny_model_root, FluxPipeline)
    pipe.load_lora_weights(safetensors.torch.load(flux_lora), adapter_name="persona")
    pipe.set_adapters(["persona"], adapter_weights=[0.8])
    raw = raw_call(pipe)
    lora = LoraInput(weights=flux_lora, scale=0.8, name="persona")
    with_lora = check(
        engine, make_request(method=Method.TEXT, lora=lora), raw, flux_lora
    )
    without = engine.generate(make_request(method=Method.TEXT))
    assert with_lora.snapshot["outputs"] != without.snapshot["outputs"]
    assert_same_pixels(
        without.images, raw_call(raw_pipeline(tiny_model_root, FluxPipeline))
    )


def test_a_kohya_flux_lora_equals_raw_diffusers_with_the_same_file(
    engine, tiny_model_root
):
    kohya = (tiny_model_root / "lora" / "persona-flux-kohya.safetensors").read_bytes()
    assert any(
        key.startswith("lora_unet_single_blocks_0_")
        for key in safetensors.torch.load(kohya)
    )
    pipe = raw_pipeline(tiny_model_root, FluxPipeline)
    pipe.load_lora_weights(safetensors.torch.load(kohya), adapter_name="kohya")
    pipe.set_adapters(["kohya"], adapter_weights=[0.9])
    raw = raw_call(pipe)
    lora = LoraInput(weights=kohya, scale=0.9, name="kohya")
    result = check(engine, make_request(method=Method.TEXT, lora=lora), raw, kohya)
    plain = engine.generate(make_request(method=Method.TEXT))
    assert result.snapshot["outputs"] != plain.snapshot["outputs"]
    assert_same_pixels(
        plain.images, raw_call(raw_pipeline(tiny_model_root, FluxPipeline))
    )


def test_a_snapshot_replays_to_the_same_pixels_in_a_new_engine(engine, tiny_model_root):
    gallery = references()
    first = engine.generate(
        make_request(method=Method.AUTO, references=gallery, appearance_locked=True)
    )
    images = {
        recorded["key"]: gallery[index].image
        for index, recorded in enumerate(first.snapshot["references"])
    }
    again = request_from_snapshot(
        first.snapshot, open_image=images.__getitem__, read_bytes=bytes
    )
    assert again.method == Method.REFERENCE_EDIT
    second = Engine(tiny_engine_config(tiny_model_root)).generate(again)
    assert_same_pixels(second.images, first.images)
    assert second.snapshot["outputs"] == first.snapshot["outputs"]


# --- IP-Adapter (XLabs' layout) ------------------------------------------------------


def load_xlabs_ip_adapter(pipe, root: Path, scale: float) -> None:
    """What a person does with diffusers for XLabs-AI/flux-ip-adapter."""
    pipe.load_ip_adapter(
        str(root / "ip-adapter-flux"),
        weight_name="ip_adapter.safetensors",
        image_encoder_pretrained_model_name_or_path=str(root / "ip-adapter"),
        image_encoder_subfolder="models/image_encoder",
        image_encoder_dtype=torch.float32,
    )
    pipe.set_ip_adapter_scale(scale)


def test_an_ip_adapter_with_several_references_equals_raw_diffusers_and_is_reset(
    engine, tiny_model_root
):
    gallery = references()
    pipe = raw_pipeline(tiny_model_root, FluxPipeline)
    load_xlabs_ip_adapter(pipe, tiny_model_root, 0.7)
    images = [fit_for_image_encoder(gallery[index].image) for index in (2, 0)]
    raw = raw_call(pipe, ip_adapter_image=[images])
    request = make_request(
        method=Method.IP_ADAPTER,
        references=gallery,
        ip_adapter=IPAdapterInput(scale=0.7, face_crop=False, reference_indexes=[2, 0]),
    )
    result = check(engine, request, raw)
    adapter = result.snapshot["ip_adapter"]
    assert adapter["weight_name"] == "ip_adapter.safetensors"
    assert adapter["image_encoder_source"].endswith("ip-adapter")
    assert result.snapshot["pipeline_class"] == "FluxPipeline"
    plain = engine.generate(make_request(method=Method.TEXT))
    assert plain.snapshot["outputs"] != result.snapshot["outputs"]
    assert_same_pixels(
        plain.images, raw_call(raw_pipeline(tiny_model_root, FluxPipeline))
    )
    text, _ = engine.registry.pipeline(TINY_FLUX_MODEL_KEY, Method.TEXT)
    assert text.transformer.encoder_hid_proj is None


def test_an_ip_adapter_on_img2img_and_on_controlnet_equals_raw_diffusers(
    engine, tiny_model_root
):
    gallery = references()
    face = fit_for_image_encoder(gallery[2].image)  # the face reference
    pipe = raw_pipeline(tiny_model_root, FluxImg2ImgPipeline)
    load_xlabs_ip_adapter(pipe, tiny_model_root, 0.6)
    raw = raw_call(
        pipe,
        image=fit_to_size(gallery[1].image, SIZE, SIZE, ResizeMode.CROP_AND_RESIZE),
        strength=STRENGTH,
        ip_adapter_image=[[face]],
    )
    locked = make_request(
        method=Method.IP_ADAPTER,
        references=gallery,
        appearance_locked=True,
        ip_adapter=IPAdapterInput(scale=0.6, face_crop=False),
    )
    result = check(engine, locked, raw)
    assert result.snapshot["pipeline_class"] == "FluxImg2ImgPipeline"

    pose = noise_image(13, SIZE, SIZE)
    pipe = raw_pipeline(tiny_model_root, FluxControlNetPipeline, ("openpose",))
    load_xlabs_ip_adapter(pipe, tiny_model_root, 0.6)
    raw = raw_call(
        pipe,
        control_image=pose,
        controlnet_conditioning_scale=1.0,
        ip_adapter_image=[[face]],
    )
    request = make_request(
        method=Method.CONTROLNET,
        references=gallery,
        control_units=[ControlUnitInput(ControlType.OPENPOSE, control_image=pose)],
        ip_adapter=IPAdapterInput(scale=0.6, face_crop=False),
    )
    result = check(engine, request, raw)
    assert result.snapshot["pipeline_class"] == "FluxControlNetPipeline"


def test_an_ip_adapter_on_kontext_equals_raw_diffusers(engine, tiny_model_root):
    reference = noise_image(12, 64, 64)
    pipe = raw_pipeline(tiny_model_root, FluxKontextPipeline)
    load_xlabs_ip_adapter(pipe, tiny_model_root, 0.5)
    raw = raw_call(
        pipe,
        image=reference,
        max_area=SIZE * SIZE,
        _auto_resize=False,
        ip_adapter_image=[[fit_for_image_encoder(reference)]],
    )
    request = make_request(
        method=Method.REFERENCE_EDIT,
        references=[ReferenceInput(reference)],
        ip_adapter=IPAdapterInput(scale=0.5, face_crop=False),
    )
    result = check(engine, request, raw)
    assert result.snapshot["pipeline_class"] == "FluxKontextPipeline"


# --- Single-file checkpoints ---------------------------------------------------------


def single_file_config(root: Path, filename: str):
    """The tiny engine config with a model whose transformer is one file and
    whose other components come from the tiny FLUX.1 folder."""
    config = tiny_engine_config(root)
    config.models["flux-file"] = ModelSpec(
        key="flux-file", source=str(root / filename), config=str(root / "flux")
    )
    return config


@pytest.mark.parametrize(
    "filename", ["flux1-tiny-bfl.safetensors", "flux-transformer.safetensors"]
)
def test_a_single_file_flux_transformer_is_told_by_its_keys(tiny_model_root, filename):
    assert single_file_family(tiny_model_root / filename) is FLUX
    registry = PipelineRegistry(single_file_config(tiny_model_root, filename))
    traits = registry.traits("flux-file")
    assert traits.family is FLUX
    assert traits.cross_attention_dim == 32  # the config folder's transformer


def test_the_tiny_bfl_checkpoint_is_in_the_released_key_layout(tiny_model_root):
    keys = set(
        safetensors.torch.load_file(tiny_model_root / "flux1-tiny-bfl.safetensors")
    )
    for key in (
        "double_blocks.0.img_attn.qkv.weight",
        "double_blocks.0.txt_attn.norm.key_norm.scale",
        "single_blocks.0.linear1.weight",
        "guidance_in.in_layer.weight",
        "final_layer.adaLN_modulation.1.weight",
    ):
        assert key in keys
    assert not any(key.startswith("transformer_blocks.") for key in keys)


def test_a_single_file_flux_transformer_gives_the_folders_pixels(tiny_model_root):
    config = single_file_config(tiny_model_root, "flux-transformer.safetensors")
    transformer = FluxTransformer2DModel.from_single_file(
        str(tiny_model_root / "flux-transformer.safetensors"),
        config=str(tiny_model_root / "flux"),
        subfolder="transformer",
    )
    pipe = FluxPipeline.from_pretrained(
        tiny_model_root / "flux", transformer=transformer, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    raw = raw_call(pipe)
    assert_same_pixels(raw, raw_call(raw_pipeline(tiny_model_root, FluxPipeline)))
    result = Engine(config).generate(make_request(model="flux-file"))
    assert_same_pixels(result.images, raw)
    assert result.snapshot["model"]["kind"] == "single_file"
    assert result.snapshot["pipeline_class"] == "FluxPipeline"


# --- The method's references and auto -----------------------------------------------


def test_references_named_for_the_run_are_used_in_their_order(engine):
    plan = engine.plan(
        make_request(
            method=Method.REFERENCE_EDIT,
            references=references(),
            edit_reference_indexes=[3, 0],
        )
    )
    assert plan.edit_references == (3, 0)


@pytest.mark.parametrize(
    ("indexes", "message"),
    [
        ([0, 1, 2, 3], "takes 1 to 3 references; 4 were named"),
        ([], "takes 1 to 3 references; 0 were named"),
        ([1, 1], "named twice"),
        ([7], "reference index 7 is out of range"),
    ],
)
def test_bad_named_references_are_refused(engine, indexes, message):
    request = make_request(
        method=Method.REFERENCE_EDIT,
        references=references(),
        edit_reference_indexes=indexes,
    )
    with pytest.raises(InvalidRequest, match=message):
        engine.plan(request)


def test_auto_edits_references_for_a_locked_persona_on_flux(engine):
    plan = engine.plan(make_request(references=references(), appearance_locked=True))
    assert plan.method is Method.REFERENCE_EDIT
    assert "reference-editing model (FLUX.1)" in plan.reason
    assert "3 reference(s)" in plan.reason
    unlocked = engine.plan(make_request(references=references()))
    assert unlocked.base is Method.TEXT  # with the IP-Adapter for the face


def test_auto_keeps_img2img_for_a_locked_persona_on_sd15(engine):
    plan = engine.plan(
        make_request(
            model=TINY_MODEL_KEY,
            references=references(),
            appearance_locked=True,
            guidance_scale=7.5,
        )
    )
    assert plan.base is Method.IMG2IMG


# --- Family refusals -----------------------------------------------------------------


def test_reference_edit_on_sd15_is_refused_with_the_reason(engine):
    request = make_request(
        model=TINY_MODEL_KEY, method=Method.REFERENCE_EDIT, references=references()
    )
    with pytest.raises(InvalidRequest) as error:
        engine.plan(request)
    message = str(error.value)
    assert "Method reference_edit is not available for Stable Diffusion 1.5" in message
    assert "needs a model of the families flux (FLUX.1)" in message


def test_the_plan_check_refuses_reference_edit_on_sd15_before_any_load(
    tiny_model_root,
):
    config = tiny_engine_config(tiny_model_root)
    request = make_request(
        model=TINY_MODEL_KEY, method=Method.REFERENCE_EDIT, references=references()
    )
    problems = plan_problems(request, config)
    assert [problem.code for problem in problems] == ["invalid_request"]
    assert "not available for Stable Diffusion 1.5" in problems[0].message
    plan_check(
        make_request(method=Method.REFERENCE_EDIT, references=references()), config
    )


def test_reference_edit_with_control_units_is_refused_with_the_reason(engine):
    request = make_request(
        method=Method.REFERENCE_EDIT,
        references=references(),
        control_units=[ControlUnitInput(ControlType.CANNY)],
    )
    with pytest.raises(InvalidRequest) as error:
        engine.plan(request)
    message = str(error.value)
    assert "diffusers has no reference-editing pipeline with a ControlNet" in message
    assert "use controlnet, or hybrid" in message


def test_an_ip_adapter_on_the_flux_hybrid_pipeline_is_refused_with_the_reason(
    engine, tiny_model_root
):
    request = make_request(
        method=Method.HYBRID,
        references=references(),
        control_units=[ControlUnitInput(ControlType.CANNY)],
        ip_adapter=IPAdapterInput(),
    )
    for plan in (engine.plan, lambda r: plan_check(r, engine.registry.config)):
        with pytest.raises(InvalidRequest) as error:
            plan(request)
        message = str(error.value)
        assert "FluxControlNetImg2ImgPipeline (hybrid on FLUX.1) takes no " in message
        assert "controlnet, img2img, reference_edit, text" in message
    # auto leaves it out on hybrid, and adds it where the pipeline takes one
    units = [ControlUnitInput(ControlType.CANNY)]
    hybrid = engine.plan(
        make_request(
            references=references(), control_units=units, appearance_locked=True
        )
    )
    assert (hybrid.base, hybrid.ip_adapter) == (Method.HYBRID, None)
    text = engine.plan(make_request(references=references()))
    assert text.method is Method.IP_ADAPTER
    assert text.ip_adapter is not None


def test_an_ip_adapter_on_qwen_image_is_still_refused(engine):
    from generation.engine.vocabulary import TINY_QWEN_IMAGE_MODEL_KEY

    with pytest.raises(InvalidRequest, match="serves no IP-Adapter for Qwen-Image"):
        engine.plan(
            make_request(
                model=TINY_QWEN_IMAGE_MODEL_KEY,
                method=Method.IP_ADAPTER,
                references=references(),
            )
        )


def test_an_sd_lora_on_flux_is_refused_with_the_reason(engine, tiny_model_root):
    sd_lora = (tiny_model_root / "lora" / "persona.safetensors").read_bytes()
    with pytest.raises(FamilyMismatch) as error:
        engine.plan(make_request(lora=LoraInput(weights=sd_lora, name="anna")))
    message = str(error.value)
    assert "The LoRA 'anna' is for Stable Diffusion 1.5" in message
    assert "model 'tiny-flux' is FLUX.1, whose denoiser is a Diffusion transformer" in (
        message
    )


def test_a_flux_lora_on_sd15_is_refused_with_the_reason(engine, flux_lora):
    with pytest.raises(FamilyMismatch) as error:
        engine.plan(
            make_request(
                model=TINY_MODEL_KEY,
                guidance_scale=7.5,
                lora=LoraInput(weights=flux_lora, name="flux"),
            )
        )
    message = str(error.value)
    assert "The LoRA 'flux' is for FLUX.1 (Diffusion transformer keys" in message
    assert "whose denoiser is a UNet" in message


def test_sizes_come_in_steps_of_16(engine):
    with pytest.raises(InvalidRequest, match="width 72 is not a multiple of 16"):
        engine.plan(make_request(width=72))


def test_true_cfg_is_refused_on_stable_diffusion(engine):
    with pytest.raises(InvalidRequest, match="true_cfg_scale is for FLUX.1"):
        engine.plan(make_request(model=TINY_MODEL_KEY, true_cfg_scale=2.0))


# --- The registry ------------------------------------------------------------------


def test_every_flux_pipeline_shares_one_transformer(engine):
    registry = engine.registry
    text, _ = registry.pipeline(TINY_FLUX_MODEL_KEY, Method.TEXT)
    img2img, _ = registry.pipeline(TINY_FLUX_MODEL_KEY, Method.IMG2IMG)
    kontext, hit = registry.pipeline(TINY_FLUX_MODEL_KEY, Method.REFERENCE_EDIT)
    assert hit
    assert type(kontext) is FluxKontextPipeline
    assert denoiser_of(text) is denoiser_of(img2img) is denoiser_of(kontext)
    assert text.text_encoder_2 is kontext.text_encoder_2
    assert kontext.scheduler is not text.scheduler
    bases = [entry for entry in registry.stats()["loaded"] if entry["kind"] == "base"]
    assert [entry["label"] for entry in bases].count(TINY_FLUX_MODEL_KEY) == 1


def test_transformer_families_default_to_bf16_on_a_gpu():
    cuda = torch.device("cuda")
    assert choose_dtype(None, cuda, FLUX) is torch.bfloat16
    assert choose_dtype(None, cuda, SD15) is torch.float16
    assert choose_dtype(None, torch.device("cpu"), FLUX) is torch.float32
    assert choose_dtype("float16", cuda, FLUX) is torch.float16


def test_quantization_without_its_library_is_refused_with_what_to_install():
    assert quantization_config(Quantization.NONE) is None
    for quantization in (Quantization.BNB_4BIT, Quantization.TORCHAO_INT8):
        library = "bitsandbytes" if quantization is Quantization.BNB_4BIT else "torchao"
        try:
            __import__(library)
        except ImportError:
            with pytest.raises(ModelNotFound, match=f"pip install {library}"):
                quantization_config(quantization)
        else:
            assert quantization_config(quantization) is not None


def test_the_registry_detects_the_tiny_flux_model_from_its_files(tiny_model_root):
    registry = PipelineRegistry(tiny_engine_config(tiny_model_root))
    traits = registry.traits(TINY_FLUX_MODEL_KEY)
    assert traits.family is FLUX
    assert traits.cross_attention_dim == 32
    assert "'FluxKontextPipeline'" in traits.found


def test_a_flux_request_names_only_a_flow_matching_scheduler(tiny_model_root):
    config = tiny_engine_config(tiny_model_root)
    plan_check(make_request(scheduler="FlowMatchEulerDiscreteScheduler"), config)
    with pytest.raises(InvalidRequest) as error:
        plan_check(make_request(scheduler="DDIMScheduler"), config)
    assert "Unknown scheduler 'DDIMScheduler' for FLUX.1 models" in str(error.value)
    assert "FlowMatchEulerDiscreteScheduler" in str(error.value)


def test_inpainting_a_flux_model_is_refused_with_the_reason(engine):
    from generation.engine.requests import InpaintRequest

    image = noise_image(6, 64, 64)
    request = InpaintRequest(
        model=TINY_FLUX_MODEL_KEY,
        image=image,
        mask=Image.new("L", image.size, 255),
        prompt="a face",
    )
    with pytest.raises(InvalidRequest, match="no inpaint .*for FLUX.1 models"):
        engine.inpaint(request)
