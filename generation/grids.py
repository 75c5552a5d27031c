"""X/Y/Z grids: axes over any generation parameter, checked and expanded into
one ``GenerationOverrides`` per tile (AUTOMATIC1111's X/Y/Z plot).

An axis is a parameter (``GridParameter``; a ControlNet unit's by its position
among the persona's units, 1 first) and its values. ``axis_values`` reads and
checks the values, typed (a person's comma-separated text, one part each) or
not; ``axes_resolve`` checks whole axes against a persona (the unit exists and
is on, the method uses the parameter, the tiles fit ``STUDIO_GRID_MAX_TILES``);
``grid_cells`` expands them into tiles and ``tile_overrides`` gives each its
overrides. A grid's ``Batch`` keeps its axes (``GridAxis.as_json``) and its
tiles (content id and value indexes). The services use these
(``generation.services.content_grid``, ``persona_use_grid_value``).
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError

from generation.engine.plan import SCHEDULER_NAMES
from generation.engine.vocabulary import (
    MAX_FRACTION,
    MAX_GRID_AXES,
    MAX_GUIDANCE_SCALE,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    METHODS_TAKING_CONTROL_UNITS,
    METHODS_TAKING_IP_ADAPTER,
    METHODS_WITH_CONTROL,
    METHODS_WITH_STRENGTH,
    MIN_FRACTION,
    MIN_GUIDANCE_SCALE,
    MIN_SEED,
    MIN_STEPS,
    MIN_WEIGHT,
    GridParameter,
    Method,
    SeedPolicy,
)
from generation.parameters import GenerationOverrides, UnitOverride

AXIS_NAMES = ("X", "Y", "Z")
UNIT_PARAMETERS = frozenset({GridParameter.UNIT_SCALE, GridParameter.UNIT_WINDOW})
# The override each plain parameter sets (units set ``control_units``).
OVERRIDE_FIELDS = {
    GridParameter.SEED: "seed",
    GridParameter.STRENGTH: "strength",
    GridParameter.GUIDANCE_SCALE: "guidance_scale",
    GridParameter.STEPS: "steps",
    GridParameter.SCHEDULER: "scheduler",
    GridParameter.METHOD: "method",
    GridParameter.IP_ADAPTER_SCALE: "ip_adapter_scale",
    GridParameter.LORA_SCALE: "lora_scale",
}
# What "use this value" writes on the persona for a plain parameter: the
# persona field of the same name as the override, but for the strength.
PERSONA_FIELDS = {**OVERRIDE_FIELDS, GridParameter.STRENGTH: "img2img_strength"}


def _base_in(methods: frozenset[str]) -> Callable[[Mapping[str, Any]], bool]:
    return lambda snapshot: snapshot.get("base_method") in methods


# What shows in a run's snapshot that it used a parameter (the base of its
# plan: what auto chose); a parameter left out is used by every method.
_USED_BY: dict[str, Callable[[Mapping[str, Any]], bool]] = {
    GridParameter.STRENGTH: _base_in(METHODS_WITH_STRENGTH),
    GridParameter.UNIT_SCALE: _base_in(METHODS_WITH_CONTROL),
    GridParameter.UNIT_WINDOW: _base_in(METHODS_WITH_CONTROL),
    GridParameter.IP_ADAPTER_SCALE: lambda snapshot: bool(snapshot.get("ip_adapter")),
    GridParameter.LORA_SCALE: lambda snapshot: bool(snapshot.get("lora")),
}


@dataclass(frozen=True, kw_only=True)
class GridAxis:
    """One axis: a parameter and its values (checked by ``axis_values``).

    ``unit`` is a unit parameter's position among the persona's units (1
    first); ``unit_id`` and ``unit_type`` are filled in by ``axes_resolve``.
    """

    parameter: GridParameter
    values: tuple[Any, ...]
    unit: int | None = None
    unit_id: int | None = None
    unit_type: str = ""

    @property
    def label(self) -> str:
        if self.parameter in UNIT_PARAMETERS:
            kind = "scale" if self.parameter == GridParameter.UNIT_SCALE else "window"
            named = f" ({self.unit_type})" if self.unit_type else ""
            return f"ControlNet unit {self.unit}{named} {kind}"
        return self.parameter.label

    def value_label(self, index: int) -> str:
        return value_text(self.parameter, self.values[index])

    def value_labels(self) -> list[str]:
        return [self.value_label(index) for index in range(len(self.values))]

    def as_json(self) -> dict[str, Any]:
        return {
            "parameter": self.parameter.value,
            "values": [
                list(value) if isinstance(value, tuple) else value
                for value in self.values
            ],
            "unit": self.unit,
            "unit_id": self.unit_id,
            "unit_type": self.unit_type,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> GridAxis:
        parameter = GridParameter(data["parameter"])
        values = tuple(
            tuple(value) if parameter == GridParameter.UNIT_WINDOW else value
            for value in data["values"]
        )
        return cls(
            parameter=parameter,
            values=values,
            unit=data.get("unit"),
            unit_id=data.get("unit_id"),
            unit_type=data.get("unit_type", ""),
        )


def value_text(parameter: str, value: Any) -> str:
    """How a value reads on the sheet and in messages."""
    if parameter == GridParameter.UNIT_WINDOW:
        start, end = value
        return f"{start:g}–{end:g}"
    if parameter == GridParameter.METHOD:
        return Method(value).label
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --- Reading values ------------------------------------------------------------------


def _number(
    value: Any, *, whole: bool, low: float, high: float, example: str
) -> int | float:
    kind = "a whole number" if whole else "a number"
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if whole else float(text)
        except ValueError:
            raise ValueError(f"{text[:40]!r} is not {kind}; e.g. {example}.") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{value!r} is not {kind}; e.g. {example}.")
    if whole and isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{value:g} is not {kind}; e.g. {example}.")
        value = int(value)
    if not whole:
        value = float(value)
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{value:g} is not between {low:g} and {high:g}.")
    return value


def _ranged(
    *, whole: bool, low: float, high: float, example: str
) -> Callable[[Any], Any]:
    return lambda value: _number(
        value, whole=whole, low=low, high=high, example=example
    )


def _choice(names: Iterable[str], what: str) -> Callable[[Any], str]:
    by_lower = {name.lower(): name for name in names}

    def coerce(value: Any) -> str:
        name = by_lower.get(str(value).strip().lower())
        if name is None:
            raise ValueError(
                f"unknown {what} {str(value)[:40]!r}; choose among "
                f"{', '.join(by_lower.values())}."
            )
        return name

    return coerce


_WINDOW = re.compile(r"\s*([0-9.]+)\s*[-–:]\s*([0-9.]+)\s*")


def _window(value: Any) -> tuple[float, float]:
    if isinstance(value, str):
        match = _WINDOW.fullmatch(value)
        if match is None:
            raise ValueError(
                f"{value.strip()[:40]!r} is not a window; write start-end as "
                "fractions of the steps, e.g. 0-0.5."
            )
        value = match.groups()
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ValueError(f"{value!r} is not a window; write start-end, e.g. 0-0.5.")
    start, end = (
        _number(part, whole=False, low=MIN_FRACTION, high=MAX_FRACTION, example="0.5")
        for part in value
    )
    if start >= end:
        raise ValueError(f"the window {start:g}-{end:g} must end after it starts.")
    return start, end


_COERCE: dict[str, Callable[[Any], Any]] = {
    GridParameter.SEED: _ranged(whole=True, low=MIN_SEED, high=MAX_SEED, example="1"),
    GridParameter.STRENGTH: _ranged(
        whole=False, low=MIN_FRACTION, high=MAX_FRACTION, example="0.5"
    ),
    GridParameter.GUIDANCE_SCALE: _ranged(
        whole=False, low=MIN_GUIDANCE_SCALE, high=MAX_GUIDANCE_SCALE, example="7.5"
    ),
    GridParameter.STEPS: _ranged(
        whole=True, low=MIN_STEPS, high=MAX_STEPS, example="20"
    ),
    GridParameter.SCHEDULER: _choice(SCHEDULER_NAMES, "scheduler"),
    GridParameter.METHOD: _choice([method.value for method in Method], "method"),
    GridParameter.UNIT_SCALE: _ranged(
        whole=False, low=MIN_WEIGHT, high=MAX_WEIGHT, example="0.8"
    ),
    GridParameter.UNIT_WINDOW: _window,
    GridParameter.IP_ADAPTER_SCALE: _ranged(
        whole=False, low=MIN_WEIGHT, high=MAX_WEIGHT, example="0.6"
    ),
    GridParameter.LORA_SCALE: _ranged(
        whole=False, low=MIN_WEIGHT, high=MAX_WEIGHT, example="0.8"
    ),
}
EXAMPLES = {
    GridParameter.SEED: "1, 2, 3",
    GridParameter.STRENGTH: "0.3, 0.5, 0.7",
    GridParameter.GUIDANCE_SCALE: "5, 7.5, 10",
    GridParameter.STEPS: "10, 20, 30",
    GridParameter.SCHEDULER: "DDIMScheduler, EulerDiscreteScheduler",
    GridParameter.METHOD: "img2img, hybrid",
    GridParameter.UNIT_SCALE: "0.5, 1.0",
    GridParameter.UNIT_WINDOW: "0-0.5, 0-1",
    GridParameter.IP_ADAPTER_SCALE: "0.4, 0.8",
    GridParameter.LORA_SCALE: "0.5, 1.0",
}


def split_values(text: str) -> list[str]:
    """The parts of a comma-separated list of values, blanks dropped."""
    return [part for part in (piece.strip() for piece in text.split(",")) if part]


def axis_values(parameter: str, values: Iterable[Any], *, name: str) -> tuple[Any, ...]:
    """``values`` read and checked for ``parameter``: at least one, none twice,
    each in range; ``ValidationError`` naming the axis (``name``: "X") and
    what to fix otherwise."""
    try:
        parameter = GridParameter(parameter)
    except ValueError:
        raise ValidationError(
            "%(name)s axis: unknown parameter %(parameter)s; choose among %(choices)s.",
            code="unknown_grid_parameter",
            params={
                "name": name,
                "parameter": str(parameter)[:40],
                "choices": ", ".join(GridParameter),
            },
        ) from None
    label = parameter.label
    read = []
    for value in values:
        try:
            read.append(_COERCE[parameter](value))
        except ValueError as error:
            raise ValidationError(
                "%(name)s axis (%(label)s): %(error)s Write values separated by "
                "commas, e.g. %(example)s.",
                code="bad_grid_value",
                params={
                    "name": name,
                    "label": label,
                    "error": str(error),
                    "example": EXAMPLES[parameter],
                },
            ) from None
    if not read:
        raise ValidationError(
            "%(name)s axis (%(label)s) has no values; write them separated by "
            "commas, e.g. %(example)s.",
            code="empty_grid_axis",
            params={"name": name, "label": label, "example": EXAMPLES[parameter]},
        )
    repeated = sorted(
        {value_text(parameter, value) for value in read if read.count(value) > 1}
    )
    if repeated:
        raise ValidationError(
            "%(name)s axis (%(label)s) has %(values)s more than once; give each "
            "value once.",
            code="repeated_grid_value",
            params={"name": name, "label": label, "values": ", ".join(repeated)},
        )
    return tuple(read)


# --- Whole grids -----------------------------------------------------------------


def axes_resolve(
    axes: Sequence[GridAxis],
    *,
    persona: Any,
    overrides: GenerationOverrides,
) -> list[GridAxis]:
    """``axes`` checked together against ``persona`` (its units, method and
    LoRA) and the grid's ``overrides``; unit axes get their unit's id and type.
    ``ValidationError`` with every problem, each naming its axis."""
    errors: list[ValidationError] = []
    if not 1 <= len(axes) <= MAX_GRID_AXES:
        errors.append(
            ValidationError(
                "A grid has an X axis, and may have a Y and a Z axis; got "
                "%(count)s axes.",
                code="grid_axes_count",
                params={"count": len(axes)},
            )
        )
    units = list(persona.control_units.all())
    method_axis = next(
        (axis for axis in axes if axis.parameter == GridParameter.METHOD), None
    )
    methods = (
        list(method_axis.values)
        if method_axis is not None
        else [overrides.method or persona.method]
    )
    resolved = []
    seen: dict[tuple[str, int | None], str] = {}
    for name, axis in zip(AXIS_NAMES, axes, strict=False):
        try:
            values = axis_values(axis.parameter, axis.values, name=name)
            axis = replace(axis, values=values)
            axis = _resolve_unit(axis, name=name, units=units, overrides=overrides)
            _check_used(axis, name=name, persona=persona, methods=methods)
        except ValidationError as error:
            errors.extend(error.error_list)
            continue
        key = (axis.parameter, axis.unit)
        if key in seen:
            errors.append(
                ValidationError(
                    "The %(name)s axis varies %(label)s, as the %(other)s axis "
                    "does; give each axis its own parameter.",
                    code="repeated_grid_parameter",
                    params={"name": name, "label": axis.label, "other": seen[key]},
                )
            )
        seen[key] = name
        resolved.append(axis)
    tiles = math.prod(len(axis.values) for axis in resolved)
    limit = settings.STUDIO_GRID_MAX_TILES
    if tiles > limit:
        errors.append(
            ValidationError(
                "The grid has %(shape)s = %(tiles)s tiles; at most %(limit)s "
                "(STUDIO_GRID_MAX_TILES). Take fewer values.",
                code="grid_too_large",
                params={
                    "shape": " × ".join(str(len(axis.values)) for axis in resolved),
                    "tiles": tiles,
                    "limit": limit,
                },
            )
        )
    if errors:
        raise ValidationError(errors)
    return resolved


def _resolve_unit(
    axis: GridAxis, *, name: str, units: list[Any], overrides: GenerationOverrides
) -> GridAxis:
    if axis.parameter not in UNIT_PARAMETERS:
        return replace(axis, unit=None, unit_id=None, unit_type="")
    position = axis.unit
    if not isinstance(position, int) or not 1 <= position <= len(units):
        raise ValidationError(
            "%(name)s axis: the persona has %(count)s ControlNet unit(s), so there "
            "is no unit %(unit)s; add one on the persona or choose another.",
            code="no_such_unit",
            params={"name": name, "count": len(units), "unit": position},
        )
    unit = units[position - 1]
    run = (overrides.control_units or {}).get(unit.pk)
    if not (run.enabled if run is not None else unit.enabled):
        raise ValidationError(
            "%(name)s axis: ControlNet unit %(unit)s (%(type)s) is off; turn it on "
            "on the persona first.",
            code="unit_off",
            params={
                "name": name,
                "unit": position,
                "type": unit.get_control_type_display(),
            },
        )
    return replace(axis, unit_id=unit.pk, unit_type=unit.get_control_type_display())


def _check_used(axis: GridAxis, *, name: str, persona: Any, methods: list[str]) -> None:
    """Refuse an axis whose parameter no tile's method would use (a strength
    axis on a text-only persona, say)."""
    if axis.parameter == GridParameter.LORA_SCALE and not persona.lora_weights:
        raise ValidationError(
            "%(name)s axis: %(persona)s has no LoRA weights, so a LoRA scale "
            "changes nothing; upload them on the persona first.",
            code="grid_parameter_unused",
            params={"name": name, "persona": persona},
        )
    takes = {
        GridParameter.STRENGTH: METHODS_WITH_STRENGTH | {Method.AUTO},
        GridParameter.UNIT_SCALE: METHODS_TAKING_CONTROL_UNITS,
        GridParameter.UNIT_WINDOW: METHODS_TAKING_CONTROL_UNITS,
        GridParameter.IP_ADAPTER_SCALE: METHODS_TAKING_IP_ADAPTER,
    }.get(axis.parameter)
    if takes is not None and not any(method in takes for method in methods):
        raise ValidationError(
            "%(name)s axis: %(label)s is not used by %(methods)s; choose a method "
            "that uses it (%(takes)s) for the grid, or another parameter.",
            code="grid_parameter_unused",
            params={
                "name": name,
                "label": axis.label,
                "methods": ", ".join(Method(method).label for method in methods),
                "takes": ", ".join(sorted(takes)),
            },
        )


def grid_cells(axes: Sequence[GridAxis]) -> list[tuple[int, ...]]:
    """Each tile's value indexes (x, y, z), X changing fastest: the order the
    tiles are queued and read."""
    ranges = [range(len(axis.values)) for axis in reversed(axes)]
    return [tuple(reversed(cell)) for cell in itertools.product(*ranges)]


def tile_overrides(
    axes: Sequence[GridAxis],
    cell: Sequence[int],
    *,
    base: GenerationOverrides,
    units: Mapping[int, Any],
) -> GenerationOverrides:
    """The overrides of the tile at ``cell``: the grid's, with each axis's
    value (``units``: the persona's units by id, for a unit axis)."""
    changes: dict[str, Any] = {}
    control_units = dict(base.control_units or {})
    for axis, index in zip(axes, cell, strict=True):
        value = axis.values[index]
        if axis.parameter in UNIT_PARAMETERS:
            unit = units[axis.unit_id]
            run = control_units.get(axis.unit_id) or UnitOverride(
                enabled=unit.enabled,
                conditioning_scale=unit.conditioning_scale,
                guidance_start=unit.guidance_start,
                guidance_end=unit.guidance_end,
            )
            if axis.parameter == GridParameter.UNIT_SCALE:
                run = replace(run, conditioning_scale=value)
            else:
                run = replace(run, guidance_start=value[0], guidance_end=value[1])
            control_units[axis.unit_id] = run
        else:
            changes[OVERRIDE_FIELDS[axis.parameter]] = value
    if control_units:
        changes["control_units"] = control_units
    return replace(base, **changes)


def tile_label(axes: Sequence[GridAxis], cell: Sequence[int]) -> str:
    """A tile named by its values: "img2img strength 0.3, steps 12"."""
    return ", ".join(
        f"{axis.label} {axis.value_label(index)}"
        for axis, index in zip(axes, cell, strict=True)
    )


def unused_axes(
    axes: Sequence[GridAxis], snapshot: Mapping[str, Any] | None
) -> list[str]:
    """The labels of the axes whose parameter the tile's run did not use (its
    snapshot: what ``auto`` chose); [] before it ran."""
    if not snapshot:
        return []
    return [
        axis.label
        for axis in axes
        if axis.parameter in _USED_BY and not _USED_BY[axis.parameter](snapshot)
    ]


def persona_change(axis: GridAxis, value: Any) -> dict[str, Any]:
    """The persona fields "use this value" writes for a plain parameter."""
    if axis.parameter == GridParameter.SEED:
        return {"seed": value, "seed_policy": SeedPolicy.FIXED}
    return {PERSONA_FIELDS[axis.parameter]: value}


def unit_change(axis: GridAxis, value: Any) -> dict[str, Any]:
    """The unit fields "use this value" writes for a unit parameter."""
    if axis.parameter == GridParameter.UNIT_SCALE:
        return {"conditioning_scale": value}
    start, end = value
    return {"guidance_start": start, "guidance_end": end}


def grid_examples() -> list[tuple[str, str]]:
    """(parameter, example values) for each parameter, for the grid form."""
    return [(parameter.label, EXAMPLES[parameter]) for parameter in GridParameter]


def persona_current(axis: GridAxis, persona: Any, units: Mapping[int, Any]) -> Any:
    """The persona's own value of ``axis``'s parameter now (None: it has none,
    or its seed is not fixed), to mark the value it uses on the sheet."""
    if axis.parameter in UNIT_PARAMETERS:
        unit = units.get(axis.unit_id)
        if unit is None:
            return None
        if axis.parameter == GridParameter.UNIT_SCALE:
            return unit.conditioning_scale
        return (unit.guidance_start, unit.guidance_end)
    if axis.parameter == GridParameter.SEED and persona.seed_policy != SeedPolicy.FIXED:
        return None
    field = PERSONA_FIELDS.get(axis.parameter)
    return getattr(persona, field) if field else None
