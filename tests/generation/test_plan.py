"""The plan check (generation/engine/plan.py): each request sure to fail is
refused before anything is queued, with the engine's message, by the service
every entry point shares; nothing is loaded to find out."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from safetensors.numpy import save as save_safetensors

from generation import services
from generation.engine.config import EngineConfig, ModelSpec, tiny_engine_config
from generation.engine.errors import InvalidRequest, MissingWeights, ModelNotFound
from generation.engine.plan import (
    SCHEDULER_NAMES,
    plan_check,
    plan_problems,
)
from generation.engine.requests import (
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    LoraInput,
    ReferenceInput,
)
from generation.engine.tiny_model import CROSS_ATTENTION_DIM
from generation.engine.vocabulary import TINY_SDXL_MODEL_KEY, ControlType, Method
from generation.models import Content
from generation.parameters import GenerationOverrides
from personas.models import ControlNetUnit, Persona
from personas.services import (
    control_unit_save,
    persona_create,
    persona_set_lora,
    persona_update,
    reference_image_add,
)
from tests.images import encode, halves

OPENPOSE_FILES = ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth")


def lora_file(width: int, *, transformer: bool = False) -> bytes:
    """A sound LoRA whose cross-attention layers take ``width`` features."""
    if transformer:
        key = "transformer.transformer_blocks.0.attn.to_k"
        tensors = {
            f"{key}.lora_A.weight": np.zeros((4, width), np.float32),
            f"{key}.lora_B.weight": np.zeros((width, 4), np.float32),
        }
    else:
        # A layer of the tiny SD 1.5 UNet (64 features out), so that the
        # upload's layer check takes the file where its width fits.
        key = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
        tensors = {
            f"{key}.lora_down.weight": np.zeros((4, width), np.float32),
            f"{key}.lora_up.weight": np.zeros((64, 4), np.float32),
        }
    return save_safetensors(tensors)


def header_of(data: bytes) -> bytes:
    (length,) = struct.unpack("<Q", data[:8])
    return data[: 8 + length]


# --- The engine's check, on plain requests ---------------------------------------


@pytest.fixture
def config(tiny_model_dir: Path, tmp_path: Path) -> EngineConfig:
    config = tiny_engine_config(tiny_model_dir)
    config.annotators_dir = tmp_path / "annotators"
    config.annotators_dir.mkdir()
    return config


def request(**fields) -> GenerationRequest:
    from PIL import Image

    reference = ReferenceInput(image=Image.new("RGB", (8, 8)), primary=True)
    fields.setdefault("references", [reference])
    return GenerationRequest(model="tiny-sd15", prompt="a card", **fields)


def test_the_scheduler_list_is_diffusers_own():
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    assert SCHEDULER_NAMES == tuple(KarrasDiffusionSchedulers.__members__)


def test_a_sound_request_has_no_problem(config):
    assert plan_problems(request(method=Method.IMG2IMG), config) == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"method": Method.IMG2IMG, "references": []},
            "Method img2img needs a reference image",
        ),
        (
            {"method": Method.IP_ADAPTER, "references": []},
            "Method ip_adapter needs a reference image",
        ),
        ({"method": Method.CONTROLNET}, "needs at least one ControlNet unit"),
        ({"method": Method.HYBRID}, "needs at least one ControlNet unit"),
        (
            {"method": Method.IMG2IMG, "strength": 0.02, "steps": 12},
            "raise the steps to 50 or raise the strength to 0.09",
        ),
        ({"scheduler": "NoSuchScheduler"}, "Unknown scheduler 'NoSuchScheduler'"),
    ],
)
def test_a_request_sure_to_fail_is_a_problem_with_the_engine_message(
    config, fields, message
):
    (problem,) = plan_problems(request(**fields), config)
    assert message in problem.message
    with pytest.raises(InvalidRequest, match=re.escape(message)):
        plan_check(request(**fields), config)


def test_a_unit_without_a_configured_controlnet_is_refused(config):
    config.controlnets = {"canny": config.controlnets["canny"]}
    units = [ControlUnitInput(control_type=ControlType.DEPTH)]
    with pytest.raises(ModelNotFound, match="no ControlNet is configured for depth"):
        plan_check(request(method=Method.CONTROLNET, control_units=units), config)


def test_missing_annotator_weights_are_refused_and_present_ones_pass(config):
    units = [ControlUnitInput(control_type=ControlType.OPENPOSE)]
    asked = request(method=Method.CONTROLNET, control_units=units)
    (problem,) = plan_problems(asked, config)
    assert problem.error is MissingWeights
    assert "openpose preprocessor needs the annotator weights" in problem.message
    assert str(config.annotators_dir) in problem.message
    for name in OPENPOSE_FILES:
        (config.annotators_dir / name).write_bytes(b"weights")
    assert plan_problems(asked, config) == []


def test_a_ready_made_control_image_needs_no_annotator_weights(config):
    from PIL import Image

    units = [
        ControlUnitInput(
            control_type=ControlType.OPENPOSE, control_image=Image.new("RGB", (8, 8))
        )
    ]
    assert (
        plan_problems(request(method=Method.CONTROLNET, control_units=units), config)
        == []
    )


def test_a_weight_free_preprocessor_needs_no_annotators(config):
    units = [ControlUnitInput(control_type=ControlType.CANNY)]
    assert (
        plan_problems(request(method=Method.HYBRID, control_units=units), config) == []
    )


def test_an_unknown_preprocessor_option_is_refused(config):
    units = [
        ControlUnitInput(
            control_type=ControlType.CANNY, preprocessor_options={"colour": 3}
        )
    ]
    with pytest.raises(InvalidRequest, match="has no option 'colour'"):
        plan_check(request(method=Method.CONTROLNET, control_units=units), config)


def test_a_model_whose_files_are_missing_is_refused_where_the_weights_live(
    config, tmp_path
):
    config.models["gone"] = ModelSpec(key="gone", source=str(tmp_path / "gone"))
    config.model_roots.append(tmp_path)
    asked = request(method=Method.TEXT)
    asked.model = "gone"
    with pytest.raises(ModelNotFound, match="does not exist"):
        plan_check(asked, config, weights_here=True)
    # A web host holds no weights (docs/deployment.md): it checks the request.
    assert plan_problems(asked, config) == []


def test_an_ip_adapter_that_is_not_installed_is_refused(config):
    config.ip_adapter = None
    asked = request(method=Method.IP_ADAPTER)
    with pytest.raises(InvalidRequest, match="no IP-Adapter is installed"):
        plan_check(asked, config)
    asked = request(method=Method.TEXT, ip_adapter=IPAdapterInput())
    with pytest.raises(InvalidRequest, match="no IP-Adapter is installed"):
        plan_check(asked, config)


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        (lora_file(2048), "is for Stable Diffusion XL"),
        (lora_file(3072, transformer=True), "whose denoiser is a UNet"),
    ],
)
def test_a_lora_of_another_family_is_refused_from_its_header(config, lora, message):
    asked = request(lora=LoraInput(weights=header_of(lora), name="other"))
    with pytest.raises(InvalidRequest, match=message):
        plan_check(asked, config)


def test_a_lora_that_fits_passes(config):
    lora = LoraInput(weights=header_of(lora_file(CROSS_ATTENTION_DIM)))
    assert plan_problems(request(lora=lora), config) == []


# --- The service: refused before queueing, for every entry point ------------------


@pytest.fixture
def studio(db, settings, tiny_model_dir: Path, tmp_path: Path):
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_dir)
    settings.STUDIO_ANNOTATORS_DIR = str(tmp_path / "no-annotators")
    return settings


@pytest.fixture
def ada(studio) -> Persona:
    persona = persona_create(
        name="Ada", appearance="a card", width=64, height=64, steps=12
    )
    reference_image_add(
        persona=persona,
        file=SimpleUploadedFile("ref.png", encode(halves((64, 64)), "PNG")),
        is_primary=True,
    )
    return persona


def refused(persona: Persona, **overrides) -> str:
    with pytest.raises(ValidationError) as error:
        services.content_enqueue(
            persona=persona,
            prompt="a portrait",
            overrides=GenerationOverrides(**overrides),
        )
    assert Content.objects.count() == 0
    return " ".join(error.value.messages)


def test_strength_times_steps_is_refused_before_queueing(ada):
    message = refused(ada, method="img2img", strength=0.02)
    assert "raise the steps to 50 or raise the strength to 0.09" in message


def test_a_batch_is_refused_whole(ada):
    with pytest.raises(ValidationError, match="raise the steps"):
        services.content_enqueue_batch(
            persona=ada,
            prompt="a portrait",
            count=3,
            overrides=GenerationOverrides(method="img2img", strength=0.02),
        )
    assert Content.objects.count() == 0


def test_a_unit_without_annotator_weights_is_refused_before_queueing(ada):
    control_unit_save(unit=ControlNetUnit(persona=ada, control_type="openpose"))
    message = refused(ada, method="controlnet")
    assert "openpose preprocessor needs the annotator weights" in message
    assert "body_pose_model.pth" in message


def test_a_type_without_a_controlnet_is_refused_before_queueing(ada, studio):
    # Saved while a depth ControlNet was configured; the configuration changed
    # since (saving it now is refused: tests/generation/test_family_admin.py).
    control_unit_save(unit=ControlNetUnit(persona=ada, control_type="depth"))
    studio.STUDIO_CONTROLNETS = {"canny": str(Path(studio.STUDIO_TINY_MODEL_DIR))}
    assert "no ControlNet is configured for depth" in refused(ada, method="hybrid")


def test_a_lora_of_another_family_is_refused_before_queueing(ada):
    # Uploaded for its SD 1.5 base (the upload checks that it fits), then the
    # persona moved to SDXL: the LoRA is refused before a job is queued.
    persona_set_lora(
        persona=ada, file=SimpleUploadedFile("sd15.safetensors", lora_file(32))
    )
    persona_update(persona=ada, data={"base_model": TINY_SDXL_MODEL_KEY})
    message = refused(ada, method="text")
    assert "is for a model of cross-attention width 32" in message
    assert "Use a LoRA trained for Stable Diffusion XL" in message


def test_a_retry_with_a_request_sure_to_fail_is_refused(ada):
    content = services.content_enqueue(
        persona=ada,
        prompt="a portrait",
        overrides=GenerationOverrides(method="img2img", strength=0.5),
    )
    Content.objects.filter(pk=content.pk).update(
        status="failed", request={**content.request, "strength": 0.02}
    )
    content.refresh_from_db()
    with pytest.raises(ValidationError, match="raise the steps"):
        services.content_retry(content=content)
    content.refresh_from_db()
    assert content.status == "failed"


def test_the_persona_plan_warnings_name_what_would_fail(ada):
    assert services.persona_plan_warnings(persona=ada) == []
    control_unit_save(unit=ControlNetUnit(persona=ada, control_type="openpose"))
    ada.method = "controlnet"
    ada.save()
    (warning,) = services.persona_plan_warnings(persona=ada)
    assert "openpose preprocessor needs the annotator weights" in warning


def test_saving_a_persona_in_the_admin_warns_of_a_run_sure_to_fail(ada, admin_client):
    from tests.reliability.admin_forms import change_form_data

    url = f"/admin/personas/persona/{ada.pk}/change/"
    data = change_form_data(admin_client.get(url))
    data.update(method="img2img", img2img_strength="0.02")
    response = admin_client.post(url, data, follow=True)
    warnings = [
        str(message)
        for message in response.context["messages"]
        if message.level_tag == "warning"
    ]
    assert len(warnings) == 1
    assert "sure to fail" in warnings[0]
    assert "raise the steps to 50 or raise the strength to 0.09" in warnings[0]
    ada.refresh_from_db()
    assert ada.img2img_strength == 0.02  # saved: a warning, not a refusal


def test_the_command_line_is_refused_with_the_engine_message(ada):
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="raise the steps to 50"):
        call_command(
            "studio_generate",
            persona=ada.slug,
            prompt="a portrait",
            method="img2img",
            strength=0.02,
        )
    assert Content.objects.count() == 0
