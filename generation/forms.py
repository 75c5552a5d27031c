"""What the staff operations that need input ask for (``generation.actions``).

Empty overrides keep each persona's settings; the services check every value
again, so a form only shapes the input and writes its errors beside the field.
"""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError

from generation import services
from generation.engine.vocabulary import (
    MAX_BATCH_COUNT,
    MAX_FRACTION,
    MAX_SEED,
    MIN_FRACTION,
    MIN_SEED,
)
from personas.models import ConsistencyMethod
from personas.validators import validate_prompt_text


def _prompt_field(*, rows: int, required: bool = True) -> forms.CharField:
    return forms.CharField(
        required=required,
        widget=forms.Textarea(attrs={"rows": rows}),
        validators=[validate_prompt_text],
    )


def _seed_field(*, help_text: str) -> forms.IntegerField:
    return forms.IntegerField(
        required=False, min_value=MIN_SEED, max_value=MAX_SEED, help_text=help_text
    )


class GenerateForm(forms.Form):
    """What "Generate…" asks for; empty overrides keep each persona's settings."""

    prompt = _prompt_field(rows=3)
    negative_prompt = _prompt_field(rows=2, required=False)
    count = forms.IntegerField(min_value=1, max_value=MAX_BATCH_COUNT, initial=1)
    method = forms.ChoiceField(
        required=False,
        choices=[("", "The persona's method"), *ConsistencyMethod.choices],
    )
    strength = forms.FloatField(
        required=False,
        min_value=MIN_FRACTION,
        max_value=MAX_FRACTION,
        help_text="img2img strength; empty keeps the persona's.",
    )
    seed = _seed_field(help_text="Empty follows the seed policy.")
    keep_best = forms.IntegerField(
        label="keep the best",
        required=False,
        min_value=1,
        max_value=MAX_BATCH_COUNT - 1,
        help_text="Best K of N by identity: once all are scored, the others are "
        "kept but marked 'not kept'. Empty keeps every one.",
    )

    def clean(self) -> dict:
        cleaned = super().clean()
        keep, count = cleaned.get("keep_best"), cleaned.get("count")
        if keep is not None and count is not None and keep >= count:
            self.add_error(
                "keep_best",
                ValidationError(
                    "Keep fewer than you generate (%(count)s), or leave it empty.",
                    code="keep_best_out_of_range",
                    params={"count": count},
                ),
            )
        return cleaned


class SweepForm(forms.Form):
    """What "Strength sweep…" asks for."""

    prompt = _prompt_field(rows=3)
    strengths = forms.CharField(
        initial="0.3, 0.5, 0.7, 0.9",
        help_text="img2img strengths, separated by commas.",
    )
    seed = _seed_field(help_text="One seed for the whole sweep; empty picks one.")

    def clean_strengths(self) -> list[float]:
        try:
            strengths = [
                float(part) for part in self.cleaned_data["strengths"].split(",")
            ]
        except ValueError:
            raise ValidationError(
                "Write numbers between 0 and 1 separated by commas, e.g. 0.3, 0.5.",
                code="bad_strengths",
            ) from None
        services.validate_sweep_strengths(strengths)
        return strengths
