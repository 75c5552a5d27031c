"""Field validators for persona settings; limits are read lazily from settings."""

from __future__ import annotations

from django.core.exceptions import ValidationError

from studio.conf import studio_setting


def validate_multiple_of_8(value: int) -> None:
    if value % 8:
        raise ValidationError(
            "%(value)s is not a multiple of 8; Stable Diffusion needs sizes in "
            "steps of 8 (try %(lower)s or %(upper)s).",
            code="not_multiple_of_8",
            params={"value": value, "lower": value - value % 8,
                    "upper": value - value % 8 + 8},
        )


def _validate_at_most(value: int, limit_name: str, label: str) -> None:
    limit = studio_setting(limit_name)
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
    _validate_at_most(value, "MAX_WIDTH", "Width")


def validate_height(value: int) -> None:
    validate_multiple_of_8(value)
    _validate_at_most(value, "MAX_HEIGHT", "Height")
