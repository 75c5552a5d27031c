"""Which pipeline runs a request, and whether the request can run at all.

Pure rules, no torch work: ``plan_method`` checks a request before anything is
loaded (DESIGN.md: awkward requests fail before any GPU work) and resolves it to a
``MethodPlan``: the base pipeline, the references each part uses, and whether an
IP-Adapter is layered on top. ``pipeline_class`` maps a base method to its
diffusers class for the model's family (``families``: each family row holds the
mapping, the way diffusers' ``auto_pipeline`` maps tasks to classes); the rules
below are the same for every family.

Base methods and their pipelines (SD 1.5's; SDXL's are the
``StableDiffusionXL...`` classes of the same names):

=========== ========================================= ==========================
method      diffusers pipeline                        needs
=========== ========================================= ==========================
text        StableDiffusionPipeline                   nothing
img2img     StableDiffusionImg2ImgPipeline            a reference
controlnet  StableDiffusionControlNetPipeline         >= 1 control unit, each with
            (MultiControlNetModel for several units)  a control image or reference
hybrid      StableDiffusionControlNetImg2ImgPipeline  a reference, >= 1 unit
ip_adapter  IP-Adapter on text, or on img2img when    a reference, an installed
            the appearance is locked                  IP-Adapter, no units
reference_  FluxKontextPipeline (flux),               a reference, a model of a
edit        QwenImageEditPlusPipeline (qwen-image)    reference-editing family,
                                                      no units, no IP-Adapter
=========== ========================================= ==========================

A family runs only the methods its row maps (``Family.pipeline_classes``): flux
runs text, img2img and reference_edit; sd15 and sdxl every method but
reference_edit. Any other method is refused with the family's own list, before
anything is queued.

Any explicit method also takes ``ip_adapter`` settings: the IP-Adapter is then
layered on that method's pipeline (it must be installed and there must be a
reference). A LoRA is an extra layer on any method.

``auto`` rules, first match wins for the base:

===================================================== ==========================
request carries                                       base method
===================================================== ==========================
control units, appearance locked, a reference         hybrid
control units                                         controlnet
no reference                                          text
a reference, appearance locked, a reference-editing   reference_edit
family (flux, qwen-image)
a reference, appearance locked                        img2img
a reference, appearance not locked                    text (img2img would copy
                                                      the reference's composition,
                                                      which only a locked
                                                      appearance asks for)
===================================================== ==========================

Then ``auto`` adds the IP-Adapter when one is installed and the request has a face
reference or names IP-Adapter references explicitly (``ip_adapter.
reference_indexes``); its settings come from ``ip_adapter`` or the defaults. When
it is added on a text or img2img base the reported method is ``ip_adapter`` (the
same pair an explicit ``ip_adapter`` gives); on controlnet or hybrid the reported
method stays that and the reason says the IP-Adapter was added.

References: the init image of img2img and hybrid, and the default source of
control units, is the primary reference (the first marked primary, else the
first). IP-Adapter images are ``ip_adapter.reference_indexes``, else every face
reference, else the primary one. reference_edit takes
``edit_reference_indexes`` when the run names them (1 to ``MAX_EDIT_REFERENCES``,
no repeats), else the primary reference and then up to two more, by role:
face, half body, full body, other, style, pose (gallery order within a role).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from dataclasses import dataclass, replace

from .errors import InvalidRequest, ModelNotFound
from .families import (
    DEFAULT_FAMILY,
    Family,
    families_with,
    family,
    true_cfg_problem,
)
from .requests import GenerationRequest, IPAdapterInput
from .vocabulary import (
    MAX_EDIT_REFERENCES,
    MAX_FRACTION,
    MAX_GUIDANCE_SCALE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_STEPS,
    MAX_WEIGHT,
    METHODS_NEEDING_REFERENCE,
    METHODS_WITH_CONTROL,
    METHODS_WITH_STRENGTH,
    MIN_FRACTION,
    MIN_GUIDANCE_SCALE,
    MIN_SEED,
    MIN_STEPS,
    MIN_WEIGHT,
    ControlType,
    Method,
    ReferenceRole,
)

PIPELINE_CLASS_NAMES: dict[Method, str] = dict(DEFAULT_FAMILY.pipeline_classes)
"""Base method -> diffusers pipeline class name of the default family (SD 1.5);
each family's own mapping is ``Family.pipeline_classes``."""


@dataclass(frozen=True)
class MethodPlan:
    """A checked request resolved to what runs.

    ``method`` is what the result reports (the requested method, or what auto
    chose); ``base`` is the method whose pipeline runs. ``init_reference`` is the
    index of the img2img/hybrid init image; ``unit_references`` gives, per control
    unit, the reference its control image is made from (None: a ready-made one).
    """

    method: Method
    base: Method
    reason: str
    ip_adapter: IPAdapterInput | None = None
    init_reference: int | None = None
    control_types: tuple[ControlType, ...] = ()
    unit_references: tuple[int | None, ...] = ()
    ip_adapter_references: tuple[int, ...] = ()
    family: str = DEFAULT_FAMILY.key
    edit_references: tuple[int, ...] = ()
    """The references a reference edit is given, in order (primary first)."""

    @property
    def pipeline_class_name(self) -> str:
        return family(self.family).pipeline_class_name(self.base)


def pipeline_class(method: Method, model_family: Family | str = DEFAULT_FAMILY) -> type:
    """The diffusers pipeline class that runs a base method for a family."""
    row = family(model_family)
    if method not in row.pipeline_classes:
        bases = ", ".join(m.value for m in row.pipeline_classes)
        raise InvalidRequest(
            f"No pipeline runs method {method!r} directly; the base methods are "
            f"{bases} (auto and ip_adapter resolve to one of them first)."
        )
    return getattr(
        importlib.import_module("diffusers"), row.pipeline_class_name(method)
    )


def primary_reference(request: GenerationRequest) -> int | None:
    """Index of the primary reference: the first marked primary, else the first."""
    for index, reference in enumerate(request.references):
        if reference.primary:
            return index
    return 0 if request.references else None


def denoising_steps(steps: int, strength: float) -> int:
    """Steps img2img really runs: the expression of diffusers' ``get_timesteps``."""
    return min(int(steps * strength), steps)


def plan_method(
    request: GenerationRequest,
    *,
    models: Collection[str],
    controlnets: Collection[str],
    ip_adapter_installed: bool,
    model_family: Family | str = DEFAULT_FAMILY,
) -> MethodPlan:
    """Check ``request`` and resolve its method; raise before any model work.

    ``models`` are the configured model keys, ``controlnets`` the control types
    (their values) that have a ControlNet configured for the model,
    ``model_family`` the model's family (its sizes and pipeline classes).
    """
    if request.model not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelNotFound(
            f"Unknown model {request.model!r}; the configured models are: {known}."
        )
    row = family(model_family)
    _check_numbers(request, row)
    method, base, reason, use_ip_adapter = _choose(
        request, ip_adapter_installed, row
    )
    _check_family_runs(row, base, method)
    plan = MethodPlan(method=method, base=base, reason=reason, family=row.key)
    if base is Method.REFERENCE_EDIT:
        plan = replace(plan, edit_references=_edit_references(request))
    if base in METHODS_WITH_CONTROL:
        plan = replace(
            plan,
            control_types=tuple(
                ControlType(unit.control_type) for unit in request.control_units
            ),
            unit_references=_unit_references(request, controlnets),
        )
    if base in METHODS_WITH_STRENGTH:
        _check_strength(request.steps, request.strength)
        plan = replace(plan, init_reference=primary_reference(request))
    if use_ip_adapter:
        if row.ip_adapter is None:
            raise InvalidRequest(
                f"The studio serves no IP-Adapter for {row.label} models: remove "
                "the IP-Adapter settings, or use reference_edit, which takes the "
                "identity from the references themselves."
            )
        if not takes_ip_adapter(row, base):
            raise InvalidRequest(
                f"{row.pipeline_class_name(base)} ({base.value} on {row.label}) "
                "takes no IP-Adapter in diffusers (it has no load_ip_adapter): "
                "remove the IP-Adapter settings, or choose "
                + ", ".join(sorted(m.value for m in row.ip_adapter_methods or ()))
                + "."
            )
        if not ip_adapter_installed:
            raise InvalidRequest(
                "IP-Adapter settings were given but no IP-Adapter is installed: "
                "configure one, or remove the IP-Adapter settings."
            )
        if not request.references:
            raise InvalidRequest("The IP-Adapter needs at least one reference image.")
        ip_adapter = request.ip_adapter or IPAdapterInput()
        plan = replace(
            plan,
            ip_adapter=ip_adapter,
            ip_adapter_references=_ip_adapter_references(request, ip_adapter),
        )
    return plan


ROLE_ORDER_FOR_EDITING = (
    ReferenceRole.FACE,
    ReferenceRole.HALF_BODY,
    ReferenceRole.FULL_BODY,
    ReferenceRole.OTHER,
    ReferenceRole.STYLE,
    ReferenceRole.POSE,
)
"""Which references a reference edit takes after the primary one: those that
show the person best first (a pose reference shows a pose, not the person)."""


def takes_ip_adapter(row: Family, base: Method) -> bool:
    """Whether the family's pipeline for a base method takes an IP-Adapter."""
    return row.ip_adapter is not None and (
        row.ip_adapter_methods is None or base in row.ip_adapter_methods
    )


def auto_edits_references(
    *, has_reference: bool, appearance_locked: bool, has_units: bool, row: Family
) -> bool:
    """Whether ``auto`` chooses reference_edit: a locked appearance, a
    reference, no control units, and a model of a reference-editing family."""
    return (
        has_reference
        and appearance_locked
        and not has_units
        and Method.REFERENCE_EDIT in row.pipeline_classes
    )


def _check_family_runs(row: Family, base: Method, method: Method) -> None:
    """Refuse a method the model's family has no pipeline for, with the reason."""
    if base in row.pipeline_classes:
        return
    runs = ", ".join(m.value for m in row.pipeline_classes)
    editing = ", ".join(
        f"{other.key} ({other.label})" for other in families_with(base)
    )
    need = (
        f"; {base.value} needs a model of the families {editing}"
        if editing
        else ""
    )
    via = "" if method is base else f" (auto and ip_adapter chose {base.value})"
    raise InvalidRequest(
        f"Method {method.value}{via} is not available for {row.label} models: "
        f"their pipelines run {runs}{need}. Choose one of those methods, or a "
        "base model of a family that runs it."
    )


def _edit_references(request: GenerationRequest) -> tuple[int, ...]:
    """The references of a reference edit (rules in the module docstring)."""
    named = request.edit_reference_indexes
    if named is not None:
        if not 1 <= len(named) <= MAX_EDIT_REFERENCES:
            raise InvalidRequest(
                f"reference_edit takes 1 to {MAX_EDIT_REFERENCES} references; "
                f"{len(named)} were named."
            )
        for index in named:
            _check_reference_index(request, index, "reference_edit")
        if len(set(named)) != len(named):
            raise InvalidRequest(
                "reference_edit: a reference is named twice; name each once."
            )
        return tuple(named)
    primary = primary_reference(request)
    assert primary is not None  # the method needs a reference
    others = sorted(
        (index for index in range(len(request.references)) if index != primary),
        key=lambda index: ROLE_ORDER_FOR_EDITING.index(
            ReferenceRole(request.references[index].role)
        ),
    )
    return (primary, *others[: MAX_EDIT_REFERENCES - 1])


def asks_for_ip_adapter(request: GenerationRequest) -> bool:
    """Whether a request asks for the IP-Adapter itself (its method, or its
    settings with an explicit method), rather than leaving it to ``auto``."""
    if request.method in (Method.AUTO, Method.REFERENCE_EDIT):
        return False  # auto's choice; reference_edit refuses the settings
    return request.method == Method.IP_ADAPTER or request.ip_adapter is not None


def _choose(
    request: GenerationRequest, ip_adapter_installed: bool, row: Family
) -> tuple[Method, Method, str, bool]:
    """(reported method, base method, reason, whether the IP-Adapter is layered)."""
    try:
        method = Method(request.method)
    except ValueError:
        choices = ", ".join(m.value for m in Method)
        raise InvalidRequest(
            f"Unknown method {request.method!r}; choose one of: {choices}."
        ) from None
    if method is Method.AUTO:
        return _choose_auto(request, ip_adapter_installed, row)
    _check_explicit(method, request)
    if (
        method is Method.REFERENCE_EDIT
        and request.ip_adapter is not None
        and not takes_ip_adapter(row, method)
    ):
        raise InvalidRequest(
            "Method reference_edit takes no IP-Adapter settings: the references "
            "themselves carry the identity. Remove the IP-Adapter settings."
        )
    if method is Method.IP_ADAPTER:
        base = Method.IMG2IMG if request.appearance_locked else Method.TEXT
        state = "locked" if request.appearance_locked else "not locked"
        reason = (
            f"ip_adapter requested: IP-Adapter on {base.value} (appearance {state})"
        )
        return method, base, reason, True
    with_ip_adapter = request.ip_adapter is not None
    reason = f"{method.value} requested" + (
        " with IP-Adapter settings" if with_ip_adapter else ""
    )
    return method, method, reason, with_ip_adapter


def _check_explicit(method: Method, request: GenerationRequest) -> None:
    """What an explicitly requested method needs from the request."""
    if method in METHODS_WITH_CONTROL and not request.control_units:
        raise InvalidRequest(
            f"Method {method.value} needs at least one ControlNet unit."
        )
    if method not in METHODS_WITH_CONTROL and request.control_units:
        why = (
            " (diffusers has no reference-editing pipeline with a ControlNet: "
            "FluxKontextPipeline and QwenImageEditPlusPipeline take none)"
            if method is Method.REFERENCE_EDIT
            else ""
        )
        raise InvalidRequest(
            f"Method {method.value} takes no ControlNet units{why}; use "
            "controlnet, or hybrid to keep the reference's composition too."
        )
    needs_reference = method in METHODS_NEEDING_REFERENCE
    if needs_reference and not request.references:
        raise InvalidRequest(
            f"Method {method.value} needs a reference image and the request has none."
        )


def _choose_auto(
    request: GenerationRequest, ip_adapter_installed: bool, row: Family
) -> tuple[Method, Method, str, bool]:
    """The documented auto rules (module docstring)."""
    has_reference = bool(request.references)
    locked = request.appearance_locked
    if auto_edits_references(
        has_reference=has_reference,
        appearance_locked=locked,
        has_units=bool(request.control_units),
        row=row,
    ):
        count = min(len(request.references), MAX_EDIT_REFERENCES)
        reason = (
            "a reference with a locked appearance on a reference-editing model "
            f"({row.label}): reference_edit from {count} reference(s)"
        )
        return Method.REFERENCE_EDIT, Method.REFERENCE_EDIT, reason, False
    if request.control_units and locked and has_reference:
        base = Method.HYBRID
        reason = "control units with a locked appearance and a reference: hybrid"
    elif request.control_units:
        base = Method.CONTROLNET
        reason = "control units: controlnet"
        if locked:
            reason += " (appearance locked, but no reference to start from)"
    elif not has_reference:
        base, reason = Method.TEXT, "no reference image: text"
    elif locked:
        base = Method.IMG2IMG
        reason = "a reference with a locked appearance and no control units: img2img"
    else:
        base = Method.TEXT
        reason = (
            "appearance not locked and no control units: text (img2img would copy "
            "the reference's composition)"
        )
    has_face = any(ref.role == ReferenceRole.FACE for ref in request.references)
    names_references = (
        request.ip_adapter is not None
        and request.ip_adapter.reference_indexes is not None
    )
    if not (has_face or names_references) or not takes_ip_adapter(row, base):
        return base, base, reason, False
    if not ip_adapter_installed:
        return base, base, reason + "; no IP-Adapter installed for identity", False
    why = "face references" if has_face else "the IP-Adapter references named"
    reason += f"; IP-Adapter added for identity from {why}"
    method = Method.IP_ADAPTER if base in (Method.TEXT, Method.IMG2IMG) else base
    return method, base, reason, True


def _check_numbers(request: GenerationRequest, row: Family) -> None:
    """Ranges, whole numbers and multiples of 8 (the VAE's downscale factor); the
    sizes are the family's."""
    for name in ("steps", "num_images", "seed", "width", "height"):
        value = getattr(request, name)
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidRequest(f"{name} must be a whole number; got {value!r}.")
    _check_range("steps", request.steps, MIN_STEPS, MAX_STEPS)
    _check_range("num_images", request.num_images, 1, MAX_IMAGES)
    _check_range("seed", request.seed, MIN_SEED, MAX_SEED)
    _check_range(
        "guidance_scale",
        request.guidance_scale,
        MIN_GUIDANCE_SCALE,
        MAX_GUIDANCE_SCALE,
    )
    _check_range("strength", request.strength, MIN_FRACTION, MAX_FRACTION)
    multiple = row.size_multiple
    for name in ("width", "height"):
        value = getattr(request, name)
        _check_range(name, value, row.min_size, row.max_size)
        if value % multiple:
            lower = value // multiple * multiple
            raise InvalidRequest(
                f"{name} {value} is not a multiple of {multiple}; use {lower} "
                f"or {lower + multiple}."
            )
    if not isinstance(request.prompt, str) or not isinstance(
        request.negative_prompt, str
    ):
        raise InvalidRequest("The prompt and negative prompt must be text.")
    if request.true_cfg_scale is not None:
        problem = true_cfg_problem(row)
        if problem is not None:
            raise InvalidRequest(problem)
        _check_range(
            "true_cfg_scale",
            request.true_cfg_scale,
            MIN_GUIDANCE_SCALE,
            MAX_GUIDANCE_SCALE,
        )
    if request.ip_adapter is not None:
        _check_ip_adapter(request, request.ip_adapter)
    if request.lora is not None:
        if not request.lora.weights:
            raise InvalidRequest("The LoRA has no weights.")
        _check_range("LoRA scale", request.lora.scale, MIN_WEIGHT, MAX_WEIGHT)
    names = row.scheduler_names or _scheduler_names()
    if request.scheduler is not None and request.scheduler not in names:
        raise InvalidRequest(
            f"Unknown scheduler {request.scheduler!r} for {row.label} models; "
            f"choose one of: {', '.join(names)}."
        )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{name} must be a number; got {value!r}.")
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}; got {value}.")


def _check_strength(steps: int, strength: float) -> None:
    """img2img runs int(steps * strength) steps; zero would fail inside diffusers."""
    runs = denoising_steps(steps, strength)
    if runs >= 1:
        return
    min_strength = next(
        hundredths / 100
        for hundredths in range(1, 101)
        if denoising_steps(steps, hundredths / 100) >= 1
    )
    advice = f"raise the strength to {min_strength}"
    if strength > 0:
        min_steps = next(
            (n for n in range(steps, MAX_STEPS + 1) if int(n * strength)), None
        )
        if min_steps is not None:
            advice = f"raise the steps to {min_steps} or " + advice
    raise InvalidRequest(
        f"Strength {strength} with {steps} steps gives {runs} denoising steps "
        f"(img2img runs int(steps x strength)); at least one is needed: {advice}."
    )


def _unit_references(
    request: GenerationRequest, controlnets: Collection[str]
) -> tuple[int | None, ...]:
    """Check every control unit; return the reference each one is made from."""
    primary = primary_reference(request)
    sources: list[int | None] = []
    for number, unit in enumerate(request.control_units, start=1):
        try:
            control_type = ControlType(unit.control_type)
        except ValueError:
            choices = ", ".join(t.value for t in ControlType)
            raise InvalidRequest(
                f"Control unit {number}: unknown control type "
                f"{unit.control_type!r}; choose one of: {choices}."
            ) from None
        if control_type.value not in controlnets:
            configured = ", ".join(sorted(controlnets)) or "none"
            raise ModelNotFound(
                f"Control unit {number}: no ControlNet is configured for "
                f"{control_type.value}; configured: {configured}."
            )
        label = f"Control unit {number} ({control_type.value})"
        _check_range(
            f"{label} conditioning scale",
            unit.conditioning_scale,
            MIN_WEIGHT,
            MAX_WEIGHT,
        )
        _check_range(
            f"{label} guidance start", unit.guidance_start, MIN_FRACTION, MAX_FRACTION
        )
        _check_range(
            f"{label} guidance end", unit.guidance_end, MIN_FRACTION, MAX_FRACTION
        )
        if unit.guidance_start >= unit.guidance_end:
            raise InvalidRequest(
                f"{label}: the guidance start ({unit.guidance_start}) must come "
                f"before the guidance end ({unit.guidance_end})."
            )
        if unit.control_image is not None:
            sources.append(None)
            continue
        index = unit.reference_index if unit.reference_index is not None else primary
        if index is None:
            raise InvalidRequest(
                f"{label} has neither a control image nor a reference image to make "
                "one from."
            )
        _check_reference_index(request, index, label)
        sources.append(index)
    return tuple(sources)


def _check_ip_adapter(request: GenerationRequest, ip_adapter: IPAdapterInput) -> None:
    _check_range("IP-Adapter scale", ip_adapter.scale, MIN_WEIGHT, MAX_WEIGHT)
    if ip_adapter.reference_indexes is None:
        return
    if not ip_adapter.reference_indexes:
        raise InvalidRequest("The IP-Adapter reference list is empty.")
    for index in ip_adapter.reference_indexes:
        _check_reference_index(request, index, "IP-Adapter")


def _ip_adapter_references(
    request: GenerationRequest, ip_adapter: IPAdapterInput
) -> tuple[int, ...]:
    """The references the IP-Adapter sees (rules in the module docstring)."""
    if ip_adapter.reference_indexes is not None:
        return tuple(ip_adapter.reference_indexes)
    faces = tuple(
        index
        for index, reference in enumerate(request.references)
        if reference.role == ReferenceRole.FACE
    )
    return faces or (primary_reference(request),)


def _check_reference_index(request: GenerationRequest, index: int, who: str) -> None:
    count = len(request.references)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        raise InvalidRequest(
            f"{who}: reference index {index!r} is out of range; the request has "
            f"{count} reference image(s)."
        )


def _scheduler_names() -> tuple[str, ...]:
    """Schedulers that fit Stable Diffusion 1.5 pipelines (diffusers' own list)."""
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers

    return tuple(KarrasDiffusionSchedulers.__members__)
