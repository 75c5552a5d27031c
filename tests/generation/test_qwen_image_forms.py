"""The generate page and the persona form on a Qwen-Image persona: the family's
methods only (text and reference_edit), with the edit references."""

from __future__ import annotations

from generation.engine.vocabulary import TINY_QWEN_IMAGE_MODEL_KEY
from generation.forms import PersonaGenerateForm
from personas.forms import PersonaForm
from tests.generation.test_reference_edit import offered, persona_on, studio

__all__ = ["studio"]  # the fixture, used by name below


def test_a_qwen_image_persona_is_offered_text_and_reference_edit_only(studio):
    persona = persona_on(TINY_QWEN_IMAGE_MODEL_KEY, guidance_scale=4.0)
    generate = PersonaGenerateForm(persona=persona)
    methods = offered(generate.fields["method"])
    assert "reference_edit" in methods and "text" in methods
    for other in ("img2img", "controlnet", "hybrid", "ip_adapter"):
        assert other not in methods
    assert "edit_references" in generate.fields
    assert "reference_edit" in offered(PersonaForm(instance=persona).fields["method"])
