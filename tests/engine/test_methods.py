"""The method rules: auto choices and their reasons, pipeline classes, and every
awkward request refused before any model is loaded."""

from __future__ import annotations

import diffusers
import pytest
from PIL import Image

from generation.engine.errors import InvalidRequest, ModelNotFound
from generation.engine.methods import (
    MethodPlan,
    denoising_steps,
    pipeline_class,
    plan_method,
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
)

MODELS = ("tiny",)
CONTROLNETS = ("canny", "openpose")


def reference(role: ReferenceRole = ReferenceRole.OTHER, primary: bool = False):
    return ReferenceInput(
        image=Image.new("RGB", (64, 64), "gray"), role=role, primary=primary
    )


def request(**overrides) -> GenerationRequest:
    values = {"model": "tiny", "prompt": "a portrait", "steps": 4, "width": 64}
    values["height"] = 64
    return GenerationRequest(**{**values, **overrides})


def plan(installed: bool = True, **overrides) -> MethodPlan:
    return plan_method(
        request(**overrides),
        models=MODELS,
        controlnets=CONTROLNETS,
        ip_adapter_installed=installed,
    )


CANNY = ControlUnitInput(control_type=ControlType.CANNY)


@pytest.mark.parametrize(
    ("overrides", "installed", "method", "base", "with_ip_adapter", "reason_part"),
    [
        ({}, True, Method.TEXT, Method.TEXT, False, "no reference"),
        (
            {"references": [reference()], "appearance_locked": True},
            True,
            Method.IMG2IMG,
            Method.IMG2IMG,
            False,
            "locked appearance",
        ),
        (
            {"references": [reference()]},
            True,
            Method.TEXT,
            Method.TEXT,
            False,
            "appearance not locked",
        ),
        (
            {"references": [reference()], "control_units": [CANNY]},
            True,
            Method.CONTROLNET,
            Method.CONTROLNET,
            False,
            "control units",
        ),
        (
            {
                "references": [reference()],
                "control_units": [CANNY],
                "appearance_locked": True,
            },
            True,
            Method.HYBRID,
            Method.HYBRID,
            False,
            "hybrid",
        ),
        (
            {
                "control_units": [
                    ControlUnitInput(
                        ControlType.CANNY, control_image=Image.new("RGB", (8, 8))
                    )
                ],
                "appearance_locked": True,
            },
            True,
            Method.CONTROLNET,
            Method.CONTROLNET,
            False,
            "no reference to start from",
        ),
        (
            {"references": [reference(ReferenceRole.FACE)]},
            True,
            Method.IP_ADAPTER,
            Method.TEXT,
            True,
            "IP-Adapter added",
        ),
        (
            {"references": [reference(ReferenceRole.FACE)], "appearance_locked": True},
            True,
            Method.IP_ADAPTER,
            Method.IMG2IMG,
            True,
            "IP-Adapter added",
        ),
        (
            {
                "references": [reference(ReferenceRole.FACE)],
                "control_units": [CANNY],
                "appearance_locked": True,
            },
            True,
            Method.HYBRID,
            Method.HYBRID,
            True,
            "IP-Adapter added",
        ),
        (
            {"references": [reference(ReferenceRole.FACE)]},
            False,
            Method.TEXT,
            Method.TEXT,
            False,
            "no IP-Adapter installed",
        ),
        (
            {
                "references": [reference(ReferenceRole.STYLE)],
                "ip_adapter": IPAdapterInput(reference_indexes=[0]),
            },
            True,
            Method.IP_ADAPTER,
            Method.TEXT,
            True,
            "IP-Adapter references named",
        ),
    ],
)
def test_auto_rules_choose_the_documented_method_and_say_why(
    overrides, installed, method, base, with_ip_adapter, reason_part
):
    chosen = plan(installed, **overrides)
    assert (chosen.method, chosen.base) == (method, base)
    assert (chosen.ip_adapter is not None) == with_ip_adapter
    assert reason_part in chosen.reason


@pytest.mark.parametrize(
    ("overrides", "base", "class_name"),
    [
        ({"method": Method.TEXT}, Method.TEXT, "StableDiffusionPipeline"),
        (
            {"method": Method.IMG2IMG, "references": [reference()]},
            Method.IMG2IMG,
            "StableDiffusionImg2ImgPipeline",
        ),
        (
            {
                "method": Method.CONTROLNET,
                "references": [reference()],
                "control_units": [CANNY],
            },
            Method.CONTROLNET,
            "StableDiffusionControlNetPipeline",
        ),
        (
            {
                "method": Method.HYBRID,
                "references": [reference()],
                "control_units": [CANNY],
            },
            Method.HYBRID,
            "StableDiffusionControlNetImg2ImgPipeline",
        ),
        (
            {"method": Method.IP_ADAPTER, "references": [reference()]},
            Method.TEXT,
            "StableDiffusionPipeline",
        ),
        (
            {
                "method": Method.IP_ADAPTER,
                "references": [reference()],
                "appearance_locked": True,
            },
            Method.IMG2IMG,
            "StableDiffusionImg2ImgPipeline",
        ),
    ],
)
def test_explicit_methods_map_to_their_diffusers_pipeline(overrides, base, class_name):
    chosen = plan(**overrides)
    assert chosen.method is overrides["method"]
    assert chosen.base is base
    assert chosen.pipeline_class_name == class_name
    assert pipeline_class(chosen.base) is getattr(diffusers, class_name)


@pytest.mark.parametrize("method", [Method.AUTO, Method.IP_ADAPTER, "inpaint"])
def test_a_method_without_a_pipeline_of_its_own_is_a_clear_error(method):
    with pytest.raises(InvalidRequest, match="No pipeline runs method"):
        pipeline_class(method)


def test_explicit_method_with_ip_adapter_settings_layers_the_ip_adapter():
    chosen = plan(
        method=Method.HYBRID,
        references=[
            reference(),
            reference(ReferenceRole.FACE),
            reference(ReferenceRole.FACE),
        ],
        control_units=[CANNY],
        ip_adapter=IPAdapterInput(scale=0.5),
    )
    assert chosen.base is Method.HYBRID
    assert chosen.ip_adapter.scale == 0.5
    assert chosen.ip_adapter_references == (1, 2)  # every face reference


def test_references_resolve_to_the_primary_one_by_default():
    chosen = plan(
        method=Method.HYBRID,
        references=[reference(), reference(primary=True)],
        control_units=[
            CANNY,
            ControlUnitInput(ControlType.OPENPOSE, reference_index=0),
        ],
        ip_adapter=IPAdapterInput(),
    )
    assert chosen.init_reference == 1
    assert chosen.unit_references == (1, 0)
    assert chosen.ip_adapter_references == (1,)  # no face reference: the primary one
    assert chosen.control_types == (ControlType.CANNY, ControlType.OPENPOSE)


def test_ready_made_control_image_needs_no_reference():
    unit = ControlUnitInput(ControlType.CANNY, control_image=Image.new("RGB", (64, 64)))
    chosen = plan(method=Method.CONTROLNET, control_units=[unit])
    assert chosen.unit_references == (None,)


@pytest.mark.parametrize(
    ("steps", "strength", "runs"),
    [(4, 0.25, 1), (4, 0.2, 0), (3, 0.34, 1), (3, 0.33, 0)],
)
def test_denoising_steps_follow_diffusers_get_timesteps(steps, strength, runs):
    assert denoising_steps(steps, strength) == runs


def test_strength_below_one_denoising_step_is_refused_with_advice():
    with pytest.raises(InvalidRequest) as error:
        plan(method=Method.IMG2IMG, references=[reference()], steps=4, strength=0.2)
    message = str(error.value)
    assert "0 denoising steps" in message
    assert "raise the steps to 5 or raise the strength to 0.25" in message


def test_strength_matters_only_to_methods_that_use_it():
    assert plan(method=Method.TEXT, steps=2, strength=0.1).base is Method.TEXT


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"model": "sdxl"}, ModelNotFound, "Unknown model 'sdxl'"),
        (
            {"width": 100},
            InvalidRequest,
            "width 100 is not a multiple of 8; use 96 or 104",
        ),
        ({"height": 72 + 4}, InvalidRequest, "height 76 is not a multiple of 8"),
        ({"width": 32}, InvalidRequest, "width must be between"),
        ({"steps": 0}, InvalidRequest, "steps must be between"),
        ({"steps": 2.5}, InvalidRequest, "steps must be a whole number"),
        ({"num_images": 0}, InvalidRequest, "num_images must be between"),
        ({"seed": -1}, InvalidRequest, "seed must be between"),
        ({"guidance_scale": 99}, InvalidRequest, "guidance_scale must be between"),
        ({"strength": 1.5}, InvalidRequest, "strength must be between"),
        ({"method": "inpaint"}, InvalidRequest, "Unknown method 'inpaint'"),
        ({"scheduler": "MyScheduler"}, InvalidRequest, "Unknown scheduler"),
        ({"method": Method.IMG2IMG}, InvalidRequest, "needs a reference image"),
        (
            {"method": Method.HYBRID, "control_units": [CANNY]},
            InvalidRequest,
            "needs a reference",
        ),
        ({"method": Method.IP_ADAPTER}, InvalidRequest, "needs a reference image"),
        (
            {"method": Method.CONTROLNET},
            InvalidRequest,
            "needs at least one ControlNet unit",
        ),
        (
            {"method": Method.TEXT, "control_units": [CANNY]},
            InvalidRequest,
            "takes no ControlNet units",
        ),
        (
            {"method": Method.CONTROLNET, "control_units": [CANNY]},
            InvalidRequest,
            "neither a control image nor a reference",
        ),
        (
            {
                "control_units": [ControlUnitInput(ControlType.DEPTH)],
                "references": [reference()],
            },
            ModelNotFound,
            "no ControlNet is configured for depth",
        ),
        (
            {
                "control_units": [
                    ControlUnitInput(ControlType.CANNY, reference_index=3)
                ],
                "references": [reference()],
            },
            InvalidRequest,
            "reference index 3 is out of range",
        ),
        (
            {
                "control_units": [
                    ControlUnitInput(
                        ControlType.CANNY, guidance_start=0.6, guidance_end=0.4
                    )
                ],
                "references": [reference()],
            },
            InvalidRequest,
            "must come before the guidance end",
        ),
        (
            {
                "control_units": [
                    ControlUnitInput(ControlType.CANNY, conditioning_scale=3)
                ],
                "references": [reference()],
            },
            InvalidRequest,
            "conditioning scale must be between",
        ),
        (
            {
                "references": [reference()],
                "ip_adapter": IPAdapterInput(reference_indexes=[]),
            },
            InvalidRequest,
            "reference list is empty",
        ),
        (
            {
                "references": [reference()],
                "ip_adapter": IPAdapterInput(reference_indexes=[1]),
            },
            InvalidRequest,
            "IP-Adapter: reference index 1 is out of range",
        ),
        (
            {"references": [reference()], "ip_adapter": IPAdapterInput(scale=5)},
            InvalidRequest,
            "IP-Adapter scale must be between",
        ),
        ({"lora": LoraInput(weights=b"")}, InvalidRequest, "The LoRA has no weights"),
        ({"lora": LoraInput(weights=b"x", scale=9)}, InvalidRequest, "LoRA scale"),
    ],
)
def test_awkward_requests_are_refused_with_a_clear_message(overrides, error, message):
    with pytest.raises(error, match=message):
        plan(**overrides)


def test_explicit_ip_adapter_needs_an_installed_adapter():
    with pytest.raises(InvalidRequest, match="no IP-Adapter is installed"):
        plan(False, method=Method.IP_ADAPTER, references=[reference()])
    with pytest.raises(InvalidRequest, match="no IP-Adapter is installed"):
        plan(
            False,
            method=Method.TEXT,
            references=[reference()],
            ip_adapter=IPAdapterInput(),
        )


def test_plan_is_a_pure_function_of_the_request():
    overrides = {
        "references": [reference(ReferenceRole.FACE)],
        "appearance_locked": True,
    }
    assert plan(**overrides) == plan(**overrides)
