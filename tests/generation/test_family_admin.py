"""Admin readiness by model family: the base-model choice names each model's
family, a LoRA of another family is refused at save with the reason, and each
ControlNet unit says whether a ControlNet is configured for its type and model.

The tiny SD 1.5 and SDXL models and their kohya LoRAs are the ones the studio
writes (``write_tiny_model``); the admin is posted through the admin client.
"""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from django.urls import reverse

from generation.engine.config import (
    TINY_CONTROLNET_DIR,
    TINY_LORA_FILE,
    TINY_SDXL_LORA_FILE,
)
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
)
from personas.forms import PersonaForm
from personas.models import ControlNetUnit, Persona
from personas.services import control_unit_save, persona_create
from tests.engine.qwen_loras import tiny_transformer, transformer_lora, write_lora
from tests.personas.conftest import upload
from tests.personas.test_admin import (
    ADD,
    errors_in,
    management,
    new_unit,
    persona_data,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiny_studio(settings, tiny_model_dir: Path) -> Path:
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_dir)
    settings.STUDIO_CONTROLNETS = {}
    return tiny_model_dir


def test_the_base_model_choice_shows_each_models_family(tiny_studio):
    labels = dict(PersonaForm().fields["base_model"].choices)
    assert labels["tiny-sd15"].endswith("(sd15)")
    assert labels["tiny-sdxl"].endswith("(sdxl)")


def test_an_unknown_family_is_said_in_the_choice(settings, tmp_path: Path):
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "model_index.json").write_text(
        '{"_class_name": "StableDiffusion3Pipeline"}'
    )
    settings.STUDIO_MODELS = {"odd": {"source": str(folder), "label": "Odd"}}
    settings.STUDIO_MODEL_ROOTS = [str(tmp_path)]
    labels = dict(PersonaForm().fields["base_model"].choices)
    assert labels["odd"] == "Odd (family unknown: see the system check)"


def test_a_lora_of_another_family_is_refused_at_save_with_the_reason(
    tiny_studio, admin_client, media_root
):
    sd15_lora = (tiny_studio / TINY_LORA_FILE).read_bytes()
    response = admin_client.post(
        ADD,
        persona_data(
            base_model="tiny-sdxl",
            lora_upload=upload("persona.safetensors", sd15_lora),
        ),
    )
    assert response.status_code == 200
    errors = errors_in(response)
    assert (
        "The LoRA 'persona.safetensors' is for Stable Diffusion 1.5 "
        "(kohya text-encoder keys lora_te_*" in errors
    ), errors
    assert "model 'tiny-sdxl' is Stable Diffusion XL" in errors
    assert not Persona.objects.exists()


def test_a_lora_of_the_models_family_is_accepted(tiny_studio, admin_client, media_root):
    sdxl_lora = (tiny_studio / TINY_SDXL_LORA_FILE).read_bytes()
    response = admin_client.post(
        ADD,
        persona_data(
            base_model="tiny-sdxl",
            lora_upload=upload("persona-sdxl.safetensors", sdxl_lora),
        ),
    )
    assert response.status_code == 302, errors_in(response)
    assert Persona.objects.get().lora_weights


@pytest.mark.parametrize("style", ["diffusers", "comfyui", "attention-only"])
def test_qwen_image_loras_of_each_style_are_accepted_for_a_qwen_image_persona(
    tiny_studio, admin_client, media_root, tmp_path, style
):
    weights = qwen_lora_bytes(tiny_studio, tmp_path, style)
    response = admin_client.post(
        ADD,
        persona_data(
            base_model=TINY_QWEN_IMAGE_MODEL_KEY,
            lora_upload=upload(f"{style}.safetensors", weights),
        ),
    )
    assert response.status_code == 302, errors_in(response)
    assert Persona.objects.get().lora_weights


def test_an_attention_only_qwen_lora_is_refused_for_a_flux_persona(
    tiny_studio, admin_client, media_root, tmp_path
):
    weights = qwen_lora_bytes(tiny_studio, tmp_path, "attention-only")
    response = admin_client.post(
        ADD,
        persona_data(
            base_model=TINY_FLUX_MODEL_KEY,
            lora_upload=upload("attention.safetensors", weights),
        ),
    )
    assert response.status_code == 200
    errors = errors_in(response)
    assert "transformer_blocks 0-1, attention width 48" in errors, errors
    assert "model 'tiny-flux' is FLUX.1 with 1 transformer_blocks" in errors
    assert not Persona.objects.exists()


def qwen_lora_bytes(root: Path, folder: Path, style: str) -> bytes:
    transformer = tiny_transformer(root, "qwen-image")
    attention_only = style == "attention-only"
    weights = transformer_lora(
        transformer,
        "diffusers" if attention_only else style,
        attention_only=attention_only,
    )
    return write_lora(weights, folder / "lora.safetensors").read_bytes()


def test_each_controlnet_unit_says_whether_its_controlnet_is_configured(
    tiny_studio, settings, admin_client
):
    settings.STUDIO_CONTROLNETS = {
        "canny": str(tiny_studio / TINY_CONTROLNET_DIR / "canny")
    }
    persona = persona_create(name="Ada", base_model="tiny-sd15")
    ControlNetUnit.objects.create(persona=persona, control_type="canny", order=0)
    ControlNetUnit.objects.create(persona=persona, control_type="openpose", order=1)
    page = admin_client.get(
        reverse("admin:personas_persona_change", args=[persona.pk])
    ).content.decode()
    assert f"Ready: {tiny_studio / TINY_CONTROLNET_DIR / 'canny'}" in page
    assert (
        "Not configured: no ControlNet for &#x27;openpose&#x27; on model "
        "&#x27;tiny-sd15&#x27; (configured: canny)" in page
    )


def test_a_controlnet_whose_files_are_missing_is_said_so(
    tiny_studio, settings, admin_client, tmp_path: Path
):
    missing = tiny_studio / TINY_CONTROLNET_DIR / "gone"
    settings.STUDIO_CONTROLNETS = {"canny": str(missing)}
    persona = persona_create(name="Ada", base_model="tiny-sd15")
    ControlNetUnit.objects.create(persona=persona, control_type="canny", order=0)
    page = admin_client.get(
        reverse("admin:personas_persona_change", args=[persona.pk])
    ).content.decode()
    assert f"Configured as {missing}, but not usable here" in page


def sdxl_ip_adapter_for_everyone(settings, root: Path) -> None:
    """The engine-wide IP-Adapter is the SDXL one: it fits no SD 1.5 model."""
    settings.STUDIO_IP_ADAPTER = {
        "source": str(root / "ip-adapter"),
        "subfolder": "sdxl_models",
        "weight_name": "ip-adapter_sdxl_vit-h.safetensors",
        "face_weight_name": "ip-adapter-plus-face_sdxl_vit-h.safetensors",
    }


def test_a_method_the_models_family_cannot_use_is_refused_at_save(
    tiny_studio, settings, admin_client
):
    sdxl_ip_adapter_for_everyone(settings, tiny_studio)
    response = admin_client.post(
        ADD, persona_data(base_model="tiny-sd15", method="ip_adapter")
    )
    assert response.status_code == 200
    errors = errors_in(response)
    assert "does not fit model 'tiny-sd15' (Stable Diffusion 1.5)" in errors, errors
    assert not Persona.objects.exists()
    # The SDXL model has its own, fitting IP-Adapter.
    response = admin_client.post(
        ADD, persona_data(base_model="tiny-sdxl", method="ip_adapter")
    )
    assert response.status_code == 302, errors_in(response)


def test_a_method_without_its_adapter_configured_is_refused_with_the_reason(
    tiny_studio, settings, tmp_path: Path
):
    settings.STUDIO_MODELS = {
        "sd15": {"source": str(tiny_studio / "sd15"), "family": "sd15"}
    }
    settings.STUDIO_MODEL_ROOTS = [str(tiny_studio)]
    settings.STUDIO_IP_ADAPTER = {}
    from django.core.exceptions import ValidationError

    from personas.services import persona_check_method

    with pytest.raises(ValidationError, match="has no IP-Adapter configured"):
        persona_check_method(base_model="sd15", method="ip_adapter")
    with pytest.raises(ValidationError, match="none is configured for model 'sd15'"):
        persona_check_method(base_model="sd15", method="hybrid")
    persona_check_method(base_model="sd15", method="img2img")


def test_a_control_unit_of_another_familys_controlnet_is_refused_at_save(
    tiny_studio, settings, admin_client
):
    settings.STUDIO_CONTROLNETS = {
        "canny": str(tiny_studio / "controlnet-sdxl" / "canny")
    }
    response = admin_client.post(
        ADD,
        persona_data(
            base_model="tiny-sd15",
            **management("control_units", 1),
            **new_unit(0, control_type="canny"),
        ),
    )
    assert response.status_code == 200
    errors = errors_in(response)
    assert "is a Stable Diffusion XL ControlNet" in errors, errors
    assert "model 'tiny-sd15' is Stable Diffusion 1.5" in errors
    assert not ControlNetUnit.objects.exists()


def test_a_control_type_without_a_controlnet_is_refused_unless_disabled(
    tiny_studio, settings
):
    settings.STUDIO_CONTROLNETS = {
        "canny": str(tiny_studio / TINY_CONTROLNET_DIR / "canny")
    }
    from django.core.exceptions import ValidationError

    persona = persona_create(name="Ada", base_model="tiny-sd15")
    unit = ControlNetUnit(persona=persona, control_type="depth", order=0)
    with pytest.raises(
        ValidationError, match="No ControlNet is configured for 'depth'"
    ):
        control_unit_save(unit=unit)
    unit.enabled = False  # kept for later, not used: accepted
    control_unit_save(unit=unit)
    assert ControlNetUnit.objects.get().control_type == "depth"


def test_preprocessor_options_are_validated_at_save(tiny_studio, admin_client):
    response = admin_client.post(
        ADD,
        persona_data(
            **management("control_units", 1),
            **new_unit(0, control_type="canny", options='{"low_threshold": "high"}'),
        ),
    )
    assert response.status_code == 200
    errors = errors_in(response)
    assert "low_threshold" in errors, errors
    response = admin_client.post(
        ADD,
        persona_data(
            **management("control_units", 1),
            **new_unit(0, control_type="canny", options='{"preprocessor": "midas"}'),
        ),
    )
    assert "midas" in errors_in(response)
    assert not Persona.objects.exists()


def test_each_unit_says_whether_its_annotator_weights_are_present(
    tiny_studio, settings, admin_client, tmp_path: Path, monkeypatch
):
    import huggingface_hub.constants

    monkeypatch.setattr(
        huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache")
    )
    annotators = tmp_path / "annotators"
    annotators.mkdir()
    (annotators / "table5_pidinet.pth").write_bytes(b"weights")
    settings.STUDIO_ANNOTATORS_DIR = str(annotators)
    persona = persona_create(name="Ada", base_model="tiny-sd15")
    for order, (control_type, options) in enumerate(
        [
            ("canny", {}),
            ("openpose", {}),
            ("softedge", {"preprocessor": "softedge_pidinet"}),
        ]
    ):
        ControlNetUnit.objects.create(
            persona=persona,
            control_type=control_type,
            order=order,
            preprocessor_options=options,
        )
    page = html.unescape(
        admin_client.get(
            reverse("admin:personas_persona_change", args=[persona.pk])
        ).content.decode()
    )
    assert "annotator canny: ready (needs no weights)" in page
    assert "annotator openpose: not ready:" in page
    assert "body_pose_model.pth" in page
    assert "annotator softedge_pidinet: ready (table5_pidinet.pth present)" in page


# --- The method check at every entry point --------------------------------------------

SD15_IP_ADAPTER_REFUSAL = "does not fit model 'tiny-sd15' (Stable Diffusion 1.5)"


def method_refusal(error: pytest.ExceptionInfo) -> str:
    """The message a refused save gives on its ``method`` field."""
    (message,) = error.value.message_dict["method"]
    return message


def test_the_services_refuse_a_method_the_models_family_cannot_use(
    tiny_studio, settings
):
    """The same message as the admin's, from ``persona_create`` and
    ``persona_update`` (the import of a persona by code, the gallery)."""
    from django.core.exceptions import ValidationError

    from personas.services import persona_update

    sdxl_ip_adapter_for_everyone(settings, tiny_studio)
    with pytest.raises(ValidationError) as error:
        persona_create(name="Ada", base_model="tiny-sd15", method="ip_adapter")
    assert SD15_IP_ADAPTER_REFUSAL in method_refusal(error)
    assert not Persona.objects.exists()

    persona = persona_create(name="Ada", base_model="tiny-sd15", method="text")
    with pytest.raises(ValidationError) as error:
        persona_update(persona=persona, data={"method": "ip_adapter"})
    assert SD15_IP_ADAPTER_REFUSAL in method_refusal(error)
    # A change of model is checked too: the SDXL persona cannot move to SD 1.5.
    sdxl = persona_create(name="Bea", base_model="tiny-sdxl", method="ip_adapter")
    with pytest.raises(ValidationError) as error:
        persona_update(persona=sdxl, data={"base_model": "tiny-sd15"})
    assert SD15_IP_ADAPTER_REFUSAL in method_refusal(error)
    persona.refresh_from_db()
    sdxl.refresh_from_db()
    assert (persona.method, sdxl.base_model) == ("text", "tiny-sdxl")


def test_a_save_that_leaves_method_and_model_alone_is_not_refused(
    tiny_studio, settings
):
    """A persona whose model lost its fitting IP-Adapter since keeps its other
    edits (its runs are refused at generate, with the reason)."""
    from personas.services import persona_update

    persona = persona_create(name="Ada", base_model="tiny-sd15", method="ip_adapter")
    sdxl_ip_adapter_for_everyone(settings, tiny_studio)
    persona_update(persona=persona, data={"steps": 12})
    persona.refresh_from_db()
    assert persona.steps == 12


def test_use_this_value_refuses_a_method_the_model_cannot_use_any_more(
    tiny_studio, settings, media_root
):
    """The gallery's "use this value" writes through ``persona_update``: the
    same message, and the persona is left as it was."""
    from django.core.exceptions import ValidationError

    from generation import services
    from generation.engine.vocabulary import GridParameter
    from generation.grids import GridAxis
    from personas.services import reference_image_add
    from tests.images import encode, halves

    persona = persona_create(
        name="Ada", base_model="tiny-sd15", method="text", width=64, height=64
    )
    reference_image_add(
        persona=persona, file=upload("face.png", encode(halves(), "PNG")), role="face"
    )
    grid = services.content_grid(
        persona=persona,
        prompt="x",
        axes=[
            GridAxis(parameter=GridParameter.METHOD, values=("text", "ip_adapter"))
        ],
    )
    sdxl_ip_adapter_for_everyone(settings, tiny_studio)
    with pytest.raises(ValidationError) as error:
        services.persona_use_grid_value(batch=grid, axis_index=0, value_index=1)
    assert SD15_IP_ADAPTER_REFUSAL in method_refusal(error)
    persona.refresh_from_db()
    assert persona.method == "text"
