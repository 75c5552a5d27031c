"""true_cfg_scale in the studio: a persona field and a per-run override for the
families with true CFG (Qwen-Image, FLUX.1), refused with the reason on Stable
Diffusion (whose generate page does not offer it), carried into the engine
request beside FLUX.1's distilled ``guidance_scale``; the worker's snapshot and
its replay are in ``test_qwen_image_e2e``."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from generation import services
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
)
from generation.forms import PersonaGenerateForm
from generation.parameters import GenerationOverrides, request_for_persona
from personas.services import persona_create, persona_update
from tests.generation.test_reference_edit import persona_on, studio
from tests.personas.test_admin import ADD, errors_in, persona_data

__all__ = ["studio"]  # the fixture, used by name below

REASON = (
    "true_cfg_scale is for FLUX.1 and Qwen-Image models; Stable Diffusion 1.5 "
    "uses guidance_scale with the negative prompt. Remove it."
)


def _request(persona, **overrides) -> dict:
    request, _ = request_for_persona(
        persona,
        prompt="a portrait",
        negative_prompt="blurry",
        overrides=GenerationOverrides(**overrides),
        seed=1,
    )
    return request


def test_a_qwen_image_persona_keeps_its_true_cfg_scale_and_a_run_overrides_it(studio):
    persona = persona_on(TINY_QWEN_IMAGE_MODEL_KEY, true_cfg_scale=2.5)
    persona.refresh_from_db()
    assert persona.true_cfg_scale == 2.5
    assert _request(persona)["true_cfg_scale"] == 2.5
    assert _request(persona, true_cfg_scale=6.0)["true_cfg_scale"] == 6.0
    persona_update(persona=persona, data={"true_cfg_scale": None})
    # Empty: the pipeline's own default (4.0 on Qwen-Image).
    assert _request(persona)["true_cfg_scale"] is None


def test_flux_keeps_its_distilled_guidance_apart_from_true_cfg(studio):
    persona = persona_on(TINY_FLUX_MODEL_KEY, guidance_scale=3.5, true_cfg_scale=2.0)
    request = _request(persona)
    assert (request["guidance_scale"], request["true_cfg_scale"]) == (3.5, 2.0)


def test_a_true_cfg_scale_on_a_stable_diffusion_persona_is_refused_with_the_reason(
    studio,
):
    with pytest.raises(ValidationError) as refused:
        persona_create(name="Ada", base_model=TINY_MODEL_KEY, true_cfg_scale=3.0)
    assert refused.value.message_dict == {"true_cfg_scale": [REASON]}
    assert refused.value.error_dict["true_cfg_scale"][0].code == "family_true_cfg"
    persona = persona_create(name="Ada", base_model=TINY_MODEL_KEY)
    assert persona.true_cfg_scale is None


def test_the_persona_admin_refuses_it_on_stable_diffusion_and_takes_it_on_qwen(
    studio, admin_client
):
    response = admin_client.post(ADD, persona_data(true_cfg_scale="3"))
    assert response.status_code == 200
    assert REASON in errors_in(response)
    response = admin_client.post(
        ADD,
        persona_data(
            base_model=TINY_QWEN_IMAGE_MODEL_KEY,
            method="text",
            width="64",
            height="64",
            true_cfg_scale="3",
        ),
    )
    assert response.status_code == 302, errors_in(response)


def test_the_generate_page_offers_it_only_where_the_family_has_true_cfg(studio):
    qwen = PersonaGenerateForm(
        persona=persona_on(TINY_QWEN_IMAGE_MODEL_KEY, true_cfg_scale=2.5)
    )
    assert qwen.initial["true_cfg_scale"] == 2.5
    sampling = dict(qwen.groups())["Method and sampling"]
    assert "true_cfg_scale" in [field.name for field in sampling]
    sd_persona = persona_create(name="Sd", base_model=TINY_MODEL_KEY)
    sd = PersonaGenerateForm(persona=sd_persona)
    assert "true_cfg_scale" not in sd.fields


def test_an_out_of_range_or_misplaced_run_override_is_refused_before_queueing(studio):
    with pytest.raises(ValidationError, match="true cfg scale must be between 0.0"):
        GenerationOverrides(true_cfg_scale=31.0).validate()
    sd = persona_create(name="Sd", base_model=TINY_MODEL_KEY)
    with pytest.raises(ValidationError, match="true_cfg_scale is for FLUX.1"):
        services.content_enqueue(
            persona=sd,
            prompt="a portrait",
            overrides=GenerationOverrides(true_cfg_scale=2.0),
        )
    assert not sd.contents.exists()


def test_the_command_line_takes_true_cfg_and_guidance_and_refuses_them_on_sd(studio):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from generation.models import Content

    qwen = persona_on(TINY_QWEN_IMAGE_MODEL_KEY)
    call_command(
        "studio_generate",
        persona=qwen.slug,
        prompt="a portrait",
        true_cfg_scale=3.0,
        guidance_scale=1.5,
        stdout=StringIO(),
    )
    request = Content.objects.latest("pk").request
    assert (request["true_cfg_scale"], request["guidance_scale"]) == (3.0, 1.5)

    sd = persona_create(name="Sd", base_model=TINY_MODEL_KEY)
    with pytest.raises(CommandError, match="true_cfg_scale is for FLUX.1"):
        call_command(
            "studio_generate",
            persona=sd.slug,
            prompt="a portrait",
            true_cfg_scale=2.0,
            stdout=StringIO(),
        )
    assert not sd.contents.exists()
