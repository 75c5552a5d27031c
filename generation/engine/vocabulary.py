"""The studio's vocabulary, defined once (DESIGN.md decision 9).

Methods, control types, resize modes, reference roles and seed policies with
their human labels; which methods need or take what; the limits of every number
a person can set; the footprint options; the tiny model's identity. Framework
free and import-free (no torch, no Django): the engine uses these directly, and
the Django side derives its ``TextChoices``, validators, forms and messages from
them (``personas.models``), so a value is changed here or nowhere.
``tests/engine/test_vocabulary.py`` fails when a choice, a limit or a documented
value drifts from this module.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields


class _Vocabulary(enum.StrEnum):
    """A string enum whose members carry a human label (``Method.TEXT.label``).

    Members compare and hash as their value, so ``"img2img" in {Method.IMG2IMG}``
    holds for a value read from the database.
    """

    label: str

    def __new__(cls, value: str, label: str) -> _Vocabulary:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member


class Method(_Vocabulary):
    AUTO = "auto", "Automatic"
    TEXT = "text", "Text only (no reference)"
    IMG2IMG = "img2img", "img2img from the reference"
    CONTROLNET = "controlnet", "ControlNet"
    HYBRID = "hybrid", "img2img + ControlNet"
    IP_ADAPTER = "ip_adapter", "IP-Adapter (identity)"


class ControlType(_Vocabulary):
    OPENPOSE = "openpose", "OpenPose"
    CANNY = "canny", "Canny edges"
    DEPTH = "depth", "Depth"
    SCRIBBLE = "scribble", "Scribble"
    SOFTEDGE = "softedge", "Soft edge"
    LINEART = "lineart", "Line art"
    SEG = "seg", "Segmentation"
    SHUFFLE = "shuffle", "Shuffle"


class ResizeMode(_Vocabulary):
    """How a reference is fitted to the target size (as AUTOMATIC1111 offers).

    just_resize: stretch to the target size, ignoring the aspect ratio.
    crop_and_resize: scale to cover the target, then centre-crop the overflow.
    resize_and_fill: scale to fit inside the target, then fill the borders by
    stretching the edge pixels.
    """

    JUST_RESIZE = "just_resize", "Just resize"
    CROP_AND_RESIZE = "crop_and_resize", "Crop and resize"
    RESIZE_AND_FILL = "resize_and_fill", "Resize and fill"


class ReferenceRole(_Vocabulary):
    FACE = "face", "Face"
    HALF_BODY = "half_body", "Half body"
    FULL_BODY = "full_body", "Full body"
    POSE = "pose", "Pose"
    STYLE = "style", "Style"
    OTHER = "other", "Other"


class SafetyPolicy(_Vocabulary):
    """What the engine does with an output the safety checker flags
    (``STUDIO_SAFETY_CHECKER``). A flagged output is never a silent black image:
    under ``flag`` and ``black`` the result and its snapshot say it was flagged.
    """

    OFF = "off", "Off: no safety checker runs"
    FLAG = "flag", "Flag: keep the image as generated and mark it flagged"
    BLACK = "black", "Black: replace a flagged image by black and mark it flagged"


class SeedPolicy(_Vocabulary):
    RANDOM = "random", "Random for every generation"
    FIXED = "fixed", "Fixed seed"


class ProgressPhase(_Vocabulary):
    """Where a generation is, as the worker publishes it (the cards say so)."""

    WAITING = "waiting", "Waiting in the queue"
    LOADING = "loading", "Loading the model"
    PREPARING = "preparing", "Preparing inputs"
    DENOISING = "denoising", "Generating"
    SAVING = "saving", "Saving"
    SCORING = "scoring", "Scoring"


class PreviewMethod(_Vocabulary):
    """How the worker turns a run's latents into its live preview
    (``STUDIO_PREVIEW_METHOD``)."""

    OFF = "off", "Off: no live preview"
    APPROX = "approx", "Approximate: a linear latent-to-RGB map (cheap)"
    TINY_AUTOENCODER = (
        "tiny_autoencoder",
        "Tiny autoencoder (AutoencoderTiny, TAESD): sharper, costs a little more",
    )


# --- What each method needs and takes --------------------------------------------

BASE_METHODS = frozenset(
    {Method.TEXT, Method.IMG2IMG, Method.CONTROLNET, Method.HYBRID}
)
"""Methods that name one pipeline; ``auto`` and ``ip_adapter`` resolve to one."""

METHODS_WITH_STRENGTH = frozenset({Method.IMG2IMG, Method.HYBRID})
"""Methods that start from the reference and take an img2img strength."""

METHODS_WITH_CONTROL = frozenset({Method.CONTROLNET, Method.HYBRID})
"""Methods that run a ControlNet: they need at least one control unit."""

METHODS_NEEDING_REFERENCE = METHODS_WITH_STRENGTH | {Method.IP_ADAPTER}
"""Explicit methods that cannot run without a reference image."""

METHODS_TAKING_REFERENCES = frozenset(Method) - {Method.TEXT}
"""Methods a persona's gallery is handed to (auto chooses what to use)."""

METHODS_TAKING_CONTROL_UNITS = METHODS_WITH_CONTROL | {Method.AUTO}
"""Methods a persona's enabled ControlNet units are handed to."""

METHODS_TAKING_IP_ADAPTER = frozenset({Method.AUTO, Method.IP_ADAPTER})
"""Methods a persona's IP-Adapter settings are handed to."""


# --- Limits and defaults ---------------------------------------------------------

MIN_SIZE = 64
MAX_SIZE = 2048
"""Output sides the engine accepts; the studio's ``STUDIO_MAX_WIDTH`` and
``STUDIO_MAX_HEIGHT`` default to ``MAX_SIZE`` and may only lower it."""
SIZE_MULTIPLE = 8
"""Stable Diffusion's latents are 1/8 of the image: sides come in steps of 8."""
MIN_STEPS, MAX_STEPS = 1, 150
MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE = 0.0, 30.0
MIN_FRACTION, MAX_FRACTION = 0.0, 1.0
"""img2img strength, and a ControlNet's guidance window (fractions of the steps)."""
MIN_WEIGHT, MAX_WEIGHT = 0.0, 2.0
"""ControlNet conditioning, IP-Adapter and LoRA scales."""
MIN_SEED, MAX_SEED = 0, 2**63 - 1
MAX_IMAGES = 8
"""Images one engine request may ask for."""
MAX_PROMPT_LENGTH = 4000
"""Characters of any text typed for the studio (prompts, appearance, notes)."""
MAX_BATCH_COUNT = 16
"""Generations one batch may queue."""
MAX_SWEEP_STRENGTHS = 12
"""Strengths one strength sweep may try."""

DEFAULT_METHOD = Method.AUTO
DEFAULT_STEPS = 30
DEFAULT_GUIDANCE_SCALE = 7.5
DEFAULT_SIZE = 512
DEFAULT_STRENGTH = 0.7
DEFAULT_RESIZE_MODE = ResizeMode.CROP_AND_RESIZE
DEFAULT_IP_ADAPTER_SCALE = 0.6
DEFAULT_LORA_SCALE = 0.8
DEFAULT_CONDITIONING_SCALE = 1.0
DEFAULT_SEED_POLICY = SeedPolicy.RANDOM
DEFAULT_SAFETY_POLICY = SafetyPolicy.FLAG
"""Check every output where a safety checker is available, keep it, say so."""

# Inpainting and the face detailer (AUTOMATIC1111's and ADetailer's defaults).
DEFAULT_INPAINT_STRENGTH = 0.75
"""Denoising strength of a manual inpaint: how far the masked region may move."""
MAX_MASK_BLUR = 64
DEFAULT_MASK_BLUR = 4
"""Gaussian blur radius (pixels) of the mask: the feathered edge of the paste."""
MAX_ONLY_MASKED_PADDING = 512
DEFAULT_ONLY_MASKED_PADDING = 32
""""Only masked": the pixels of context kept around the mask's bounding box; the
region is inpainted at the model's native size and pasted back."""
DEFAULT_DETAILER_STRENGTH = 0.4
"""Denoising strength of the face detailer: redraws the face, keeps its layout."""
DEFAULT_DETAILER_PADDING = 32
DEFAULT_DETAILER_PROMPT = "detailed face, sharp focus"


# --- Footprint options -----------------------------------------------------------


def _switch(setting: str, meaning: str) -> bool:
    return field(default=False, metadata={"setting": setting, "meaning": meaning})


@dataclass(kw_only=True)
class Footprint:
    """Memory and speed switches applied to every base pipeline when it loads.

    Each field names its ``STUDIO_*`` setting (``footprint_settings``); the
    engine configuration carries them (``EngineConfig`` is a ``Footprint``).
    """

    cpu_offload: bool = _switch(
        "STUDIO_CPU_OFFLOAD",
        "keep model parts in CPU memory and move each to the GPU only while it "
        "runs (small GPUs; slower)",
    )
    attention_slicing: bool = _switch(
        "STUDIO_ATTENTION_SLICING",
        "compute attention in slices: less GPU memory, a little slower",
    )
    vae_tiling: bool = _switch(
        "STUDIO_VAE_TILING",
        "decode large images tile by tile: less GPU memory for big sizes",
    )
    channels_last: bool = _switch(
        "STUDIO_CHANNELS_LAST",
        "channels-last memory format for the UNet: faster on some GPUs",
    )
    compile: bool = _switch(
        "STUDIO_TORCH_COMPILE",
        "`torch.compile` the UNet: slow first job, faster later ones",
    )


def footprint_settings() -> dict[str, str]:
    """Footprint option name -> the ``STUDIO_*`` setting that switches it."""
    return {option.name: option.metadata["setting"] for option in fields(Footprint)}


def footprint_of(config: Footprint) -> Footprint:
    """A copy of the footprint options of ``config`` (an ``EngineConfig``, say)."""
    return Footprint(
        **{option.name: getattr(config, option.name) for option in fields(Footprint)}
    )


# --- The tiny model --------------------------------------------------------------

TINY_MODEL_KEY = "tiny-sd15"
"""The model key of the built-in tiny model."""
TINY_MODEL_LABEL = "Built-in tiny model (random weights: images are noise)"
TINY_SDXL_MODEL_KEY = "tiny-sdxl"
"""The model key of the built-in tiny SDXL-architecture model."""
TINY_SDXL_MODEL_LABEL = "Built-in tiny SDXL model (random weights: images are noise)"
TINY_MODEL_NOTICE = (
    "Built-in tiny model (random weights: images are noise). Configure "
    "STUDIO_MODELS for real images."
)
"""The one notice wherever the tiny model's images appear (admin, gallery,
content notes, the engine's command line)."""
