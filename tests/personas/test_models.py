"""Persona settings validation: clear messages for out-of-range values."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from personas.models import ControlNetUnit, ControlType, Persona, SeedPolicy


def errors_of(instance) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as invalid:
        instance.full_clean()
    return invalid.value.message_dict


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("img2img_strength", 1.5, "less than or equal to 1.0"),
        ("img2img_strength", -0.1, "greater than or equal to 0.0"),
        ("steps", 0, "greater than or equal to 1"),
        ("steps", 151, "less than or equal to 150"),
        ("width", 500, "500 is not a multiple of 8"),
        ("height", 4096, "past the studio's maximum of 2048"),
    ],
)
def test_out_of_range_settings_are_refused_with_a_clear_message(
    db, field, value, message
):
    bare_persona = Persona(name="Ada", slug="ada", **{field: value})

    assert message in " ".join(errors_of(bare_persona)[field])


def test_the_size_limit_follows_the_setting(db, settings):
    settings.STUDIO_MAX_WIDTH = 512

    assert (
        "maximum of 512"
        in errors_of(Persona(name="A", slug="a", width=520))["width"][0]
    )


def test_a_fixed_seed_policy_needs_a_seed(db):
    bare_persona = Persona(name="Ada", slug="ada", seed_policy=SeedPolicy.FIXED)

    assert "needs a seed" in errors_of(bare_persona)["seed"][0]


def test_guidance_start_must_be_below_end(bare_persona):
    unit = ControlNetUnit(
        persona=bare_persona,
        control_type=ControlType.CANNY,
        guidance_start=0.6,
        guidance_end=0.6,
    )

    assert "must be below guidance end" in errors_of(unit)["guidance_end"][0]


def test_defaults_are_valid(bare_persona):
    ControlNetUnit(persona=bare_persona, control_type=ControlType.OPENPOSE).full_clean()
    assert bare_persona.img2img_strength == 0.7
