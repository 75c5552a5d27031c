"""Which pipeline runs a request, and whether the request can run at all.

Pure rules, no torch work: ``plan_method`` checks a request before anything is
loaded (DESIGN.md: awkward requests fail before any GPU work) and resolves it to a
``MethodPlan``: the base pipeline, the references each part uses, and whether an
IP-Adapter is layered on top. ``pipeline_class`` maps a base method to its
diffusers class, the way diffusers' ``auto_pipeline`` maps tasks to classes.

Base methods and their pipelines:

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
=========== ========================================= ==========================

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
reference, else the primary one.
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from dataclasses import dataclass

from .errors import InvalidRequest, ModelNotFound
from .requests import (
    ControlType,
    GenerationRequest,
    IPAdapterInput,
    Method,
    ReferenceRole,
)

PIPELINE_CLASS_NAMES: dict[Method, str] = {
    Method.TEXT: "StableDiffusionPipeline",
    Method.IMG2IMG: "StableDiffusionImg2ImgPipeline",
    Method.CONTROLNET: "StableDiffusionControlNetPipeline",
    Method.HYBRID: "StableDiffusionControlNetImg2ImgPipeline",
}
"""Base method -> diffusers pipeline class name (auto and ip_adapter resolve to
one of these first)."""

METHODS_WITH_STRENGTH = (Method.IMG2IMG, Method.HYBRID)
METHODS_WITH_CONTROL = (Method.CONTROLNET, Method.HYBRID)

MIN_SIZE, MAX_SIZE = 64, 2048
MAX_STEPS = 150
MAX_GUIDANCE_SCALE = 30.0
MAX_IMAGES = 8
MAX_SEED = 2**63 - 1
MAX_WEIGHT = 2.0
"""Upper bound of ControlNet, IP-Adapter and LoRA scales."""


@dataclass(frozen=True)
class MethodPlan:
    """A checked request resolved to what runs.

    ``method`` is what the result reports (the requested method, or what auto
    chose); ``base`` is the method whose pipeline runs. ``init_reference`` is the
    index of the img2img/hybrid init image; ``unit_references`` gives, per control
    unit, the reference it is made from (None: a ready-made control image).
    """

    method: Method
    base: Method
    reason: str
    ip_adapter: IPAdapterInput | None
    init_reference: int | None
    unit_references: tuple[int | None, ...]
    ip_adapter_references: tuple[int, ...]

    @property
    def pipeline_class_name(self) -> str:
        return PIPELINE_CLASS_NAMES[self.base]

    @property
    def control_types(self) -> tuple[ControlType, ...]:
        return ()


def pipeline_class(method: Method) -> type:
    """The diffusers pipeline class that runs a base method."""
    try:
        name = PIPELINE_CLASS_NAMES[Method(method)]
    except (KeyError, ValueError):
        bases = ", ".join(m.value for m in PIPELINE_CLASS_NAMES)
        raise InvalidRequest(
            f"No pipeline runs method {method!r} directly; the base methods are "
            f"{bases} (auto and ip_adapter are resolved to one of them first)."
        ) from None
    return getattr(importlib.import_module("diffusers"), name)


def primary_reference(request: GenerationRequest) -> int | None:
    """Index of the primary reference: the first marked primary, else the first."""
    for index, reference in enumerate(request.references):
        if reference.primary:
            return index
    return 0 if request.references else None


def denoising_steps(steps: int, strength: float) -> int:
    """Steps img2img really runs: the expression diffusers' ``get_timesteps`` uses."""
    return min(int(steps * strength), steps)


def plan_method(
    request: GenerationRequest,
    *,
    models: Collection[str],
    controlnets: Collection[str],
    ip_adapter_installed: bool,
) -> MethodPlan:
    """Check ``request`` and resolve its method; raise before any model work.

    ``models`` are the configured model keys, ``controlnets`` the control types
    (values) that have a ControlNet configured.
    """
    if request.model not in models:
        known = ", ".join(sorted(models)) or "none"
        raise ModelNotFound(
            f"Unknown model {request.model!r}; configured models: {known}."
        )
    _check_numbers(request)
    unit_references = _unit_references(request, controlnets)
    method, base, reason, use_ip_adapter = _choose(request, ip_adapter_installed)
    if base in METHODS_WITH_STRENGTH:
        _check_strength(request)
    ip_adapter = None
    ip_adapter_references: tuple[int, ...] = ()
    if use_ip_adapter:
        if not ip_adapter_installed:
            raise InvalidRequest(
                "IP-Adapter settings were given but no IP-Adapter is installed; "
                "configure one or remove the IP-Adapter settings."
            )
        if not request.references:
            raise InvalidRequest("The IP-Adapter needs at least one reference image.")
        ip_adapter = request.ip_adapter or IPAdapterInput()
        ip_adapter_references = _ip_adapter_references(request, ip_adapter)
    init_reference = primary_reference(request) if base in METHODS_WITH_STRENGTH else None
    return MethodPlan(
        method=method,
        base=base,
        reason=reason,
        ip_adapter=ip_adapter,
        init_reference=init_reference,
        unit_references=unit_references if base in METHODS_WITH_CONTROL else (),
        ip_adapter_references=ip_adapter_references,
    )
