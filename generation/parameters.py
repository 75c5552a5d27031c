"""A content row's engine request: persona + overrides -> JSON -> request.

A row stores its request in the engine's JSON form (``snapshot.request_to_dict``)
with every image and the LoRA named by its storage name, resolved when the row is
created (``request_for_persona``). The job turns it back into a
``GenerationRequest`` by reading those files through the storage API
(``request_from_row``, DESIGN.md decision 6). "Regenerate exactly" replays a
snapshot instead, whose content keys ``Content.inputs`` maps to storage names.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from PIL import Image

from generation.engine.errors import EngineError, InvalidRequest
from generation.engine.methods import auto_edits_references
from generation.engine.plan import ALL_SCHEDULER_NAMES
from generation.engine.requests import (
    ControlUnitInput,
    GenerationRequest,
    InpaintRequest,
    IPAdapterInput,
    LoraInput,
    ReferenceInput,
)
from generation.engine.vocabulary import (
    MAX_FRACTION,
    MAX_GUIDANCE_SCALE,
    MAX_ONLY_MASKED_PADDING,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    METHODS_TAKING_CONTROL_UNITS,
    METHODS_TAKING_IP_ADAPTER,
    METHODS_TAKING_REFERENCES,
    MIN_FRACTION,
    MIN_GUIDANCE_SCALE,
    MIN_INPAINT_STRENGTH,
    MIN_SEED,
    MIN_STEPS,
    MIN_WEIGHT,
    REFERENCE_EDIT_PROMPT,
    Method,
    ReferenceRole,
    SeedPolicy,
)
from generation.engine_settings import engine_config
from generation.models import INPAINT_KIND
from personas.models import Persona, ReferenceImage
from personas.validators import validate_height, validate_prompt_text, validate_width

DETAILER_KEY = "detailer"
"""The key of a generation request (JSON form) that holds its face detailer
pass, or None without one; the engine's ``GenerationRequest`` has no such field,
so it is taken out before the request is built (``generation_part``)."""


@dataclass(frozen=True, kw_only=True)
class UnitOverride:
    """One ControlNet unit of the persona for one generation: on or off, its
    conditioning scale and its guidance window (fractions of the steps)."""

    enabled: bool
    conditioning_scale: float
    guidance_start: float
    guidance_end: float


@dataclass(frozen=True, kw_only=True)
class GenerationOverrides:
    """Values that replace the persona's settings for one generation; None keeps
    the persona's.

    ``seed_policy`` random ignores the persona's fixed seed; fixed needs a seed
    (``seed``, else the persona's). ``control_units`` maps a unit's id to its
    override (units left out keep their settings); ``ip_adapter_references``
    and ``edit_references`` (those of a reference edit, in order) are reference
    ids (None: the engine's choice, ``engine/methods.py``).
    """

    method: str | None = None
    strength: float | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    true_cfg_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    seed_policy: str | None = None
    scheduler: str | None = None
    control_units: Mapping[int, UnitOverride] | None = None
    ip_adapter_scale: float | None = None
    ip_adapter_references: tuple[int, ...] | None = None
    edit_references: tuple[int, ...] | None = None
    lora_scale: float | None = None
    detailer: bool | None = None
    detailer_strength: float | None = None
    detailer_prompt: str | None = None
    detailer_padding: int | None = None
    use_refiner: bool | None = None
    """False runs an SDXL model with a refiner without it (the base alone);
    None or True: the refiner finishes text and img2img runs."""

    @classmethod
    def from_data(cls, data: Mapping[str, Any]) -> GenerationOverrides:
        """The overrides among a form's cleaned data (other keys are ignored; an
        empty value keeps the persona's)."""
        return cls(
            **{
                name: None if data[name] in ("", None) else data[name]
                for name in (field.name for field in fields(cls))
                if name in data
            }
        )

    def validate(self) -> None:
        """Raise ``ValidationError`` (per field, with a code) for values out of
        range."""
        errors: dict[str, ValidationError] = {}
        for name, choices in (
            ("method", [method.value for method in Method]),
            ("seed_policy", [policy.value for policy in SeedPolicy]),
            ("scheduler", list(ALL_SCHEDULER_NAMES)),
        ):
            value = getattr(self, name)
            if value is not None and value not in choices:
                errors[name] = ValidationError(
                    "Unknown %(name)s %(value)s; choose one of %(choices)s.",
                    code=f"unknown_{name}",
                    params={
                        "name": name.replace("_", " "),
                        "value": value,
                        "choices": ", ".join(choices),
                    },
                )
        ranges = [
            ("strength", MIN_FRACTION, MAX_FRACTION),
            ("steps", MIN_STEPS, MAX_STEPS),
            ("guidance_scale", MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE),
            ("true_cfg_scale", MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE),
            ("seed", MIN_SEED, MAX_SEED),
            ("ip_adapter_scale", MIN_WEIGHT, MAX_WEIGHT),
            ("lora_scale", MIN_WEIGHT, MAX_WEIGHT),
            ("detailer_strength", MIN_INPAINT_STRENGTH, MAX_FRACTION),
            ("detailer_padding", 0, MAX_ONLY_MASKED_PADDING),
        ]
        for name, low, high in ranges:
            _check_range(errors, name, getattr(self, name), low, high)
        for unit_id, unit in (self.control_units or {}).items():
            key = f"unit_{unit_id}"
            _check_range(errors, key, unit.conditioning_scale, MIN_WEIGHT, MAX_WEIGHT)
            _check_range(errors, key, unit.guidance_start, MIN_FRACTION, MAX_FRACTION)
            _check_range(errors, key, unit.guidance_end, MIN_FRACTION, MAX_FRACTION)
            if key not in errors and unit.guidance_start >= unit.guidance_end:
                errors[key] = ValidationError(
                    "The guidance window must start before it ends; got "
                    "%(start)s to %(end)s.",
                    code="bad_window",
                    params={"start": unit.guidance_start, "end": unit.guidance_end},
                )
        for name, validator in (
            ("width", validate_width),
            ("height", validate_height),
            ("detailer_prompt", validate_prompt_text),
        ):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                validator(value)
            except ValidationError as error:
                errors[name] = error
        if errors:
            raise ValidationError(errors)


def _check_range(
    errors: dict[str, ValidationError],
    name: str,
    value: float | None,
    low: float,
    high: float,
) -> None:
    if value is None or name in errors:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        valid = False
    else:
        valid = low <= value <= high  # False for NaN
    if not valid:
        errors[name] = ValidationError(
            "%(name)s must be between %(low)s and %(high)s; got %(value)s.",
            code="out_of_range",
            params={
                "name": name.replace("_", " "),
                "low": low,
                "high": high,
                "value": value,
            },
        )


def compose_prompt(persona: Persona, prompt: str, method: str | None = None) -> str:
    """The persona's appearance description anchors every prompt: in front of
    it, or, for a reference edit (whose prompt is an instruction), after it as
    what to keep (``vocabulary.REFERENCE_EDIT_PROMPT``)."""
    appearance, prompt = persona.appearance.strip(), prompt.strip()
    if method == Method.REFERENCE_EDIT and appearance:
        return REFERENCE_EDIT_PROMPT.format(
            instruction=prompt.rstrip("."), appearance=appearance.rstrip(".")
        )
    return ", ".join(part for part in (appearance, prompt) if part)


def compose_negative_prompt(persona: Persona, negative_prompt: str) -> str:
    parts = (persona.negative_prompt.strip(), negative_prompt.strip())
    return ", ".join(part for part in parts if part)


def before_reference(persona: Persona) -> ReferenceImage | None:
    """The reference an output is compared with: the primary one, else the first."""
    references = list(persona.references.all())
    return next((ref for ref in references if ref.is_primary), None) or next(
        iter(references), None
    )


def request_for_persona(
    persona: Persona,
    *,
    prompt: str,
    negative_prompt: str,
    overrides: GenerationOverrides,
    seed: int,
) -> tuple[dict[str, Any], list[ReferenceImage]]:
    """The engine request (JSON form, storage names) for one generation, and the
    references it gives the engine.

    Text-only generations get no references; the others get the whole gallery
    (the engine chooses which image does what, ``engine/methods.py``). ControlNet
    units go with ``auto``, ``controlnet`` and ``hybrid``; IP-Adapter settings with
    ``auto`` and ``ip_adapter``.
    """
    method = overrides.method or persona.method
    references = (
        list(persona.references.all()) if method in METHODS_TAKING_REFERENCES else []
    )
    positions = {reference.pk: index for index, reference in enumerate(references)}
    units = (
        _units_for_run(persona, overrides.control_units or {})
        if method in METHODS_TAKING_CONTROL_UNITS
        else []
    )
    prompt_method = (
        Method.REFERENCE_EDIT
        if method == Method.AUTO
        and _auto_edits(persona, has_reference=bool(references), has_units=bool(units))
        else method
    )
    ip_adapter_references = (
        None
        if overrides.ip_adapter_references is None
        else [
            positions[pk] for pk in overrides.ip_adapter_references if pk in positions
        ]
    )
    request = {
        "model": persona.base_model,
        "prompt": compose_prompt(persona, prompt, prompt_method),
        "method": method,
        "negative_prompt": compose_negative_prompt(persona, negative_prompt),
        "seed": seed,
        "steps": _override(overrides.steps, persona.steps),
        "guidance_scale": _override(overrides.guidance_scale, persona.guidance_scale),
        "true_cfg_scale": _override(overrides.true_cfg_scale, persona.true_cfg_scale),
        "width": _override(overrides.width, persona.width),
        "height": _override(overrides.height, persona.height),
        "num_images": 1,
        "strength": _override(overrides.strength, persona.img2img_strength),
        "resize_mode": persona.resize_mode,
        "references": [_reference_data(reference) for reference in references],
        "appearance_locked": persona.appearance_locked,
        "control_units": [
            {
                "control_type": unit.control_type,
                "conditioning_scale": run.conditioning_scale,
                "guidance_start": run.guidance_start,
                "guidance_end": run.guidance_end,
                "preprocessor_options": dict(unit.preprocessor_options),
                "control_image": unit.control_image.name or None,
                "reference_index": positions.get(unit.reference_id),
            }
            for unit, run in units
        ],
        "ip_adapter": {
            "scale": _override(overrides.ip_adapter_scale, persona.ip_adapter_scale),
            "face_crop": persona.ip_adapter_face_crop,
            "reference_indexes": ip_adapter_references or None,
        }
        if method in METHODS_TAKING_IP_ADAPTER
        else None,
        "lora": {
            "weights": persona.lora_weights.name,
            "scale": _override(overrides.lora_scale, persona.lora_scale),
            "name": "persona",
            "sha256": persona.lora_sha256,
        }
        if persona.lora_weights
        else None,
        "scheduler": overrides.scheduler or persona.scheduler or None,
        "use_refiner": _override(overrides.use_refiner, True),
        "edit_reference_indexes": None
        if overrides.edit_references is None
        else [positions[pk] for pk in overrides.edit_references if pk in positions]
        or None,
        DETAILER_KEY: detailer_for_persona(
            persona, negative_prompt=negative_prompt, overrides=overrides
        ),
    }
    return request, references


def _auto_edits(persona: Persona, *, has_reference: bool, has_units: bool) -> bool:
    """Whether ``auto`` will choose reference_edit for the persona (the engine's
    rule, ``methods.auto_edits_references``), so that its prompt is composed as
    an instruction."""
    from personas.lora import base_model_traits

    try:
        traits = base_model_traits(persona.base_model)
    except EngineError:
        return False
    return traits is not None and auto_edits_references(
        has_reference=has_reference,
        appearance_locked=persona.appearance_locked,
        has_units=has_units,
        row=traits.family,
    )


def detailer_for_persona(
    persona: Persona, *, negative_prompt: str, overrides: GenerationOverrides
) -> dict[str, Any] | None:
    """The face detailer pass of one generation (JSON form), or None when it is
    off for this run.

    The face prompt follows the persona's appearance; the persona's face
    references go to IP-Adapter plus-face when an IP-Adapter is configured for
    its model; the LoRA and the sampling are the generation's (the job takes
    them from its request); the mask blur is ``STUDIO_MASK_BLUR``, frozen here
    so that a replay feathers the same way.
    """
    if not _override(overrides.detailer, persona.detailer_enabled):
        return None
    faces = [
        reference
        for reference in persona.references.all()
        if reference.role == ReferenceRole.FACE
    ]
    with_adapter = bool(faces) and (
        engine_config().ip_adapter_for(persona.base_model) is not None
    )
    return {
        "prompt": compose_prompt(
            persona, _override(overrides.detailer_prompt, persona.detailer_prompt)
        ),
        "negative_prompt": compose_negative_prompt(persona, negative_prompt),
        "strength": _override(overrides.detailer_strength, persona.detailer_strength),
        "padding": _override(overrides.detailer_padding, persona.detailer_padding),
        "mask_blur": settings.STUDIO_MASK_BLUR,
        "references": [_reference_data(reference) for reference in faces]
        if with_adapter
        else [],
        "ip_adapter": {
            "scale": _override(overrides.ip_adapter_scale, persona.ip_adapter_scale),
            "face_crop": True,
            "reference_indexes": None,
        }
        if with_adapter
        else None,
    }


def generation_part(request: Mapping[str, Any]) -> dict[str, Any]:
    """A generation request (JSON form) without its detailer pass: what the
    engine's ``GenerationRequest`` takes."""
    return {name: value for name, value in request.items() if name != DETAILER_KEY}


def _reference_data(reference: ReferenceImage) -> dict[str, Any]:
    return {
        "image": reference.image.name,
        "role": reference.role,
        "sha256": reference.sha256,
        "primary": reference.is_primary,
    }


def _units_for_run(
    persona: Persona, overrides: Mapping[int, UnitOverride]
) -> list[tuple[Any, UnitOverride]]:
    """The persona's units that run, each with the settings it runs with."""
    runs = []
    for unit in persona.control_units.all():
        run = overrides.get(unit.pk) or UnitOverride(
            enabled=unit.enabled,
            conditioning_scale=unit.conditioning_scale,
            guidance_start=unit.guidance_start,
            guidance_end=unit.guidance_end,
        )
        if run.enabled:
            runs.append((unit, run))
    return runs


def request_from_row(
    request: Mapping[str, Any],
    *,
    replay_snapshot: Mapping[str, Any] | None,
    inputs: Mapping[str, str],
) -> tuple[GenerationRequest, dict[str, str]]:
    """The ``GenerationRequest`` of a row, its images read through the storage API,
    and the map of content keys to storage names that a replay of its snapshot
    needs. A missing file is an ``InvalidRequest`` that says which."""
    # Imported here: the snapshot module imports torch, which the web process
    # (which only builds requests) never needs.
    from generation.engine.snapshot import (
        image_sha256,
        lora_key,
        reference_key,
        request_from_dict,
        request_from_snapshot,
    )

    if replay_snapshot is not None:
        replayed = request_from_snapshot(
            replay_snapshot,
            open_image=lambda key: open_stored_image(_input_name(inputs, key)),
            read_bytes=lambda key: read_stored_bytes(_input_name(inputs, key)),
        )
        return replayed, dict(inputs)
    built = request_from_dict(
        generation_part(request),
        open_image=open_stored_image,
        read_bytes=read_stored_bytes,
    )
    keys: dict[str, str] = {}
    for data, reference in zip(request["references"], built.references, strict=True):
        keys[reference_key(reference)] = data["image"]
    for data, unit in zip(request["control_units"], built.control_units, strict=True):
        if unit.control_image is not None:
            keys[image_sha256(unit.control_image)] = data["control_image"]
    if built.lora is not None:
        keys[lora_key(built.lora)] = request["lora"]["weights"]
    return built, keys


def detailer_from_row(
    request: Mapping[str, Any], *, image: Image.Image, generation: GenerationRequest
) -> Any:
    """The ``DetailerRequest`` of a row's detailer pass over ``image`` (the
    generation's output): its own prompt, strength, padding, blur and face
    references, and the generation's model, seed, sampling and LoRA."""
    from generation.engine.detailer import DetailerRequest

    detailer = request[DETAILER_KEY]
    return DetailerRequest(
        model=generation.model,
        image=image,
        prompt=detailer["prompt"],
        negative_prompt=detailer["negative_prompt"],
        seed=generation.seed,
        steps=generation.steps,
        guidance_scale=generation.guidance_scale,
        strength=detailer["strength"],
        padding=detailer["padding"],
        mask_blur=detailer["mask_blur"],
        references=[_reference_input(data) for data in detailer["references"]],
        ip_adapter=None
        if detailer["ip_adapter"] is None
        else IPAdapterInput(**detailer["ip_adapter"]),
        lora=generation.lora,
        scheduler=generation.scheduler,
    )


def detailer_outline(request: Mapping[str, Any]) -> InpaintRequest:
    """One face of a row's detailer pass as the checks see it (numbers only:
    a stand-in image and a full mask, no file read)."""
    detailer = request[DETAILER_KEY]
    size = (1, 1)
    return InpaintRequest(
        model=request["model"],
        image=Image.new("RGB", size),
        mask=Image.new("L", size, 255),
        prompt=detailer["prompt"],
        negative_prompt=detailer["negative_prompt"],
        steps=request["steps"],
        guidance_scale=request["guidance_scale"],
        strength=detailer["strength"],
        mask_blur=detailer["mask_blur"],
        only_masked=True,
        only_masked_padding=detailer["padding"],
    )


INPAINT_FIELDS = (
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance_scale",
    "strength",
    "mask_blur",
    "only_masked",
    "only_masked_padding",
    "size",
    "scheduler",
)
"""The fields of an inpaint request (JSON form) that are the engine's
``InpaintRequest``'s as they are; ``image`` and ``mask`` are storage names."""


def inpaint_from_row(request: Mapping[str, Any]) -> InpaintRequest:
    """The ``InpaintRequest`` of an inpaint row (``kind`` inpaint), its image
    and mask read through the storage API."""
    return InpaintRequest(
        model=request["model"],
        image=open_stored_image(request["image"]),
        mask=open_stored_image(request["mask"]).convert("L"),
        **{name: request[name] for name in INPAINT_FIELDS},
    )


def inpaint_outline(
    request: Mapping[str, Any],
    *,
    size: tuple[int, int],
    mask: Image.Image | None = None,
) -> InpaintRequest:
    """An inpaint row's request as the checks see it, without reading a file:
    a stand-in image of ``size`` and ``mask`` (a full mask when not given)."""
    return InpaintRequest(
        model=request["model"],
        image=Image.new("RGB", size),
        mask=Image.new("L", size, 255) if mask is None else mask,
        **{name: request[name] for name in INPAINT_FIELDS},
    )


def is_inpaint_request(request: Mapping[str, Any]) -> bool:
    return request.get("kind") == INPAINT_KIND


def _reference_input(data: Mapping[str, Any]) -> ReferenceInput:
    return ReferenceInput(
        image=open_stored_image(data["image"]),
        role=ReferenceRole(data["role"]),
        sha256=data["sha256"],
        primary=data["primary"],
    )


def request_outline(request: Mapping[str, Any]) -> GenerationRequest:
    """A row's request as the plan check sees it (``engine/plan.py``), read
    cheaply: images are not opened (the check asks only which exist), and the
    LoRA is the header of its file, the only part the check reads."""
    references = [
        ReferenceInput(
            image=_NOT_OPENED,
            role=data["role"],
            sha256=data["sha256"],
            primary=data["primary"],
        )
        for data in request["references"]
    ]
    units = [
        ControlUnitInput(
            **{
                **data,
                "control_image": None if data["control_image"] is None else _NOT_OPENED,
            }
        )
        for data in request["control_units"]
    ]
    lora = request["lora"]
    return GenerationRequest(
        **{
            **generation_part(request),
            "references": references,
            "control_units": units,
            "ip_adapter": None
            if request["ip_adapter"] is None
            else IPAdapterInput(**request["ip_adapter"]),
            "lora": None
            if lora is None
            else LoraInput(**{**lora, "weights": _stored_header(lora["weights"])}),
        }
    )


# What the outline carries for an image it did not open: the plan check asks
# only whether a unit has a control image, never looks at one.
_NOT_OPENED = Image.new("RGB", (1, 1))


def _stored_header(name: str) -> bytes:
    """The header of a stored ``.safetensors`` file (its length, then the JSON
    header; the upload check bounds it), without reading its tensors."""
    from generation.engine.plan import lora_header_bytes

    try:
        with default_storage.open(name, "rb") as file:
            head = file.read(8)
            return head + file.read(lora_header_bytes(head) - len(head))
    except FileNotFoundError:
        raise InvalidRequest(
            f"The file {name} is no longer in storage (were the persona's LoRA "
            "weights replaced?); generate again from the persona."
        ) from None


def open_stored_image(name: str) -> Image.Image:
    """An RGB image from storage, fully decoded (the file is closed after)."""
    try:
        with default_storage.open(name, "rb") as file:
            image = Image.open(file)
            image.load()
    except FileNotFoundError:
        raise InvalidRequest(
            f"The image {name} is no longer in storage (was it removed from the "
            "gallery?); generate again from the persona."
        ) from None
    return image.convert("RGB")


def read_stored_bytes(name: str) -> bytes:
    try:
        with default_storage.open(name, "rb") as file:
            return file.read()
    except FileNotFoundError:
        raise InvalidRequest(
            f"The file {name} is no longer in storage (were the persona's LoRA "
            "weights replaced?); generate again from the persona."
        ) from None


def _input_name(inputs: Mapping[str, str], key: str) -> str:
    try:
        return inputs[key]
    except KeyError:
        raise InvalidRequest(
            "An input of the original generation is no longer known, so it cannot "
            "be regenerated exactly; regenerate it with a new seed instead."
        ) from None


def _override(value: Any, default: Any) -> Any:
    return default if value is None else value
