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
  (its source resolves and its files are there), each unit's ControlNet
  resolves, the annotator weights of each unit's preprocessor are present (a
  ready-made control image needs none), and the LoRA fits the model (its
  cross-attention width is the model's; a transformer LoRA is not put on a
  UNet model).

The images of the request are never looked at, only whether they exist; the
LoRA's ``weights`` may be only the file's header (the web process reads no more,
``lora_header_bytes``).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .config import EngineConfig, ModelSpec
from .errors import EngineError, InvalidRequest, MissingWeights
from .families import FAMILIES, Family
from .inpaint import check_inpaint_request
from .methods import plan_method
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
    MODEL_CONFIG_FILE,
    ResolvedSource,
    SourceKind,
    _cached_file,
    is_offline,
    resolve_source,
)
from .vocabulary import METHODS_WITH_CONTROL, ControlType

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

LORA_HEADER_LENGTH_BYTES = 8
_TRANSFORMER_KEY = re.compile(
    r"(?:base_model\.model\.)?(?:transformer\.|lora_transformer_|diffusion_model\."
    r"(?:transformer_blocks|single_transformer_blocks|double_blocks|single_blocks))"
)
"""A LoRA key of a transformer (Flux, Qwen-Image) model, in either naming."""
_CROSS_ATTENTION_KEY = re.compile(
    r"attn2[._]to_[kv][._](?:lora_down|lora_A|lora\.down)\.weight$"
)


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
    if request.scheduler is not None and request.scheduler not in SCHEDULER_NAMES:
        problems.append(
            _problem(
                InvalidRequest(
                    f"Unknown scheduler {request.scheduler!r}; choose one of: "
                    f"{', '.join(SCHEDULER_NAMES)}."
                )
            )
        )
    spec = config.models.get(request.model)
    model_problems = (
        [] if spec is None else _guarded(lambda: model_source(spec, config))
    )
    if weights_here is None:
        weights_here = not model_problems
    try:
        # The scheduler is checked above: plan_method's own check imports
        # diffusers, which the web process does not need.
        plan = plan_method(
            replace(request, scheduler=None),
            models=config.models,
            controlnets=config.controlnets,
            ip_adapter_installed=ip_adapter_installed(config)
            if weights_here
            else config.ip_adapter is not None,
        )
    except EngineError as error:
        return [*problems, _problem(error)]
    units = request.control_units if plan.base in METHODS_WITH_CONTROL else []
    for unit in units:
        problems += _guarded(lambda unit=unit: validate_control_unit(unit))
    if not weights_here:
        return problems
    problems += model_problems
    problems += _unit_weight_problems(units, config)
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


def ip_adapter_installed(config: EngineConfig) -> bool:
    """Whether the configured IP-Adapter weights can be found (as the registry
    decides, without building one)."""
    spec = config.ip_adapter
    if spec is None:
        return False
    try:
        resolve_source(
            spec.source, config, required_file=f"{spec.subfolder}/{spec.weight_name}"
        )
    except EngineError:
        return False
    return True


def model_source(spec: ModelSpec, config: EngineConfig) -> ResolvedSource:
    """The checked source of a model, as the registry resolves it."""
    return resolve_source(
        spec.source,
        config,
        revision=spec.revision,
        single_file=True,
        single_file_config=spec.config,
    )


def lora_header_bytes(head: bytes) -> int:
    """How many bytes of a ``.safetensors`` file hold its header, from its first
    8 (the header's length, little-endian)."""
    if len(head) < LORA_HEADER_LENGTH_BYTES:
        raise InvalidRequest("The LoRA file is too short to be a .safetensors file.")
    (length,) = struct.unpack("<Q", head[:LORA_HEADER_LENGTH_BYTES])
    return LORA_HEADER_LENGTH_BYTES + length


def check_lora_fits(lora: LoraInput, spec: ModelSpec, config: EngineConfig) -> None:
    """Refuse a LoRA made for another architecture than the model's UNet.

    Reads the LoRA's header only and the model's ``unet/config.json``; says
    nothing when that config cannot be found (a Hub model not cached yet).
    """
    tensors = _lora_tensors(lora)
    unet = _unet_config(model_source(spec, config))
    if unet is None:
        return
    if tensors and all(_is_transformer_key(key) for key in tensors):
        raise InvalidRequest(
            f"The LoRA {lora.name!r} does not fit this model: it is made for a "
            f"transformer model (Flux, Qwen-Image), and {spec.key} has a UNet. "
            "Upload a LoRA trained for this model's family."
        )
    expected = unet.get("cross_attention_dim")
    widths = {
        shape[1]
        for key, shape in tensors.items()
        if _CROSS_ATTENTION_KEY.search(key) and len(shape) == 2
    }
    if isinstance(expected, int) and widths and widths != {expected}:
        found = ", ".join(str(width) for width in sorted(widths))
        raise InvalidRequest(
            f"The LoRA {lora.name!r} does not fit this model: its cross-attention "
            f"layers take {found} features and {spec.key}'s take {expected} (a "
            "LoRA for another model family). Upload a LoRA trained for this "
            "model's family."
        )


def _unit_weight_problems(
    units: list[ControlUnitInput], config: EngineConfig
) -> list[Problem]:
    problems: list[Problem] = []
    for number, unit in enumerate(units, start=1):
        control_type = ControlType(unit.control_type)
        problems += _guarded(
            lambda control_type=control_type: resolve_source(
                config.controlnets[control_type.value],
                config,
                required_file=MODEL_CONFIG_FILE,
            ),
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


def _lora_tensors(lora: LoraInput) -> dict[str, list[int]]:
    """Tensor name -> shape, from the header at the start of ``lora.weights``."""
    end = lora_header_bytes(lora.weights)
    try:
        header = json.loads(lora.weights[LORA_HEADER_LENGTH_BYTES:end])
    except ValueError as error:
        raise InvalidRequest(
            f"The LoRA {lora.name!r} is not a readable .safetensors file: {error}"
        ) from None
    return {
        key: list(value.get("shape", []))
        for key, value in header.items()
        if key != "__metadata__" and isinstance(value, dict)
    }


def _is_transformer_key(key: str) -> bool:
    return bool(_TRANSFORMER_KEY.match(key))


def _unet_config(source: ResolvedSource) -> dict[str, Any] | None:
    if source.kind is SourceKind.SINGLE_FILE:
        return None if source.config is None else _unet_config(source.config)
    if source.kind is SourceKind.FOLDER:
        path: str | None = str(Path(source.location) / "unet" / MODEL_CONFIG_FILE)
    else:
        path = _cached_file(source, f"unet/{MODEL_CONFIG_FILE}")
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _guarded(check: Any, *, prefix: str = "") -> list[Problem]:
    try:
        check()
    except EngineError as error:
        return [_problem(error, prefix=prefix)]
    return []


def _problem(error: EngineError, *, prefix: str = "") -> Problem:
    return Problem(code=error.code, message=prefix + str(error), error=type(error))


__all__ = [
    "SCHEDULER_NAMES",
    "Problem",
    "check_lora_fits",
    "inpaint_problems",
    "ip_adapter_installed",
    "lora_header_bytes",
    "model_source",
    "plan_check",
    "plan_problems",
]
