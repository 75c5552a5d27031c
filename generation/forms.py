"""What the staff operations that need input ask for (``generation.actions``).

Empty overrides keep each persona's settings; the services check every value
again, so a form only shapes the input and writes its errors beside the field.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from generation import grids
from generation.engine.families import true_cfg_problem
from generation.engine.plan import ALL_SCHEDULER_NAMES, scheduler_names
from generation.engine.vocabulary import (
    DEFAULT_INPAINT_STRENGTH,
    MAX_BATCH_COUNT,
    MAX_EDIT_REFERENCES,
    MAX_FRACTION,
    MAX_GUIDANCE_SCALE,
    MAX_ONLY_MASKED_PADDING,
    MAX_SEED,
    MAX_SIZE,
    MAX_STEPS,
    MAX_WEIGHT,
    MIN_FRACTION,
    MIN_GUIDANCE_SCALE,
    MIN_INPAINT_STRENGTH,
    MIN_SEED,
    MIN_SIZE,
    MIN_STEPS,
    MIN_WEIGHT,
    GridParameter,
    Method,
)
from generation.engine_settings import model_has_refiner
from generation.parameters import UnitOverride
from personas.forms import base_model_family, offer_methods
from personas.models import ConsistencyMethod, Persona, SeedPolicy
from personas.validators import validate_prompt_text


def _prompt_field(*, rows: int, required: bool = True) -> forms.CharField:
    return forms.CharField(
        required=required,
        widget=forms.Textarea(attrs={"rows": rows}),
        validators=[validate_prompt_text],
    )


def _detailer_strength_field(*, required: bool) -> forms.FloatField:
    return forms.FloatField(
        required=required,
        min_value=MIN_INPAINT_STRENGTH,
        max_value=MAX_FRACTION,
        label="detailer strength",
        help_text="Denoising strength of the face redraw.",
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
    detailer = forms.ChoiceField(
        label="face detailer",
        required=False,
        choices=[("", "The persona's setting"), ("on", "On"), ("off", "Off")],
        help_text="Redraw the faces of each output after the generation.",
    )
    detailer_strength = _detailer_strength_field(required=False)
    use_refiner = forms.ChoiceField(
        label="refiner",
        required=False,
        choices=[("", "On where the model has one"), ("off", "Off")],
        help_text="SDXL models with a refiner: off runs the base alone.",
    )
    keep_best = forms.IntegerField(
        label="keep the best",
        required=False,
        min_value=1,
        max_value=MAX_BATCH_COUNT - 1,
        help_text="Best K of N by identity: once all are scored, the others are "
        "kept but marked 'not kept'. Empty keeps every one.",
    )

    def clean_detailer(self) -> bool | None:
        return {"on": True, "off": False}.get(self.cleaned_data["detailer"])

    def clean_use_refiner(self) -> bool | None:
        return False if self.cleaned_data["use_refiner"] == "off" else None

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


class InpaintForm(forms.Form):
    """What "Inpaint" asks for on a content's page: the mask the brush painted
    (a PNG the size of the output, white where it is redrawn), a prompt and a
    strength; the service checks the mask (``services.content_inpaint``)."""

    mask = forms.FileField(
        help_text="Paint the region to redraw on the output; it is sent as a PNG."
    )
    prompt = _prompt_field(rows=2)
    strength = forms.FloatField(
        min_value=MIN_INPAINT_STRENGTH,
        max_value=MAX_FRACTION,
        initial=DEFAULT_INPAINT_STRENGTH,
        help_text="How far the painted region may move from what is there.",
    )


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
    true_cfg_scale = forms.FloatField(
        required=False,
        min_value=MIN_GUIDANCE_SCALE,
        max_value=MAX_GUIDANCE_SCALE,
        label="true CFG scale",
        help_text="FLUX.1 and Qwen-Image: true classifier-free guidance against "
        "the negative prompt (two passes per step); empty: the persona's, else "
        "the pipeline's default.",
    )
    scheduler = forms.ChoiceField(
        required=False,
        choices=[
            ("", "The persona's (else the model's own)"),
            *((name, name) for name in ALL_SCHEDULER_NAMES),
        ],
    )
    use_refiner = forms.BooleanField(
        required=False,
        initial=True,
        label="refiner",
        help_text="The model's refiner finishes text and img2img runs; off: the "
        "base alone (its IP-Adapter and LoRA then shape every step).",
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
    edit_references = forms.TypedMultipleChoiceField(
        required=False,
        coerce=int,
        label="references to edit from",
        help_text=f"Reference editing: up to {MAX_EDIT_REFERENCES}, the primary "
        "first. None chosen: the primary, then the others by role (face first).",
        widget=forms.CheckboxSelectMultiple,
    )
    lora_scale = forms.FloatField(
        required=False, min_value=MIN_WEIGHT, max_value=MAX_WEIGHT, label="LoRA scale"
    )
    detailer = forms.BooleanField(
        required=False,
        label="face detailer",
        help_text="Find the faces of the output and redraw each at the model's "
        "native size; the output before the pass is kept, with both scores.",
    )
    detailer_strength = _detailer_strength_field(required=True)
    detailer_prompt = _prompt_field(rows=1, required=False)
    detailer_padding = forms.IntegerField(
        min_value=0,
        max_value=MAX_ONLY_MASKED_PADDING,
        label="detailer padding",
        help_text="Pixels of context around each face.",
    )

    def __init__(self, *args: Any, persona: Persona, **kwargs: Any) -> None:
        initial = {
            "method": persona.method,
            "strength": persona.img2img_strength,
            "width": persona.width,
            "height": persona.height,
            "steps": persona.steps,
            "guidance_scale": persona.guidance_scale,
            "true_cfg_scale": persona.true_cfg_scale,
            "scheduler": persona.scheduler,
            "seed_policy": persona.seed_policy,
            "seed": persona.seed,
            "ip_adapter_scale": persona.ip_adapter_scale,
            "lora_scale": persona.lora_scale,
            "detailer": persona.detailer_enabled,
            "detailer_strength": persona.detailer_strength,
            "detailer_prompt": persona.detailer_prompt,
            "detailer_padding": persona.detailer_padding,
            **kwargs.pop("initial", {}),
        }
        super().__init__(*args, initial=initial, **kwargs)
        self.persona = persona
        offer_methods(self.fields["method"], persona.base_model)
        family = base_model_family(persona.base_model)
        if family is not None and true_cfg_problem(family) is not None:
            # Stable Diffusion has no true CFG: the field is not offered.
            del self.fields["true_cfg_scale"]
        if family is not None:
            self.fields["scheduler"].choices = [
                ("", "The model's own"),
                *((name, name) for name in scheduler_names(family)),
            ]
        gallery = [
            (reference.pk, str(reference)) for reference in persona.references.all()
        ]
        self.fields["ip_adapter_references"].choices = gallery
        self._primary = {
            reference.pk
            for reference in persona.references.all()
            if reference.is_primary
        }
        if any(
            value == Method.REFERENCE_EDIT
            for value, _ in self.fields["method"].widget.choices
        ):
            self.fields["edit_references"].choices = gallery
        else:
            del self.fields["edit_references"]
        if not persona.lora_weights:
            del self.fields["lora_scale"]
        if not model_has_refiner(persona.base_model):
            del self.fields["use_refiner"]
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
                "true_cfg_scale",
                "scheduler",
                "use_refiner",
                "seed_policy",
                "seed",
            ),
        ),
        (
            "Identity",
            (
                "ip_adapter_scale",
                "ip_adapter_references",
                "edit_references",
                "lora_scale",
            ),
        ),
        (
            "Face detailer",
            ("detailer", "detailer_strength", "detailer_prompt", "detailer_padding"),
        ),
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
        chosen = list(data.get("edit_references") or ())
        if len(chosen) > MAX_EDIT_REFERENCES:
            self.add_error(
                "edit_references",
                ValidationError(
                    "Choose at most %(max)s references to edit from.",
                    code="too_many_references",
                    params={"max": MAX_EDIT_REFERENCES},
                ),
            )
        primary = [pk for pk in chosen if pk in self._primary]
        data["edit_references"] = (
            tuple(primary + [pk for pk in chosen if pk not in self._primary]) or None
        )
        if data.get("seed_policy") != SeedPolicy.FIXED:
            data["seed"] = None
        return data
