"""The "Train LoRA…" page's form: the references to train on with a caption
each, a trigger word, a preset and the hyperparameters.

Its defaults come from the engine's presets (``engine.training.PRESETS``) and the
services' defaults (face, half-body and full-body references; captions of
trigger word, caption and base appearance); the engine's plan check refuses what
cannot work, with the engine's reason on the page.
"""

from __future__ import annotations

from typing import Any

from django import forms

from generation import training_services as services
from generation.engine.errors import EngineError
from generation.engine.training import (
    DEFAULT_PRESET,
    MAX_NOISE_OFFSET,
    PRESET_FIELDS,
    PRESETS,
    check_training_plan,
    preset_settings,
)
from generation.engine_settings import model_family
from personas.models import Persona

SETTING_FIELDS = (
    *PRESET_FIELDS,
    "text_encoder_learning_rate",
    "noise_offset",
    "flip",
    "seed",
    "checkpoint_every",
    "sample_every",
    "sample_steps",
)
CAPTION_PREFIX = "caption_"


class TrainLoraForm(forms.Form):
    """Bound to one persona: its gallery gives the reference choices and one
    caption field per reference."""

    references = forms.MultipleChoiceField(
        widget=forms.CheckboxSelectMultiple,
        help_text="The gallery images to train on (at least three).",
    )
    trigger_word = forms.CharField(
        max_length=64,
        help_text="A rare token the LoRA will answer to; it starts every caption.",
    )
    preset = forms.ChoiceField(
        choices=[(name, preset.label) for name, preset in PRESETS.items()],
        initial=DEFAULT_PRESET,
        help_text="Press “Apply preset” to load its values into the fields below.",
    )
    steps = forms.IntegerField(min_value=1)
    rank = forms.IntegerField(min_value=1)
    alpha = forms.FloatField()
    learning_rate = forms.FloatField()
    resolution = forms.IntegerField(min_value=8)
    batch_size = forms.IntegerField(min_value=1)
    train_text_encoder = forms.BooleanField(required=False)
    text_encoder_learning_rate = forms.FloatField(required=False)
    noise_offset = forms.FloatField(min_value=0, max_value=MAX_NOISE_OFFSET)
    flip = forms.BooleanField(required=False, help_text="Horizontal flips.")
    seed = forms.IntegerField(min_value=0)
    checkpoint_every = forms.IntegerField(
        min_value=0, help_text="Steps between checkpoints (a killed run resumes)."
    )
    sample_every = forms.IntegerField(
        min_value=0, help_text="Steps between validation samples (0: at the end)."
    )
    sample_steps = forms.IntegerField(min_value=1)
    validation_prompts = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="One prompt a line, sampled with fixed seeds during training "
        "(empty: the trigger word).",
    )

    def __init__(self, *args: Any, persona: Persona, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.persona = persona
        self.gallery = list(persona.references.all())
        self.fields["references"].choices = [
            (str(reference.pk), str(reference)) for reference in self.gallery
        ]
        trigger = services.training_default_trigger(persona=persona)
        self.fields["references"].initial = [
            str(reference.pk)
            for reference in services.training_default_references(persona=persona)
        ]
        self.fields["trigger_word"].initial = trigger
        self.set_preset(self.data.get("preset") or DEFAULT_PRESET, only_initial=True)
        for reference in self.gallery:
            self.fields[f"{CAPTION_PREFIX}{reference.pk}"] = forms.CharField(
                label=f"Caption of {reference}",
                max_length=1000,
                required=False,
                initial=services.training_caption(
                    trigger_word=trigger,
                    caption=reference.caption,
                    appearance=persona.appearance,
                ),
            )

    def set_preset(self, name: str, *, only_initial: bool = False) -> None:
        """Load preset ``name`` into the fields (``only_initial``: as defaults)."""
        settings = PRESETS.get(name, PRESETS[DEFAULT_PRESET]).settings
        data = None if only_initial else self.data.copy()
        for field_name in SETTING_FIELDS:
            value = getattr(settings, field_name)
            self.fields[field_name].initial = value
            if data is not None:
                if isinstance(value, bool):
                    data[field_name] = "on" if value else ""
                else:
                    data[field_name] = "" if value is None else str(value)
        if data is not None:
            self.data = data

    def caption_fields(self) -> list[tuple[Any, forms.BoundField]]:
        return [(ref, self[f"{CAPTION_PREFIX}{ref.pk}"]) for ref in self.gallery]

    def setting_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in SETTING_FIELDS]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        if self.errors:
            return data
        chosen = {int(pk) for pk in data.get("references", [])}
        references = [ref for ref in self.gallery if ref.pk in chosen]
        captions = [
            (data.get(f"{CAPTION_PREFIX}{ref.pk}") or "").strip() for ref in references
        ]
        settings = preset_settings(
            data["preset"],
            **{name: data[name] for name in SETTING_FIELDS},
        )
        prompts = [
            line.strip()
            for line in data.get("validation_prompts", "").splitlines()
            if line.strip()
        ]
        try:
            check_training_plan(
                family=model_family(self.persona.base_model),
                settings=settings,
                captions=captions,
                validation_prompts=prompts,
            )
        except EngineError as error:
            raise forms.ValidationError(str(error), code="training_refused") from None
        data["training_references"] = list(zip(references, captions, strict=True))
        data["training_settings"] = settings
        data["training_prompts"] = prompts
        return data
