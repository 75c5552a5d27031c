"""The plan check: everything that makes a request sure to fail, found without
loading a model (DESIGN.md decision 13).

``plan_problems(request, config)`` lists what would fail; ``plan_check`` raises
the first as the engine error the worker would have raised, with the engine's
own message. It runs where a person acts (saving a persona or a unit,
generating, retrying: ``generation.services``) and costs no GPU work, no model
load and no download: it reads configuration, looks for files, and parses at
most the header of a LoRA.

What it checks, in order:

- the scheduler is one the Stable Diffusion pipelines take;
- what ``methods.plan_method`` checks: the model is configured, the numbers are
  in range, the method has what it needs (a reference for img2img, hybrid and
  ip_adapter; control units for controlnet and hybrid), strength x steps leaves
  at least one img2img step, a ControlNet is configured for each unit's type,
  the IP-Adapter is installed when one is asked for;
- each unit's preprocessor and its options are known and sound;
- with the weights on this host (``weights_here``): the model is installed
  (its source resolves and its files are there), its refiner (for text and
  img2img) is of a family that has one and is there, each unit's ControlNet
  resolves, the annotator weights of each unit's preprocessor are present (a
  ready-made control image needs none), and the LoRA fits the model's family
  (``families.check_lora_fits``: its cross-attention width is the model's; a
  UNet LoRA is not put on a transformer model such as FLUX.1, nor the
  reverse).

The family a request is planned with (its methods, sizes, pipelines) is read
from the model's files where they are here, else the one its entry declares
(``plan_family``): a method the family lacks, reference_edit on SD 1.5 say, is
refused here, before anything is queued.

The images of the request are never looked at, only whether they exist; the
LoRA's ``weights`` may be only the file's header (the web process reads no more,
``lora_header_bytes``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from typing import Any

from .config import EngineConfig, ModelSpec
from .errors import (
    EngineError,
    InvalidRequest,
    MissingWeights,
    ModelNotFound,
    SourceRefused,
)
from .families import (
    DEFAULT_FAMILY,
    FAMILIES,
    Family,
    FamilyMismatch,
    ModelTraits,
    check_controlnet_fits,
    check_model_runs,
    check_refiner_fits,
    family,
    safetensors_header,
)
from .families import check_lora_fits as check_family_fits
from .inpaint import check_inpaint_request
from .methods import MethodPlan, asks_for_ip_adapter, plan_method
from .preprocessors import (
    PREPROCESSORS,
    SEG_PREPROCESSOR,
    _missing_message,
    _weights_file,
    preprocessor_name,
    validate_control_unit,
)
from .requests import ControlUnitInput, GenerationRequest, InpaintRequest, LoraInput
from .sources import (
    ResolvedSource,
    check_ip_adapter_file,
    controlnet_traits_of,
    is_offline,
    model_traits,
    resolve_controlnet,
    resolve_ip_adapter,
    resolve_model,
    resolve_source,
)
from .vocabulary import (
    LAYERED_METHODS,
    METHODS_WITH_CONTROL,
    REFINED_METHODS,
    ControlType,
    Method,
)

SCHEDULER_NAMES: tuple[str, ...] = (
    "DDIMScheduler",
    "DDPMScheduler",
    "PNDMScheduler",
    "LMSDiscreteScheduler",
    "EulerDiscreteScheduler",
    "HeunDiscreteScheduler",
    "EulerAncestralDiscreteScheduler",
    "DPMSolverMultistepScheduler",
    "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
    "DEISMultistepScheduler",
    "UniPCMultistepScheduler",
    "DPMSolverSDEScheduler",
    "EDMEulerScheduler",
)
"""The schedulers that fit Stable Diffusion pipelines: the members of diffusers'
``KarrasDiffusionSchedulers``, named here so that the web process need not import
diffusers to check or offer one (``tests/generation/test_plan.py`` keeps the two
equal)."""
ALL_SCHEDULER_NAMES: tuple[str, ...] = SCHEDULER_NAMES + tuple(
    name for row in FAMILIES.values() for name in row.scheduler_names
)
"""Every scheduler some family takes (what a per-run override may name)."""

LORA_HEADER_LENGTH_BYTES = 8


@dataclass(frozen=True)
class Problem:
    """One reason a request is sure to fail: the engine error and its message."""

    code: str
    message: str
    error: type[EngineError] = InvalidRequest

    def __str__(self) -> str:
        return self.message


def plan_problems(
    request: GenerationRequest,
    config: EngineConfig,
    *,
    weights_here: bool | None = None,
) -> list[Problem]:
    """Every problem that makes ``request`` sure to fail under ``config``.

    ``weights_here`` says whether this host holds the weights (model,
    ControlNets, annotators, IP-Adapter) that the workers load: a worker does
    (True); a web host of a many-host deployment has none (docs/deployment.md),
    so its missing files say nothing of the workers'. None decides by whether
    the model's own files are found here (a one-machine studio: yes). Without
    weights here only the request and the configuration are checked.

    The checks of ``methods.plan_method`` stop at the first problem (the later
    ones depend on the plan), so a list has one problem from them at most.
    """
    problems: list[Problem] = []
    spec = config.models.get(request.model)
    model_problems = (
        [] if spec is None else _guarded(lambda: model_source(spec, config))
    )
    if weights_here is None:
        weights_here = not model_problems
    try:
        row = plan_family(spec, config, weights_here and not model_problems)
    except EngineError as error:
        return [_problem(error)]
    names = scheduler_names(row)
    if request.scheduler is not None and request.scheduler not in names:
        problems.append(
            _problem(
                InvalidRequest(
                    f"Unknown scheduler {request.scheduler!r} for {row.label} "
                    f"models; choose one of: {', '.join(names)}."
                )
            )
        )
    adapter = config.ip_adapter_for(request.model) if spec is not None else None
    if (
        weights_here
        and adapter is not None
        and row.ip_adapter is not None
        and asks_for_ip_adapter(request)
    ):
        # Why a configured adapter is not here (its repository, revision and
        # missing file), not only that none is installed.
        missing = _guarded(lambda: resolve_ip_adapter(adapter, config))
        if missing:
            return [*problems, *missing]
    try:
        # The scheduler is checked above: plan_method's own check imports
        # diffusers, which the web process does not need.
        plan = plan_method(
            replace(request, scheduler=None),
            models=config.models,
            controlnets=config.controlnets_for(request.model),
            ip_adapter_installed=(
                ip_adapter_installed(config, request.model)
                if weights_here
                else config.ip_adapter_for(request.model) is not None
            )
            and (row.ip_adapter is not None),
            model_family=row,
        )
    except EngineError as error:
        return [*problems, _problem(error)]
    units = request.control_units if plan.base in METHODS_WITH_CONTROL else []
    for unit in units:
        problems += _guarded(lambda unit=unit: validate_control_unit(unit))
    if not weights_here:
        return problems
    problems += model_problems
    if spec is not None and not model_problems:
        problems += _guarded(
            lambda: check_model_runs(
                model_traits(model_source(spec, config), declared=spec.family),
                plan.base,
                spec.key,
            )
        )
    if (
        spec.refiner is not None
        and request.use_refiner
        and plan.base in REFINED_METHODS
        and not model_problems
    ):
        problems += _guarded(lambda: _check_refiner(spec, config))
    problems += _unit_weight_problems(units, config, request.model)
    if not model_problems:
        problems += _family_fit_problems(plan, spec, config)
    if request.lora is not None and not model_problems:
        problems += _guarded(lambda: check_lora_fits(request.lora, spec, config))
    return problems


def plan_check(
    request: GenerationRequest,
    config: EngineConfig,
    *,
    weights_here: bool | None = None,
) -> None:
    """Raise the first of ``plan_problems`` as the engine error it stands for."""
    problems = plan_problems(request, config, weights_here=weights_here)
    if problems:
        raise problems[0].error(problems[0].message)


def scheduler_names(row: Family) -> tuple[str, ...]:
    """The schedulers a request for a model of this family may name."""
    return row.scheduler_names or SCHEDULER_NAMES


def plan_family(
    spec: ModelSpec | None, config: EngineConfig, files_here: bool
) -> Family:
    """The family a request is planned with: read from the model's files where
    they are here (``UnknownFamily`` for files of no served family), else the
    family its entry declares, else SD 1.5 (the worker plans again)."""
    if spec is None:
        return DEFAULT_FAMILY
    if files_here:
        return model_traits(
            model_source(spec, config),
            declared=spec.family,
            where=f"Model {spec.key!r} ({spec.source})",
        ).family
    return family(spec.family or DEFAULT_FAMILY.key)


def inpaint_problems(
    request: InpaintRequest, row: Family, *, what: str = "Inpainting", prefix: str = ""
) -> list[Problem]:
    """What makes an inpaint (a manual one, or a face of the detailer) sure to
    fail on a model of family ``row``: a family without an inpaint pipeline,
    then ``inpaint.check_inpaint_request``'s refusal (mask, numbers), after
    ``prefix``."""
    if not row.inpaint_pipeline_class:
        able = [key for key, other in FAMILIES.items() if other.inpaint_pipeline_class]
        return [
            Problem(
                code="inpaint_unsupported",
                message=f"{what} needs an inpaint pipeline, and the {row.label} "
                f"family has none; use a model of a family that has one "
                f"({', '.join(able)}).",
            )
        ]
    return _guarded(lambda: check_inpaint_request(request), prefix=prefix)


def ip_adapter_installed(config: EngineConfig, model_key: str | None = None) -> bool:
    """Whether the IP-Adapter weights of a model (None: the engine-wide ones)
    can be found (as the registry decides, without building one)."""
    spec = config.ip_adapter_for(model_key) if model_key else config.ip_adapter
    if spec is None:
        return False
    try:
        resolve_ip_adapter(spec, config)
    except EngineError:
        return False
    return True


def model_source(spec: ModelSpec, config: EngineConfig) -> ResolvedSource:
    """The checked source of a model, as the registry resolves it."""
    return resolve_model(spec, config)


def lora_header_bytes(head: bytes) -> int:
    """How many bytes of a ``.safetensors`` file hold its header, from its first
    8 (the header's length, little-endian)."""
    if len(head) < LORA_HEADER_LENGTH_BYTES:
        raise InvalidRequest("The LoRA file is too short to be a .safetensors file.")
    (length,) = struct.unpack("<Q", head[:LORA_HEADER_LENGTH_BYTES])
    return LORA_HEADER_LENGTH_BYTES + length


def check_lora_fits(lora: LoraInput, spec: ModelSpec, config: EngineConfig) -> None:
    """Refuse a LoRA made for another family or width than the model, with the
    family layer's reason (``families.check_lora_fits``: a Stable Diffusion LoRA
    on FLUX.1, an SDXL one on SD 1.5...).

    Reads the LoRA's header only and the model's small files; says nothing when
    the model's files cannot be found (a Hub model not cached yet).
    """
    end = lora_header_bytes(lora.weights)
    try:
        header = safetensors_header(lora.weights[:end])
    except InvalidRequest as error:
        raise InvalidRequest(
            f"The LoRA {lora.name!r} is not a readable .safetensors file: {error}"
        ) from None
    try:
        traits = model_traits(
            model_source(spec, config),
            declared=spec.family,
            where=f"Model {spec.key!r} ({spec.source})",
        )
    except (ModelNotFound, SourceRefused):
        return
    try:
        check_family_fits(traits, header, spec.key, lora.name)
    except FamilyMismatch as error:
        raise InvalidRequest(str(error)) from None


# --- What a model's family and configuration let it use ------------------------
#
# For the places where a person sets a persona up (its method, its ControlNet
# units): each returns why a choice cannot work for the model, or None. Only
# configs and headers are read; what cannot be read here (a web host without
# weights) is not held against the choice.


def model_traits_here(spec: ModelSpec, config: EngineConfig) -> ModelTraits | None:
    """A model's family and width from its files, None when they are not here
    (raises ``UnknownFamily`` for files of no served family)."""
    try:
        source = model_source(spec, config)
    except (ModelNotFound, SourceRefused):
        return None
    return model_traits(source, declared=spec.family, where=f"Model {spec.key!r}")


def method_problem(
    method: str, model_key: str, config: EngineConfig, model: ModelTraits | None
) -> str | None:
    """Why ``model_key`` cannot run ``method``: its family has no pipeline for
    it, no ControlNet is configured for it (controlnet, hybrid), or its
    IP-Adapter is missing or made for another family (ip_adapter)."""
    spec = config.models[model_key]
    row = model.family if model else family(spec.family or DEFAULT_FAMILY.key)
    chosen = Method(method)
    if chosen not in row.pipeline_classes and chosen not in LAYERED_METHODS:
        offered = ", ".join(m.value for m in (*row.pipeline_classes, *LAYERED_METHODS))
        return (
            f"Model {model_key!r} is {row.label}, which cannot run {chosen.value}: "
            f"its methods are {offered}."
        )
    if chosen in METHODS_WITH_CONTROL and not config.controlnets_for(model_key):
        return (
            f"{chosen.value} needs a ControlNet, and none is configured for model "
            f"{model_key!r}: add them to STUDIO_CONTROLNETS or the model's "
            "controlnets (docs/models.md)."
        )
    if chosen is Method.IP_ADAPTER:
        return ip_adapter_problem(model_key, config, model)
    return None


def ip_adapter_problem(
    model_key: str, config: EngineConfig, model: ModelTraits | None
) -> str | None:
    """Why the model's IP-Adapter cannot be used: none configured, or one made
    for another family (its ``to_k_ip`` width, read from its header)."""
    spec = config.ip_adapter_for(model_key)
    if spec is None:
        return (
            f"Model {model_key!r} has no IP-Adapter configured: set "
            "STUDIO_IP_ADAPTER or the model's ip_adapter (docs/models.md)."
        )
    if model is None:
        return None
    try:
        source = resolve_ip_adapter(spec, config)
        for weight in (spec.weight_name, spec.face_weight_name):
            check_ip_adapter_file(source, spec.weight_file(weight), model, model_key)
    except FamilyMismatch as error:
        return str(error)
    except EngineError:
        return None  # not here: the worker's plan check says
    return None


def control_type_problem(
    control_type: str, model_key: str, config: EngineConfig, model: ModelTraits | None
) -> str | None:
    """Why a unit of ``control_type`` cannot run on ``model_key``: no ControlNet
    configured for it, or one made for another family."""
    spec = config.controlnet_spec(control_type, model_key)
    if spec is None:
        configured = ", ".join(sorted(config.controlnets_for(model_key))) or "none"
        return (
            f"No ControlNet is configured for {control_type!r} on model "
            f"{model_key!r} (configured: {configured}): add one to "
            "STUDIO_CONTROLNETS or the model's controlnets (docs/models.md)."
        )
    if model is None:
        return None
    try:
        source = resolve_controlnet(spec, config)
    except EngineError:
        return None  # not here: the weights check says why
    name = f"{control_type!r} ({source.location})"
    try:
        traits = controlnet_traits_of(source, name)
        if traits is not None:
            check_controlnet_fits(model, traits, model_key, name)
    except (FamilyMismatch, SourceRefused) as error:
        # Another family, or a file layout that cannot be loaded.
        return str(error)
    except EngineError:
        return None
    return None


def annotator_problem(unit: ControlUnitInput, config: EngineConfig) -> str | None:
    """Which annotator weights of a unit (without a ready-made image) are not on
    this host, in the annotators folder or the Hugging Face cache (or that no
    segmentation model is set); None when all are here or none is needed.
    Raises ``InvalidRequest`` for unknown options."""
    validate_control_unit(unit)
    name = preprocessor_name(unit)
    if name == SEG_PREPROCESSOR:
        try:
            _check_annotator_weights(unit, config)
        except MissingWeights as error:
            return str(error)
        return None
    preprocessor = PREPROCESSORS[name]
    missing = [
        filename
        for _, filename in preprocessor.weights
        if _weights_file(filename, config.annotators_dir, offline=True) is None
    ]
    if missing:
        return _missing_message(preprocessor, missing, config.annotators_dir)
    return None


def _family_fit_problems(
    plan: MethodPlan, spec: ModelSpec, config: EngineConfig
) -> list[Problem]:
    """The plan's ControlNets and IP-Adapter against the model's family."""
    try:
        model = model_traits_here(spec, config)
    except EngineError as error:
        return [_problem(error)]
    if model is None:
        return []
    messages = [
        control_type_problem(control_type.value, spec.key, config, model)
        for control_type in dict.fromkeys(plan.control_types)
    ]
    if plan.ip_adapter is not None:
        messages.append(ip_adapter_problem(spec.key, config, model))
    return [
        Problem(code=FamilyMismatch.code, message=message, error=FamilyMismatch)
        for message in messages
        if message is not None
    ]


def _check_refiner(spec: ModelSpec, config: EngineConfig) -> None:
    """A refiner needs a family that has one, and its files here."""
    row = model_traits(model_source(spec, config), declared=spec.family).family
    check_refiner_fits(row, spec.key)
    resolve_source(spec.refiner, config)


def _unit_weight_problems(
    units: list[ControlUnitInput], config: EngineConfig, model_key: str
) -> list[Problem]:
    problems: list[Problem] = []
    for number, unit in enumerate(units, start=1):
        control_type = ControlType(unit.control_type)
        spec = config.controlnet_spec(control_type.value, model_key)
        assert spec is not None  # plan_method refused a type without one
        problems += _guarded(
            lambda spec=spec: resolve_controlnet(spec, config),
            prefix=f"Control unit {number} ({control_type.value}): its ControlNet: ",
        )
        if unit.control_image is None:
            problems += _guarded(
                lambda unit=unit: _check_annotator_weights(unit, config)
            )
    return problems


def _check_annotator_weights(unit: ControlUnitInput, config: EngineConfig) -> None:
    """Raise ``MissingWeights`` with the preprocessor's own message when the
    files it loads are absent. Looks only: nothing is downloaded, and when the
    engine may download, a file missing from the cache is not sure to fail."""
    name = preprocessor_name(unit)
    if name == SEG_PREPROCESSOR:
        if not config.seg_model:
            from .preprocessors import _seg_model

            _seg_model(None, True, "cpu")  # raises the engine's message
        return
    preprocessor = PREPROCESSORS[name]
    offline = is_offline(config)
    missing = [
        filename
        for _, filename in preprocessor.weights
        if _weights_file(filename, config.annotators_dir, offline=True) is None
    ]
    if missing and offline:
        raise MissingWeights(
            _missing_message(preprocessor, missing, config.annotators_dir)
        )


def _guarded(check: Any, *, prefix: str = "") -> list[Problem]:
    try:
        check()
    except EngineError as error:
        return [_problem(error, prefix=prefix)]
    return []


def _problem(error: EngineError, *, prefix: str = "") -> Problem:
    return Problem(code=error.code, message=prefix + str(error), error=type(error))


__all__ = [
    "ALL_SCHEDULER_NAMES",
    "SCHEDULER_NAMES",
    "Problem",
    "annotator_problem",
    "check_lora_fits",
    "control_type_problem",
    "inpaint_problems",
    "ip_adapter_installed",
    "ip_adapter_problem",
    "method_problem",
    "model_traits_here",
    "lora_header_bytes",
    "model_source",
    "plan_check",
    "plan_problems",
]
