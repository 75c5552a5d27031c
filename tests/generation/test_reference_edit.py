"""reference_edit in the studio: offered only for personas whose base model's
family edits references (flux here), refused before queueing elsewhere, its
prompt composed as an instruction, its references named per run, and a run
through a real worker on the tiny FLUX.1 Kontext model."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from generation import services
from generation.engine.vocabulary import (
    REFERENCE_EDIT_PROMPT,
    TINY_FLUX_MODEL_KEY,
    Method,
)
from generation.forms import PersonaGenerateForm
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides, request_for_persona
from personas.forms import PersonaForm
from personas.models import Persona, ReferenceRole
from personas.services import persona_create, persona_save, reference_image_add
from tests.images import encode
from tests.workers import make_persona, wait_finished


@pytest.fixture
def studio(db, settings, tiny_model_dir: Path):
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_dir)
    return settings


def add_reference(persona: Persona, role: str, *, primary: bool = False):
    """A reference of a shade of its own (the gallery refuses duplicates)."""
    shade = persona.references.count() * 40
    return reference_image_add(
        persona=persona,
        file=SimpleUploadedFile(
            "ref.png", encode(Image.new("RGB", (64, 64), (shade, 90, 200)), "PNG")
        ),
        is_primary=primary,
        role=role,
    )


def locked(persona: Persona) -> Persona:
    """The persona with its appearance locked (it has a primary reference)."""
    persona.appearance_locked = True
    return persona_save(persona=persona)


def persona_on(base_model: str, **fields) -> Persona:
    persona = persona_create(
        name=f"On {base_model}",
        appearance="a woman with short red hair",
        base_model=base_model,
        width=64,
        height=64,
        steps=3,
        **{"guidance_scale": 3.5, **fields},
    )
    add_reference(persona, ReferenceRole.FULL_BODY, primary=True)
    return persona


def offered(field) -> list[str]:
    return [value for value, _ in field.widget.choices]


def test_the_generate_page_offers_reference_edit_only_on_a_flux_persona(studio):
    flux = PersonaGenerateForm(persona=persona_on(TINY_FLUX_MODEL_KEY))
    sd15 = PersonaGenerateForm(persona=persona_on("tiny-sd15"))
    assert "reference_edit" in offered(flux.fields["method"])
    # FLUX.1 has ControlNet and IP-Adapter pipelines; Qwen-Image has neither.
    assert {"controlnet", "hybrid", "ip_adapter"} <= set(offered(flux.fields["method"]))
    qwen = PersonaGenerateForm(persona=persona_on("tiny-qwen-image"))
    assert "controlnet" not in offered(qwen.fields["method"])
    assert "ip_adapter" not in offered(qwen.fields["method"])
    assert "edit_references" in flux.fields
    assert "reference_edit" not in offered(sd15.fields["method"])
    assert "controlnet" in offered(sd15.fields["method"])
    assert "edit_references" not in sd15.fields


def test_the_persona_form_offers_the_methods_of_the_chosen_base_model(studio):
    flux = PersonaForm(instance=persona_on(TINY_FLUX_MODEL_KEY))
    assert "reference_edit" in offered(flux.fields["method"])
    bound = PersonaForm(data={"base_model": "tiny-sd15"})
    assert "reference_edit" not in offered(bound.fields["method"])


def test_reference_edit_on_an_sd15_persona_is_refused_before_queueing(studio):
    persona = persona_on("tiny-sd15", guidance_scale=7.5)
    with pytest.raises(ValidationError) as error:
        services.content_enqueue(
            persona=persona,
            prompt="on a night street",
            overrides=GenerationOverrides(method=Method.REFERENCE_EDIT),
        )
    message = " ".join(error.value.messages)
    assert "Method reference_edit is not available for Stable Diffusion 1.5" in message
    assert Content.objects.count() == 0


def test_the_instruction_comes_first_and_the_appearance_is_what_to_keep(studio):
    persona = locked(persona_on(TINY_FLUX_MODEL_KEY))
    face = add_reference(persona, ReferenceRole.FACE)
    for method in (Method.REFERENCE_EDIT, Method.AUTO):
        request, _ = request_for_persona(
            persona,
            prompt="now on a night street in the rain.",
            negative_prompt="",
            overrides=GenerationOverrides(method=method),
            seed=1,
        )
        assert request["prompt"] == REFERENCE_EDIT_PROMPT.format(
            instruction="now on a night street in the rain",
            appearance="a woman with short red hair",
        )
    request, references = request_for_persona(
        persona,
        prompt="a portrait",
        negative_prompt="",
        overrides=GenerationOverrides(
            method=Method.REFERENCE_EDIT, edit_references=(face.pk,)
        ),
        seed=1,
    )
    assert request["edit_reference_indexes"] == [
        [reference.pk for reference in references].index(face.pk)
    ]
    text, _ = request_for_persona(
        persona,
        prompt="a portrait",
        negative_prompt="",
        overrides=GenerationOverrides(method=Method.TEXT),
        seed=1,
    )
    assert text["prompt"] == "a woman with short red hair, a portrait"


def test_the_generate_form_puts_the_primary_first_and_caps_the_references(studio):
    persona = persona_on(TINY_FLUX_MODEL_KEY)
    others = [add_reference(persona, ReferenceRole.FACE) for _ in range(3)]
    primary = persona.references.get(is_primary=True)
    data = {
        "prompt": "a portrait",
        "count": 1,
        "method": "reference_edit",
        "strength": 0.7,
        "width": 64,
        "height": 64,
        "steps": 3,
        "guidance_scale": 3.5,
        "seed_policy": "random",
        "ip_adapter_scale": 0.6,
        "detailer_strength": 0.4,
        "detailer_padding": 32,
    }
    form = PersonaGenerateForm(
        {**data, "edit_references": [others[0].pk, primary.pk]}, persona=persona
    )
    assert form.is_valid(), form.errors
    assert form.cleaned_data["edit_references"] == (primary.pk, others[0].pk)
    too_many = PersonaGenerateForm(
        {**data, "edit_references": [primary.pk, *(r.pk for r in others)]},
        persona=persona,
    )
    assert not too_many.is_valid()
    assert "at most 3" in str(too_many.errors["edit_references"])


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_reference_edit_runs_through_a_real_worker_on_the_tiny_flux_model(
    studio_settings, shared_worker
):
    persona = locked(
        make_persona(
            slug="kontext", base_model=TINY_FLUX_MODEL_KEY, guidance_scale=3.5, steps=3
        )
    )
    add_reference(persona, ReferenceRole.FACE)
    content = services.content_enqueue(persona=persona, prompt="on a night street")
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.method_used == "reference_edit"
    assert "reference-editing model (FLUX.1)" in content.method_reason
    snapshot = content.snapshot
    assert snapshot["pipeline_class"] == "FluxKontextPipeline"
    assert snapshot["family"] == "flux"
    assert snapshot["reference_edit"]["multi_reference"] == "stitch"
    assert len(snapshot["reference_edit"]["references"]) == 2
    assert content.output_image
