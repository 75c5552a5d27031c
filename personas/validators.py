"""Field validators for persona settings.

The engine's limits come from its vocabulary; the studio's own (``STUDIO_MAX_*``)
are read lazily from the settings.
"""

from __future__ import annotations

import unicodedata

from django.conf import settings
from django.core.exceptions import ValidationError

from generation.engine.vocabulary import MAX_PROMPT_LENGTH, MIN_SIZE, SIZE_MULTIPLE


def validate_multiple_of_8(value: int) -> None:
    if value % SIZE_MULTIPLE:
        lower = value - value % SIZE_MULTIPLE
        raise ValidationError(
            "%(value)s is not a multiple of %(multiple)s; Stable Diffusion needs "
            "sizes in steps of %(multiple)s (try %(lower)s or %(upper)s).",
            code="not_multiple_of_8",
            params={
                "value": value,
                "multiple": SIZE_MULTIPLE,
                "lower": lower,
                "upper": lower + SIZE_MULTIPLE,
            },
        )


def _validate_at_least(value: int, label: str) -> None:
    if value < MIN_SIZE:
        raise ValidationError(
            "%(label)s %(value)s is below the smallest size the engine takes, "
            "%(limit)s.",
            code="too_small",
            params={"label": label, "value": value, "limit": MIN_SIZE},
        )


def _validate_at_most(value: int, limit: int, limit_name: str, label: str) -> None:
    if value > limit:
        raise ValidationError(
            "%(label)s %(value)s is past the studio's maximum of %(limit)s "
            "(setting STUDIO_%(setting)s).",
            code="too_large",
            params={"label": label, "value": value, "limit": limit,
                    "setting": limit_name},
        )


def validate_width(value: int) -> None:
    validate_multiple_of_8(value)
    _validate_at_least(value, "Width")
    _validate_at_most(value, settings.STUDIO_MAX_WIDTH, "MAX_WIDTH", "Width")


def validate_height(value: int) -> None:
    validate_multiple_of_8(value)
    _validate_at_least(value, "Height")
    _validate_at_most(
        value, settings.STUDIO_MAX_HEIGHT, "MAX_HEIGHT", "Height"
    )


# Bidirectional overrides and isolates can make text read differently from what
# it is ("Trojan Source"); other format characters (joiners...) are fine.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def validate_prompt_text(value: str) -> None:
    """Refuse text typed for the studio (prompts, appearance, negative prompts,
    review notes) longer than ``MAX_PROMPT_LENGTH`` characters, which would only
    waste a worker's memory on text-encoder windows, or carrying control
    characters (NUL, terminal escapes, bidirectional overrides), which no prompt
    needs and which break PostgreSQL, terminals and logs. Tabs and line breaks
    are fine."""
    if len(value) > MAX_PROMPT_LENGTH:
        raise ValidationError(
            "This text is %(length)s characters long; the studio takes at most "
            "%(limit)s: shorten it.",
            code="prompt_too_long",
            params={"length": f"{len(value):,}", "limit": f"{MAX_PROMPT_LENGTH:,}"},
        )
    controls = sorted(
        {
            char
            for char in value
            if char in _BIDI_CONTROLS
            or (unicodedata.category(char) == "Cc" and char not in "\t\n\r")
        }
    )
    if controls:
        raise ValidationError(
            "This text contains control characters (%(found)s): remove them; "
            "letters, punctuation, spaces and line breaks are all it needs.",
            code="control_characters",
            params={"found": ", ".join(f"U+{ord(char):04X}" for char in controls)},
        )
