"""Reproducibility snapshots (DESIGN.md decision 8) and the JSON form of requests.

A request's JSON form (``request_to_dict`` / ``request_from_dict``) names every
image and the LoRA by a string: a file path in a request file for the command
line, a content key in a snapshot. A content key is the caller's ``sha256`` when
it gave one (the Django side passes the stored file's hash), otherwise
``image_sha256`` of the pixels (``bytes_sha256`` of the weights for a LoRA).

A snapshot holds everything that produced an output: the resolved request (so
that running it again takes the same path, whatever ``auto`` would choose today),
the model's source and revision or weights hash, the pipeline class, the
scheduler class and config, the seed and the generator's device, the exact
keyword arguments given to the diffusers pipeline (images as pixel hashes), the
ControlNets, IP-Adapter and LoRA with their scales, the pixel hashes of every
input, control image and output, prompt chunking, device, dtype and library
versions. The initial noise comes from a CPU ``torch.Generator`` seeded with the
request's seed, so it is the same on every device; the denoising itself gives the
same pixels only on the same hardware and library versions.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import platform
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, replace
from importlib import metadata
from typing import Any

import torch
from PIL import Image

from .errors import InvalidRequest
from .methods import MethodPlan
from .requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    InpaintRequest,
    IPAdapterInput,
    LoraInput,
    Method,
    ReferenceInput,
    ReferenceRole,
    ResizeMode,
)

SNAPSHOT_FORMAT = "persona-studio-snapshot/1"
GENERATOR_DEVICE = "cpu"
"""The initial noise is drawn on the CPU: the same seed gives the same noise on
every device."""

_LIBRARIES = (
    "torch",
    "diffusers",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "numpy",
    "pillow",
    "controlnet-aux",
    "scikit-image",
)


def image_sha256(image: Image.Image) -> str:
    """Hash of an image's pixels, mode and size (not of any file encoding)."""
    digest = hashlib.sha256(f"{image.mode} {image.width}x{image.height}\n".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def images_by_hash(value: Any) -> dict[str, Image.Image]:
    """Every PIL image inside ``value`` (nested lists and dicts), by pixel hash."""
    if isinstance(value, Image.Image):
        return {image_sha256(value): value}
    if isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        return {}
    found: dict[str, Image.Image] = {}
    for item in items:
        found.update(images_by_hash(item))
    return found


def reference_key(reference: ReferenceInput) -> str:
    """Content key of a reference: the caller's hash, else the pixel hash."""
    return reference.sha256 or image_sha256(reference.image)


def lora_key(lora: LoraInput) -> str:
    return lora.sha256 or bytes_sha256(lora.weights)


def request_to_dict(request: GenerationRequest) -> dict[str, Any]:
    """The JSON form of ``request``, images and weights named by content key."""
    data = _plain(request, skip=("references", "control_units", "ip_adapter", "lora"))
    data["references"] = [
        {**_plain(reference, skip=("image",)), "image": reference_key(reference)}
        for reference in request.references
    ]
    data["control_units"] = [
        {
            **_plain(unit, skip=("control_image",)),
            "control_image": None
            if unit.control_image is None
            else image_sha256(unit.control_image),
        }
        for unit in request.control_units
    ]
    data["ip_adapter"] = (
        None if request.ip_adapter is None else _plain(request.ip_adapter)
    )
    data["lora"] = (
        None
        if request.lora is None
        else {
            **_plain(request.lora, skip=("weights",)),
            "weights": lora_key(request.lora),
        }
    )
    return data


def request_from_dict(
    data: Mapping[str, Any],
    *,
    open_image: Callable[[str], Image.Image],
    read_bytes: Callable[[str], bytes],
) -> GenerationRequest:
    """Build a request from its JSON form; unknown or missing keys are refused.

    ``open_image`` and ``read_bytes`` turn the strings that name images and the
    LoRA into an RGB image and bytes (a path for the command line, a content key
    for a snapshot). Values are checked later by ``Engine.validate``.
    """
    return build_dataclass(
        GenerationRequest,
        data,
        "request",
        method=lambda value: _enum(Method, value, "method"),
        resize_mode=lambda value: _enum(ResizeMode, value, "resize_mode"),
        references=lambda items: [
            build_dataclass(
                ReferenceInput,
                item,
                f"references[{index}]",
                image=open_image,
                role=lambda value: _enum(ReferenceRole, value, "role"),
            )
            for index, item in enumerate(_list(items, "references"))
        ],
        control_units=lambda items: [
            build_dataclass(
                ControlUnitInput,
                item,
                f"control_units[{index}]",
                control_type=lambda value: _enum(ControlType, value, "control_type"),
                control_image=lambda name: None if name is None else open_image(name),
            )
            for index, item in enumerate(_list(items, "control_units"))
        ],
        ip_adapter=lambda value: (
            None
            if value is None
            else build_dataclass(IPAdapterInput, value, "ip_adapter")
        ),
        lora=lambda value: (
            None
            if value is None
            else build_dataclass(LoraInput, value, "lora", weights=read_bytes)
        ),
    )


def build_snapshot(
    request: GenerationRequest,
    plan: MethodPlan,
    *,
    pipe: Any,
    call_kwargs: Mapping[str, Any],
    model_fingerprint: Mapping[str, Any],
    controlnet_fingerprints: list[dict[str, Any]],
    ip_adapter_weights: Mapping[str, Any] | None,
    face_crops: list[dict[str, Any]],
    prompt_encoding: Mapping[str, Any],
    outputs: list[Image.Image],
    device: str,
    dtype: str,
    safety: Mapping[str, Any] | None = None,
    refiner: Mapping[str, Any] | None = None,
    reference_edit: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything that produced ``outputs``, JSON-serialisable.

    ``call_kwargs`` are the keyword arguments the pipeline was called with;
    ``ip_adapter_weights`` says which adapter files were loaded; ``refiner``
    (``pipe`` and ``call_kwargs``) the second expert that finished the base's
    latents (its weights' fingerprint is the model's ``refiner``);
    ``reference_edit`` how a reference edit's references were handed over
    (``editing``: the references, the multi-reference mode, the canvas).
    """
    resolved = _resolved_request(request, plan)
    return {
        "format": SNAPSHOT_FORMAT,
        "request": request_to_dict(resolved),
        "requested_method": Method(request.method).value,
        "method": plan.method.value,
        "base_method": plan.base.value,
        "method_reason": plan.reason,
        "pipeline_class": type(pipe).__name__,
        "family": plan.family,
        "model": {"key": request.model, **model_fingerprint},
        "scheduler": {
            "class": type(pipe.scheduler).__name__,
            "config": _json_value(dict(pipe.scheduler.config)),
        },
        "generator": {"device": GENERATOR_DEVICE, "seed": request.seed},
        "call": _json_value(
            {
                name: value
                for name, value in call_kwargs.items()
                if name != "callback_on_step_end"
            }
        ),
        "prompt_encoding": _json_value(dict(prompt_encoding)),
        "references": [
            {
                "key": reference_key(reference),
                "pixel_sha256": image_sha256(reference.image),
                "role": ReferenceRole(reference.role).value,
                "size": list(reference.image.size),
            }
            for reference in request.references
        ],
        "init_reference": plan.init_reference,
        "reference_edit": None
        if reference_edit is None
        else _json_value(dict(reference_edit)),
        "control_units": [
            {
                "control_type": control_type.value,
                "controlnet": controlnet,
                "reference": reference,
                "input_pixel_sha256": None
                if unit.control_image is None
                else image_sha256(unit.control_image),
            }
            for unit, control_type, controlnet, reference in zip(
                request.control_units,
                plan.control_types,
                controlnet_fingerprints,
                plan.unit_references,
                strict=True,
            )
        ],
        "ip_adapter": None
        if plan.ip_adapter is None
        else {
            **ip_adapter_weights,
            "scale": plan.ip_adapter.scale,
            "face_crop": plan.ip_adapter.face_crop,
            "references": list(plan.ip_adapter_references),
            "face_crops": _json_value(face_crops),
        },
        "lora": None
        if request.lora is None
        else {
            "name": request.lora.name,
            "sha256": bytes_sha256(request.lora.weights),
            "scale": request.lora.scale,
        },
        "refiner": None if refiner is None else _refiner_record(refiner),
        "outputs": [image_sha256(image) for image in outputs],
        "safety": None if safety is None else _json_value(dict(safety)),
        "device": device,
        "dtype": dtype,
        "hardware": _hardware(device),
        "versions": library_versions(),
    }


def _refiner_record(refiner: Mapping[str, Any]) -> dict[str, Any]:
    pipe = refiner["pipe"]
    return {
        "pipeline_class": type(pipe).__name__,
        "scheduler": {
            "class": type(pipe.scheduler).__name__,
            "config": _json_value(dict(pipe.scheduler.config)),
        },
        # Its ``image`` is the base's latents, not an input.
        "call": _json_value(
            {k: v for k, v in refiner["call_kwargs"].items() if k != "image"}
        ),
        "prompt_encoding": _json_value(dict(refiner.get("prompt_encoding") or {})),
        # The job's adapters it ran without (runner.REFINER_SKIPS), and why.
        "without": list(refiner.get("without") or []),
        "without_reason": refiner.get("without_reason"),
    }


def build_inpaint_snapshot(
    request: InpaintRequest,
    *,
    pipe: Any,
    family_key: str,
    call_kwargs: Mapping[str, Any],
    box: tuple[int, int, int, int],
    feathered: Image.Image,
    model_fingerprint: Mapping[str, Any],
    ip_adapter_weights: Mapping[str, Any] | None,
    ip_adapter_references: tuple[int, ...],
    face_crops: list[dict[str, Any]],
    output: Image.Image,
    device: str,
    dtype: str,
) -> dict[str, Any]:
    """Everything that produced an inpaint's ``output``, JSON-serialisable.

    The ``call`` names the region and mask the pipeline saw by pixel hash;
    ``paste`` says where its output went back and through which feathered mask
    (by hash), so the pipeline call and the paste replay exactly.
    """
    return {
        "format": SNAPSHOT_FORMAT,
        "kind": "inpaint",
        "pipeline_class": type(pipe).__name__,
        "family": family_key,
        "model": {"key": request.model, **model_fingerprint},
        "scheduler": {
            "class": type(pipe.scheduler).__name__,
            "config": _json_value(dict(pipe.scheduler.config)),
        },
        "generator": {"device": GENERATOR_DEVICE, "seed": request.seed},
        "call": _json_value(
            {
                name: value
                for name, value in call_kwargs.items()
                if name != "callback_on_step_end"
            }
        ),
        "inpaint": {
            "image_pixel_sha256": image_sha256(request.image.convert("RGB")),
            "mask_pixel_sha256": image_sha256(request.mask.convert("L")),
            "strength": request.strength,
            "mask_blur": request.mask_blur,
            "only_masked": request.only_masked,
            "only_masked_padding": request.only_masked_padding,
            "size": request.size,
        },
        "paste": {
            "box": list(box),
            "feathered_mask": _json_value(feathered),
        },
        "ip_adapter": None
        if request.ip_adapter is None
        else {
            **(ip_adapter_weights or {}),
            "scale": request.ip_adapter.scale,
            "face_crop": request.ip_adapter.face_crop,
            "references": list(ip_adapter_references),
            "face_crops": _json_value(face_crops),
        },
        "references": [
            {
                "key": reference_key(reference),
                "pixel_sha256": image_sha256(reference.image),
                "role": ReferenceRole(reference.role).value,
            }
            for reference in request.references
        ],
        "lora": None
        if request.lora is None
        else {
            "name": request.lora.name,
            "sha256": bytes_sha256(request.lora.weights),
            "scale": request.lora.scale,
        },
        "outputs": [image_sha256(output)],
        "device": device,
        "dtype": dtype,
        "hardware": _hardware(device),
        "versions": library_versions(),
    }


def request_from_snapshot(
    snapshot: Mapping[str, Any],
    *,
    open_image: Callable[[str], Image.Image],
    read_bytes: Callable[[str], bytes],
) -> GenerationRequest:
    """The request that regenerates a snapshot's outputs exactly.

    ``open_image`` and ``read_bytes`` receive content keys; every image and the
    LoRA are checked against the snapshot's hashes, so a changed input is refused
    rather than silently giving other pixels.
    """
    if snapshot.get("format") != SNAPSHOT_FORMAT:
        raise InvalidRequest(
            f"Not a snapshot this engine can replay (format {snapshot.get('format')!r}"
            f", expected {SNAPSHOT_FORMAT!r})."
        )
    request = request_from_dict(
        snapshot["request"], open_image=open_image, read_bytes=read_bytes
    )
    for index, (reference, recorded) in enumerate(
        zip(request.references, snapshot["references"], strict=True)
    ):
        _check_hash(
            f"reference {index}",
            image_sha256(reference.image),
            recorded["pixel_sha256"],
        )
    for index, (unit, recorded) in enumerate(
        zip(request.control_units, snapshot["control_units"], strict=True)
    ):
        if unit.control_image is not None:
            _check_hash(
                f"control image {index}",
                image_sha256(unit.control_image),
                recorded["input_pixel_sha256"],
            )
    if request.lora is not None:
        _check_hash(
            "LoRA",
            bytes_sha256(request.lora.weights),
            snapshot["lora"]["sha256"],
        )
    return request


def library_versions() -> dict[str, str | None]:
    """Versions of Python and of the libraries that shape the pixels."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> dict[str, str | None]:
    # Read once per process: package metadata costs milliseconds on every job.
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["cuda"] = torch.version.cuda
    return versions


def _hardware(device: str) -> dict[str, str]:
    hardware = {"machine": platform.machine(), "processor": platform.processor()}
    if device.startswith("cuda") and torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return hardware


def _resolved_request(
    request: GenerationRequest, plan: MethodPlan
) -> GenerationRequest:
    """``request`` with the method and IP-Adapter references it resolved to."""
    ip_adapter = None
    if plan.ip_adapter is not None:
        ip_adapter = replace(
            plan.ip_adapter, reference_indexes=list(plan.ip_adapter_references)
        )
    edit_references = (
        list(plan.edit_references) if plan.edit_references else None
    )
    return replace(
        request,
        method=plan.method,
        ip_adapter=ip_adapter,
        edit_reference_indexes=edit_references,
    )


def _check_hash(what: str, actual: str, recorded: str) -> None:
    if actual != recorded:
        raise InvalidRequest(
            f"The {what} differs from the one that produced this output; it cannot "
            "be regenerated exactly."
        )


def _plain(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        field.name: _json_value(getattr(obj, field.name))
        for field in fields(obj)
        if field.name not in skip
    }


def _json_value(value: Any) -> Any:
    """A JSON-safe description: enums by value, images and tensors by summary."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Image.Image):
        return {"pixel_sha256": image_sha256(value), "size": list(value.size)}
    if isinstance(value, torch.Generator):
        return {"device": str(value.device), "seed": value.initial_seed()}
    if isinstance(value, torch.Tensor):
        return {"tensor_shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, Mapping):
        return {str(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def build_dataclass(
    cls: type, data: Any, where: str, **convert: Callable[[Any], Any]
) -> Any:
    """Instantiate dataclass ``cls`` from a JSON object, converting named fields.

    Unknown and missing fields are refused with a message naming ``where``.
    """
    if not isinstance(data, Mapping):
        raise InvalidRequest(f"{where} must be a JSON object.")
    known = {field.name: field for field in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InvalidRequest(
            f"{where}: unknown field(s) {', '.join(unknown)}; known fields: "
            f"{', '.join(known)}."
        )
    missing = [
        name
        for name, field in known.items()
        if name not in data
        and field.default is MISSING
        and field.default_factory is MISSING
    ]
    if missing:
        raise InvalidRequest(f"{where}: missing field(s) {', '.join(missing)}.")
    return cls(
        **{
            name: convert[name](value) if name in convert else value
            for name, value in data.items()
        }
    )


def _enum(cls: type[enum.Enum], value: Any, name: str) -> Any:
    try:
        return cls(value)
    except ValueError:
        choices = ", ".join(member.value for member in cls)
        raise InvalidRequest(
            f"Unknown {name} {value!r}; choose one of: {choices}."
        ) from None


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"{name} must be a list.")
    return value
