"""The SDXL refiner as a per-run option: the generate forms offer to switch it
off (the page only for a model that has one), the row's request records the
choice, and the job's request carries it to the engine (whose snapshot replays
it: tests/engine/test_sdxl_refiner.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.engine.config import TINY_SDXL_REFINER_DIR
from generation.forms import GenerateForm, PersonaGenerateForm
from generation.parameters import GenerationOverrides, request_from_row
from generation.services import content_enqueue
from personas.services import persona_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def refiner_studio(settings, tiny_model_dir: Path) -> Path:
    settings.STUDIO_MODEL_ROOTS = [str(tiny_model_dir)]
    settings.STUDIO_MODELS = {
        "xl": {
            "source": str(tiny_model_dir / "sdxl"),
            "refiner": str(tiny_model_dir / TINY_SDXL_REFINER_DIR),
        },
        "sd": {"source": str(tiny_model_dir / "sd15")},
    }
    settings.STUDIO_CONTROLNETS = {}
    settings.STUDIO_IP_ADAPTER = {}
    return tiny_model_dir


def test_a_row_records_the_refiner_switched_off_and_the_job_gets_it(
    refiner_studio, media_root
):
    persona = persona_create(name="Ada", base_model="xl", method="text")
    off = content_enqueue(
        persona=persona,
        prompt="a portrait",
        overrides=GenerationOverrides(use_refiner=False),
    )
    on = content_enqueue(persona=persona, prompt="a portrait")
    assert off.request["use_refiner"] is False
    assert on.request["use_refiner"] is True
    built, _ = request_from_row(off.request, replay_snapshot=None, inputs={})
    assert built.use_refiner is False
    built, _ = request_from_row(on.request, replay_snapshot=None, inputs={})
    assert built.use_refiner is True


def test_the_generate_page_offers_the_refiner_only_where_the_model_has_one(
    refiner_studio,
):
    xl = persona_create(name="Ada", base_model="xl", method="text")
    sd = persona_create(name="Bea", base_model="sd", method="text")
    assert "use_refiner" in PersonaGenerateForm(persona=xl).fields
    assert "use_refiner" not in PersonaGenerateForm(persona=sd).fields
    data = {
        "prompt": "a portrait",
        "count": 1,
        "method": "text",
        "strength": 0.7,
        "width": 512,
        "height": 512,
        "steps": 20,
        "guidance_scale": 7.0,
        "seed_policy": "random",
        "ip_adapter_scale": 0.6,
        "detailer_strength": 0.4,
        "detailer_padding": 32,
    }
    unticked = PersonaGenerateForm(data, persona=xl)
    assert unticked.is_valid(), unticked.errors
    assert GenerationOverrides.from_data(unticked.cleaned_data).use_refiner is False
    ticked = PersonaGenerateForm({**data, "use_refiner": "on"}, persona=xl)
    assert ticked.is_valid(), ticked.errors
    assert GenerationOverrides.from_data(ticked.cleaned_data).use_refiner is True


def test_the_admins_generate_action_can_switch_the_refiner_off(refiner_studio):
    for choice, expected in (("off", False), ("", None)):
        form = GenerateForm({"prompt": "a portrait", "count": 1, "use_refiner": choice})
        assert form.is_valid(), form.errors
        overrides = GenerationOverrides.from_data(form.cleaned_data)
        assert overrides.use_refiner is expected


def test_the_command_line_can_switch_the_refiner_off(refiner_studio, media_root):
    from io import StringIO

    from django.core.management import call_command

    from generation.models import Content

    persona = persona_create(name="Ada", base_model="xl", method="text")
    for flags, expected in (({"no_refiner": True}, False), ({}, True)):
        call_command(
            "studio_generate",
            persona=persona.slug,
            prompt="a portrait",
            stdout=StringIO(),
            **flags,
        )
        assert Content.objects.latest("pk").request["use_refiner"] is expected
