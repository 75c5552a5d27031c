"""auto and reference_edit on the persona's own identity record.

A locked FLUX.1 Kontext persona with a reference: the rules choose
reference_edit; once its scored outputs are enough, the method that kept its
identity best is chosen instead, among the methods its model runs (on
Qwen-Image text and reference_edit: outputs made with ip_adapter or img2img on
an earlier base do not compete). The identity values are given to the rows, as
in ``test_identity``; the rows are the real ones the services make.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from generation import services
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
)
from personas.models import Persona, ReferenceRole
from personas.services import persona_save
from tests.generation.test_identity import _persona, _scored, _upload, queues

__all__ = ["queues"]  # the fixture, used by name below

pytestmark = pytest.mark.django_db

INSTRUCTION = "now on a night street in the rain"


@pytest.fixture
def kontext_persona(queues, tiny_model_dir: Path) -> Persona:
    """A locked persona on the tiny FLUX.1 Kontext model, with its primary
    reference."""
    persona = _persona(
        "kay",
        base_model=TINY_FLUX_MODEL_KEY,
        method="auto",
        guidance_scale=3.5,
        appearance="a woman with short red hair",
    )
    _upload(persona, Image.new("RGB", (64, 64), "red"), role=ReferenceRole.FULL_BODY,
            primary=True)
    persona.appearance_locked = True
    return persona_save(persona=persona)


@pytest.fixture
def qwen_persona(queues, tiny_model_dir: Path) -> Persona:
    """A locked persona on the tiny Qwen-Image-Edit model (text and
    reference_edit only), with its primary reference."""
    persona = _persona(
        "quinn",
        base_model=TINY_QWEN_IMAGE_MODEL_KEY,
        method="auto",
        appearance="a woman with short red hair",
    )
    _upload(persona, Image.new("RGB", (64, 64), "red"), role=ReferenceRole.FULL_BODY,
            primary=True)
    persona.appearance_locked = True
    return persona_save(persona=persona)


def _record(persona: Persona, **by_method: tuple[float, int]) -> None:
    for method, (similarity, count) in by_method.items():
        for _ in range(count):
            _scored(persona, similarity, method=method)


def test_auto_picks_reference_edit_when_the_record_favours_it(kontext_persona):
    _record(
        kontext_persona,
        reference_edit=(0.84, 20),
        img2img=(0.6, 22),
    )

    content = services.content_enqueue(persona=kontext_persona, prompt=INSTRUCTION)

    assert content.method_requested == "auto"
    assert content.request["method"] == "reference_edit"
    assert content.method_reason == (
        "auto by identity: reference_edit kept identity best: 0.84 over 20 "
        "outputs, img2img 0.60 over 22"
    )
    # Its prompt is an instruction, the appearance what to keep.
    assert content.request["prompt"] == (
        f"{INSTRUCTION}. Keep the same person: a woman with short red hair."
    )


def test_only_the_methods_the_base_model_runs_compete(qwen_persona):
    _record(
        qwen_persona,
        reference_edit=(0.84, 20),
        text=(0.5, 20),
        # Made on an earlier Stable Diffusion base: Qwen-Image runs neither.
        ip_adapter=(0.95, 30),
        img2img=(0.9, 25),
    )

    content = services.content_enqueue(persona=qwen_persona, prompt=INSTRUCTION)

    assert content.request["method"] == "reference_edit"
    assert content.method_reason == (
        "auto by identity: reference_edit kept identity best: 0.84 over 20 "
        "outputs, text 0.50 over 20"
    )


def test_auto_picks_img2img_over_the_rules_when_the_record_favours_it(
    kontext_persona,
):
    _record(kontext_persona, reference_edit=(0.55, 20), img2img=(0.8, 20))

    content = services.content_enqueue(persona=kontext_persona, prompt=INSTRUCTION)

    assert content.request["method"] == "img2img"
    assert content.method_reason == (
        "auto by identity: img2img kept identity best: 0.80 over 20 outputs, "
        "reference_edit 0.55 over 20"
    )
    assert content.request["prompt"] == f"a woman with short red hair, {INSTRUCTION}"


def test_without_enough_of_a_record_the_rules_choose_reference_edit(
    kontext_persona,
):
    _record(kontext_persona, reference_edit=(0.9, 19), img2img=(0.4, 20))

    content = services.content_enqueue(persona=kontext_persona, prompt=INSTRUCTION)

    assert content.request["method"] == "auto"
    assert content.method_reason == (
        "the rules apply: scored outputs img2img 20, reference_edit 19 (identity "
        "decides once two methods have 20 scored outputs each)"
    )
    # The rules will edit the references: the prompt is composed for it.
    assert content.request["prompt"].startswith(f"{INSTRUCTION}. Keep the same")
