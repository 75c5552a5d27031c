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
    REFERENCE_EDIT = "reference_edit", "Reference editing (instruction + references)"


class GridParameter(_Vocabulary):
    """What one axis of a grid varies (AUTOMATIC1111's X/Y/Z plot); the unit
    parameters are of one ControlNet unit of the persona, named by position."""

    SEED = "seed", "seed"
    STRENGTH = "strength", "img2img strength"
    GUIDANCE_SCALE = "guidance_scale", "guidance scale"
    STEPS = "steps", "steps"
    SCHEDULER = "scheduler", "scheduler"
    METHOD = "method", "method"
    UNIT_SCALE = "unit_scale", "ControlNet scale"
    UNIT_WINDOW = "unit_window", "ControlNet window"
    IP_ADAPTER_SCALE = "ip_adapter_scale", "IP-Adapter scale"
    LORA_SCALE = "lora_scale", "LoRA scale"


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


class ModelFamily(_Vocabulary):
    """The model architectures the studio serves (one row each in ``families``)."""

    SD15 = "sd15", "Stable Diffusion 1.5"
    SDXL = "sdxl", "Stable Diffusion XL"
    FLUX = "flux", "FLUX.1"
    QWEN_IMAGE = "qwen-image", "Qwen-Image"


class Denoiser(_Vocabulary):
    """The denoising network of a family, and the pipeline attribute holding it."""

    UNET = "unet", "UNet"
    TRANSFORMER = "transformer", "Diffusion transformer"


class Guidance(_Vocabulary):
    """What a family's ``guidance_scale`` means.

    cfg: classifier-free guidance against the negative prompt (Stable Diffusion).
    distilled: guidance embedded in a guidance-distilled model (FLUX.1 [dev],
    Kontext): one pass per step, no negative prompt unless ``true_cfg_scale`` > 1.
    true_cfg: true classifier-free guidance with ``true_cfg_scale`` and a negative
    prompt (Qwen-Image); ``guidance_scale`` is not used by the released models.
    """

    CFG = "cfg", "Classifier-free guidance (negative prompt)"
    DISTILLED = "distilled", "Distilled guidance embedded in the model"
    TRUE_CFG = "true_cfg", "True classifier-free guidance (true_cfg_scale)"


class MultiReference(_Vocabulary):
    """How a reference-editing pipeline is given several references.

    native: the pipeline takes a list of images (QwenImageEditPlusPipeline).
    stitch: the references are fitted to one height and pasted side by side on
    one canvas, handed over as a single image (FLUX.1 Kontext takes one image;
    the stitched canvas is what ComfyUI's "Image Stitch" workflows do).
    """

    NATIVE = "native", "Several images, natively"
    STITCH = "stitch", "Stitched side by side on one canvas"


class Quantization(_Vocabulary):
    """Weight quantization of a transformer family's big modules (the transformer
    and the T5 / Qwen2.5-VL text encoder) when they load, where the user has
    installed its library (``STUDIO_QUANTIZATION``; docs/models.md gives the GPU
    memory each needs). Stable Diffusion models are loaded as they are."""

    NONE = "none", "None: the weights in the registry's dtype (bf16 on a GPU)"
    BNB_8BIT = "bnb_8bit", "bitsandbytes 8-bit (LLM.int8)"
    BNB_4BIT = "bnb_4bit", "bitsandbytes 4-bit NF4"
    TORCHAO_INT8 = "torchao_int8", "torchao int8 weight-only"


QUANTIZATION_LIBRARIES = {
    Quantization.BNB_8BIT: "bitsandbytes",
    Quantization.BNB_4BIT: "bitsandbytes",
    Quantization.TORCHAO_INT8: "torchao",
}
"""The library each quantization needs (an optional install, never a
dependency of the studio)."""
DEFAULT_QUANTIZATION = Quantization.NONE


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
    {
        Method.TEXT,
        Method.IMG2IMG,
        Method.CONTROLNET,
        Method.HYBRID,
        Method.REFERENCE_EDIT,
    }
)
"""Methods that name one pipeline; ``auto`` and ``ip_adapter`` resolve to one."""

METHODS_WITH_STRENGTH = frozenset({Method.IMG2IMG, Method.HYBRID})
"""Methods that start from the reference and take an img2img strength."""
LAYERED_METHODS = (Method.AUTO, Method.IP_ADAPTER)
"""Methods with no pipeline of their own: they resolve to a base method."""
REFINED_METHODS = frozenset({Method.TEXT, Method.IMG2IMG})
"""Base methods that a model's refiner (``ModelSpec.refiner``) finishes."""

METHODS_WITH_CONTROL = frozenset({Method.CONTROLNET, Method.HYBRID})
"""Methods that run a ControlNet: they need at least one control unit."""

METHODS_NEEDING_REFERENCE = METHODS_WITH_STRENGTH | {
    Method.IP_ADAPTER,
    Method.REFERENCE_EDIT,
}
"""Explicit methods that cannot run without a reference image."""

METHODS_WITH_SEVERAL_REFERENCES = frozenset({Method.REFERENCE_EDIT})
"""Methods whose pipeline itself takes several references (up to
``MAX_EDIT_REFERENCES``): the primary first, then the others."""

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
MAX_EDIT_REFERENCES = 3
"""References one reference edit takes: the primary and up to two more
(Qwen-Image-Edit-2509 was trained with one to three)."""

REFERENCE_EDIT_PROMPT = "{instruction}. Keep the same person: {appearance}."
"""How a reference edit's prompt joins the instruction typed for the run and
the persona's base appearance description: the instruction first (what to
change), then the appearance (what to keep), as FLUX.1 Kontext's and
Qwen-Image-Edit's prompting guides advise."""
MAX_GRID_AXES = 3
"""Axes one grid may have: X, Y and Z (its tiles are capped by the studio's
``STUDIO_GRID_MAX_TILES``)."""

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
MIN_INPAINT_STRENGTH = 0.01
"""The least strength of an inpaint, manual or the detailer's."""
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
        "runs (small GPUs; slower; CUDA only)",
    )
    sequential_cpu_offload: bool = _switch(
        "STUDIO_SEQUENTIAL_CPU_OFFLOAD",
        "move each layer to the GPU only while it runs (the least GPU memory, "
        "much slower; for a big model on a small GPU; CUDA only)",
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
TINY_FLUX_MODEL_KEY = "tiny-flux"
"""The model key of the built-in tiny FLUX.1-architecture (Kontext) model."""
TINY_FLUX_MODEL_LABEL = (
    "Built-in tiny FLUX.1 Kontext model (random weights: images are noise)"
)
TINY_QWEN_IMAGE_MODEL_KEY = "tiny-qwen-image"
"""The model key of the built-in tiny Qwen-Image-Edit-Plus-architecture model."""
TINY_QWEN_IMAGE_MODEL_LABEL = (
    "Built-in tiny Qwen-Image-Edit model (random weights: images are noise)"
)
TINY_MODEL_NOTICE = (
    "Built-in tiny model (random weights: images are noise). Configure "
    "STUDIO_MODELS for real images."
)
"""The one notice wherever the tiny model's images appear (admin, gallery,
content notes, the engine's command line)."""
