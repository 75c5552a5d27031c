"""Plain request and result types for the engine (no Django, DESIGN.md decision 2).

A request carries PIL images, numbers and model keys; never file paths that a
worker would have to open. A result carries the images, the control images that
were really used, a reproducibility snapshot (decision 8), the method chosen and
why, timings and whether the pipeline registry was hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .vocabulary import (
    DEFAULT_CONDITIONING_SCALE,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INPAINT_STRENGTH,
    DEFAULT_IP_ADAPTER_SCALE,
    DEFAULT_LORA_SCALE,
    DEFAULT_MASK_BLUR,
    DEFAULT_METHOD,
    DEFAULT_ONLY_MASKED_PADDING,
    DEFAULT_RESIZE_MODE,
    DEFAULT_SIZE,
    DEFAULT_STEPS,
    DEFAULT_STRENGTH,
    ControlType,
    Method,
    ReferenceRole,
    ResizeMode,
)

# The vocabulary's enums, importable from here as they always were.
__all__ = [
    "ControlImageOutput",
    "ControlType",
    "ControlUnitInput",
    "GenerationRequest",
    "GenerationResult",
    "IPAdapterInput",
    "InpaintRequest",
    "InpaintResult",
    "LoraInput",
    "Method",
    "ReferenceInput",
    "ReferenceRole",
    "ResizeMode",
    "Timings",
]


@dataclass
class ReferenceInput:
    """One reference image of the persona, already decoded to RGB."""

    image: Image.Image
    role: ReferenceRole = ReferenceRole.OTHER
    sha256: str = ""
    primary: bool = False


@dataclass
class ControlUnitInput:
    """One ControlNet unit; several units make a multi-ControlNet request.

    ``control_image`` is a ready-made control map (a pose map, say): when given,
    no preprocessor runs. Otherwise the reference at ``reference_index`` (default:
    the primary reference) is preprocessed with ``preprocessor_options``.
    """

    control_type: ControlType
    conditioning_scale: float = DEFAULT_CONDITIONING_SCALE
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    preprocessor_options: dict[str, Any] = field(default_factory=dict)
    control_image: Image.Image | None = None
    reference_index: int | None = None


@dataclass
class IPAdapterInput:
    """IP-Adapter for identity.

    ``face_crop`` selects the plus-face adapter and crops each reference to the
    detected face (the whole image when no face is found, noted in the snapshot).
    ``reference_indexes`` chooses the references; None means every face
    reference, or the primary one when there is none.
    """

    scale: float = DEFAULT_IP_ADAPTER_SCALE
    face_crop: bool = True
    reference_indexes: list[int] | None = None


@dataclass
class LoraInput:
    """Persona LoRA weights as the bytes of a ``.safetensors`` file."""

    weights: bytes
    scale: float = DEFAULT_LORA_SCALE
    name: str = "persona"
    sha256: str = ""


@dataclass
class GenerationRequest:
    model: str
    prompt: str
    method: Method = DEFAULT_METHOD
    negative_prompt: str = ""
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    num_images: int = 1
    strength: float = DEFAULT_STRENGTH
    resize_mode: ResizeMode = DEFAULT_RESIZE_MODE
    references: list[ReferenceInput] = field(default_factory=list)
    appearance_locked: bool = False
    control_units: list[ControlUnitInput] = field(default_factory=list)
    ip_adapter: IPAdapterInput | None = None
    lora: LoraInput | None = None
    scheduler: str | None = None
    true_cfg_scale: float | None = None
    """True classifier-free guidance of a transformer family (FLUX.1's
    ``true_cfg_scale``: above 1 the negative prompt is used, at twice the
    cost); None: the pipeline's default."""
    edit_reference_indexes: list[int] | None = None
    """The references a reference edit is given, in order (None: the primary,
    then the others by role; ``methods``)."""
    use_refiner: bool = True
    """Whether the model's refiner (``ModelSpec.refiner``, SDXL) finishes a
    text or img2img run; False runs the base alone for the whole schedule.
    Without a configured refiner it changes nothing."""


@dataclass
class Timings:
    """Seconds spent in each phase of one generation."""

    load: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    total: float = 0.0


@dataclass
class ControlImageOutput:
    control_type: ControlType
    image: Image.Image


@dataclass
class GenerationResult:
    images: list[Image.Image]
    control_images: list[ControlImageOutput]
    method: Method
    method_reason: str
    snapshot: dict[str, Any]
    timings: Timings
    registry_hit: bool
    notes: list[str] = field(default_factory=list)
    # Every image handed to the pipeline (fitted init image, control images,
    # IP-Adapter images) by pixel hash, as the snapshot's ``call`` names them.
    call_images: dict[str, Image.Image] = field(default_factory=dict)
    # Per image, whether the safety checker flagged it; None: not checked
    # (policy off, or no checker for this model). See ``safety.py``.
    flagged: list[bool] | None = None


@dataclass
class InpaintRequest:
    """Redraw the white part of ``mask`` (an image of ``image``'s size) of ``image``.

    ``mask_blur`` feathers the mask (a Gaussian radius in pixels); the output is
    the original wherever the feathered mask is black. With ``only_masked`` the
    mask's bounding box, plus ``only_masked_padding`` pixels of context, is
    inpainted at ``size`` (None: the model family's native size) and pasted back;
    otherwise the whole image is inpainted at its own size (sides in steps of 8).
    ``ip_adapter`` and ``lora`` apply for this call only, as in generation; the
    IP-Adapter sees ``references`` (by its rules: face references first).
    """

    model: str
    image: Image.Image
    mask: Image.Image
    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = DEFAULT_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    strength: float = DEFAULT_INPAINT_STRENGTH
    mask_blur: int = DEFAULT_MASK_BLUR
    only_masked: bool = True
    only_masked_padding: int = DEFAULT_ONLY_MASKED_PADDING
    size: int | None = None
    references: list[ReferenceInput] = field(default_factory=list)
    ip_adapter: IPAdapterInput | None = None
    lora: LoraInput | None = None
    scheduler: str | None = None


@dataclass
class InpaintResult:
    """The inpainted image, the image before, and where the pipeline worked.

    ``box`` is the region (left, top, right, bottom) that was inpainted and
    pasted back; ``feathered_mask`` is the mask the paste used (black: kept).
    """

    image: Image.Image
    before: Image.Image
    box: tuple[int, int, int, int]
    feathered_mask: Image.Image
    snapshot: dict[str, Any]
    timings: Timings
    registry_hit: bool
    notes: list[str] = field(default_factory=list)
    call_images: dict[str, Image.Image] = field(default_factory=dict)
