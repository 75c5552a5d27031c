"""Admin readiness by model family: the base-model choice names each model's
family, a LoRA of another family is refused at save with the reason, and each
ControlNet unit says whether a ControlNet is configured for its type and model.

The tiny SD 1.5 and SDXL models and their kohya LoRAs are the ones the studio
writes (``write_tiny_model``); the admin is posted through the admin client.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.urls import reverse

from generation.engine.config import (
    TINY_CONTROLNET_DIR,
    TINY_LORA_FILE,
    TINY_SDXL_LORA_FILE,
)
from personas.forms import PersonaForm
from personas.models import ControlNetUnit, Persona
from personas.services import persona_create
from tests.personas.conftest import upload
from tests.personas.test_admin import ADD, errors_in, persona_data

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
