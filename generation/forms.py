"""What the staff operations that need input ask for (``generation.actions``).

Empty overrides keep each persona's settings; the services check every value
again, so a form only shapes the input and writes its errors beside the field.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from generation import grids
from generation.engine.plan import SCHEDULER_NAMES
from generation.engine.vocabulary import (
    MAX_BATCH_COUNT,
    MAX_FRACTION,
    MAX_GUIDANCE_SCALE,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MAX_WEIGHT,
    MIN_FRACTION,
    MIN_GUIDANCE_SCALE,
    MIN_SEED,
    MIN_SIZE,
    MIN_STEPS,
    MIN_WEIGHT,
    GridParameter,
)
from generation.parameters import UnitOverride
from personas.models import ConsistencyMethod, Persona, SeedPolicy
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


class GridForm(forms.Form):
    """What "Grid…" asks for: a prompt, the grid's method and seed, and its X,
    Y and Z axes (``cleaned_data["axes"]``: ``grids.GridAxis`` rows, checked
    against the persona by the service). With a persona its own ControlNet
    units are offered by type; without one (the admin, for several personas)
    units are named by position."""

    ADMIN_UNITS = 3

    prompt = _prompt_field(rows=3)
    negative_prompt = _prompt_field(rows=2, required=False)
    method = forms.ChoiceField(
        required=False,
        choices=[("", "The persona's method"), *ConsistencyMethod.choices],
        help_text="For every tile, unless an axis varies it.",
    )
    seed = _seed_field(
        help_text="One seed for every tile (unless an axis varies it); empty "
        "uses the persona's fixed seed, or picks one."
    )

    def __init__(self, *args: Any, persona: Persona | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.persona = persona
        choices = [
            (parameter.value, parameter.label)
            for parameter in GridParameter
            if parameter not in grids.UNIT_PARAMETERS
            and (
                parameter != GridParameter.LORA_SCALE
                or persona is None
                or persona.lora_weights
            )
        ]
        units = (
            [
                (position, f" ({unit.get_control_type_display()})")
                for position, unit in enumerate(persona.control_units.all(), start=1)
            ]
            if persona is not None
            else [(position, "") for position in range(1, self.ADMIN_UNITS + 1)]
        )
        for position, named in units:
            choices += [
                (f"unit_scale:{position}", f"ControlNet unit {position}{named} scale"),
                (
                    f"unit_window:{position}",
                    f"ControlNet unit {position}{named} window (start-end)",
                ),
            ]
        for name, required in zip(grids.AXIS_NAMES, (True, False, False), strict=True):
            key = name.lower()
            self.fields[f"{key}_parameter"] = forms.ChoiceField(
                label=f"{name} axis",
                required=required,
                choices=choices if required else [("", "None"), *choices],
                initial=GridParameter.STRENGTH.value if required else "",
            )
            self.fields[f"{key}_values"] = forms.CharField(
                label=f"{name} values",
                required=False,
                max_length=2000,
                help_text="Separated by commas, e.g. 0.3, 0.5, 0.7 (a window: "
                "0-0.5, 0.2-1).",
            )

    def prompt_fields(self) -> list[forms.BoundField]:
        """The fields before the axes, for the template."""
        return [self[name] for name in ("prompt", "negative_prompt", "method", "seed")]

    def axis_fields(self) -> list[tuple[str, forms.BoundField, forms.BoundField]]:
        """Each axis with its parameter and values fields, for the template."""
        return [
            (name, self[f"{name.lower()}_parameter"], self[f"{name.lower()}_values"])
            for name in grids.AXIS_NAMES
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        axes = []
        for name in grids.AXIS_NAMES:
            key = name.lower()
            chosen = data.get(f"{key}_parameter") or ""
            text = data.get(f"{key}_values") or ""
            if not chosen:
                if text.strip():
                    self.add_error(
                        f"{key}_parameter",
                        f"Choose what the {name} axis varies, or clear its values.",
                    )
                continue
            if len(axes) < grids.AXIS_NAMES.index(name):
                self.add_error(
                    f"{key}_parameter",
                    f"Fill the axes in order: the {name} axis needs the one before.",
                )
                continue
            parameter, _, unit = chosen.partition(":")
            try:
                values = grids.axis_values(
                    parameter, grids.split_values(text), name=name
                )
            except ValidationError as error:
                self.add_error(f"{key}_values", error)
                continue
            axes.append(
                grids.GridAxis(
                    parameter=GridParameter(parameter),
                    values=values,
                    unit=int(unit) if unit else None,
                )
            )
        data["axes"] = axes
        return data


class PersonaGenerateForm(forms.Form):
    """The generate page of one persona: every per-run override, the persona's
    values as the defaults (``cleaned_data`` holds ``GenerationOverrides``'
    field names, and ``control_units`` per unit id)."""

    prompt = _prompt_field(rows=3)
    negative_prompt = _prompt_field(rows=2, required=False)
    count = forms.IntegerField(min_value=1, max_value=MAX_BATCH_COUNT, initial=1)
    method = forms.ChoiceField(choices=ConsistencyMethod.choices)
    strength = forms.FloatField(
        min_value=MIN_FRACTION,
        max_value=MAX_FRACTION,
        help_text="img2img strength (img2img and hybrid).",
    )
    width = forms.IntegerField(min_value=MIN_SIZE, max_value=MAX_SIZE, step_size=8)
    height = forms.IntegerField(min_value=MIN_SIZE, max_value=MAX_SIZE, step_size=8)
    steps = forms.IntegerField(min_value=MIN_STEPS, max_value=MAX_STEPS)
    guidance_scale = forms.FloatField(
        min_value=MIN_GUIDANCE_SCALE, max_value=MAX_GUIDANCE_SCALE
    )
    scheduler = forms.ChoiceField(
        required=False,
        choices=[
            ("", "The persona's (else the model's own)"),
            *((name, name) for name in SCHEDULER_NAMES),
        ],
    )
    seed_policy = forms.ChoiceField(choices=SeedPolicy.choices)
    seed = _seed_field(
        help_text="With a fixed seed: the first image's (the next ones count up); "
        "empty uses the persona's."
    )
    ip_adapter_scale = forms.FloatField(
        min_value=MIN_WEIGHT,
        max_value=MAX_WEIGHT,
        label="IP-Adapter scale",
        help_text="Automatic and IP-Adapter methods.",
    )
    ip_adapter_references = forms.TypedMultipleChoiceField(
        required=False,
        coerce=int,
        label="IP-Adapter references",
        help_text="None chosen: every face reference, else the primary one.",
        widget=forms.CheckboxSelectMultiple,
    )
    lora_scale = forms.FloatField(
        required=False, min_value=MIN_WEIGHT, max_value=MAX_WEIGHT, label="LoRA scale"
    )

    def __init__(self, *args: Any, persona: Persona, **kwargs: Any) -> None:
        initial = {
            "method": persona.method,
            "strength": persona.img2img_strength,
            "width": persona.width,
            "height": persona.height,
            "steps": persona.steps,
            "guidance_scale": persona.guidance_scale,
            "scheduler": persona.scheduler,
            "seed_policy": persona.seed_policy,
            "seed": persona.seed,
            "ip_adapter_scale": persona.ip_adapter_scale,
            "lora_scale": persona.lora_scale,
            **kwargs.pop("initial", {}),
        }
        super().__init__(*args, initial=initial, **kwargs)
        self.persona = persona
        self.fields["ip_adapter_references"].choices = [
            (reference.pk, str(reference)) for reference in persona.references.all()
        ]
        if not persona.lora_weights:
            del self.fields["lora_scale"]
        self.units = list(persona.control_units.all())
        for unit in self.units:
            prefix = f"unit_{unit.pk}"
            label = f"{unit.get_control_type_display()} unit"
            self.fields[f"{prefix}_enabled"] = forms.BooleanField(
                required=False, initial=unit.enabled, label=f"{label}: on"
            )
            self.fields[f"{prefix}_scale"] = forms.FloatField(
                min_value=MIN_WEIGHT,
                max_value=MAX_WEIGHT,
                initial=unit.conditioning_scale,
                label=f"{label}: scale",
            )
            self.fields[f"{prefix}_start"] = forms.FloatField(
                min_value=MIN_FRACTION,
                max_value=MAX_FRACTION,
                initial=unit.guidance_start,
                label=f"{label}: from",
            )
            self.fields[f"{prefix}_end"] = forms.FloatField(
                min_value=MIN_FRACTION,
                max_value=MAX_FRACTION,
                initial=unit.guidance_end,
                label=f"{label}: to",
            )

    GROUPS = (
        ("Prompt", ("prompt", "negative_prompt", "count")),
        (
            "Method and sampling",
            (
                "method",
                "strength",
                "width",
                "height",
                "steps",
                "guidance_scale",
                "scheduler",
                "seed_policy",
                "seed",
            ),
        ),
        ("Identity", ("ip_adapter_scale", "ip_adapter_references", "lora_scale")),
    )

    def groups(self) -> list[tuple[str, list[forms.BoundField]]]:
        """The fields by section, for the template (units: ``unit_fields``)."""
        return [
            (title, [self[name] for name in names if name in self.fields])
            for title, names in self.GROUPS
        ]

    def unit_fields(self) -> list[tuple[Any, list[forms.BoundField]]]:
        """Each unit with its four fields, for the template."""
        return [
            (
                unit,
                [
                    self[f"unit_{unit.pk}_{name}"]
                    for name in ("enabled", "scale", "start", "end")
                ],
            )
            for unit in self.units
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        units = {}
        for unit in self.units:
            prefix = f"unit_{unit.pk}"
            values = [
                data.get(f"{prefix}_{name}") for name in ("scale", "start", "end")
            ]
            if None in values:
                continue  # the field's own error says why
            scale, start, end = values
            if start >= end:
                self.add_error(f"{prefix}_end", "The window must end after it starts.")
                continue
            units[unit.pk] = UnitOverride(
                enabled=bool(data.get(f"{prefix}_enabled")),
                conditioning_scale=scale,
                guidance_start=start,
                guidance_end=end,
            )
        data["control_units"] = units
        data["ip_adapter_references"] = (
            tuple(data.get("ip_adapter_references") or ()) or None
        )
        if data.get("seed_policy") != SeedPolicy.FIXED:
            data["seed"] = None
        return data
