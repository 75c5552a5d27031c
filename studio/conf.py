"""The studio's own settings: every ``STUDIO_*`` default, in one place.

``studio.settings.base`` reads each one from the environment with one explicit,
typed line (``STUDIO_X = env.int("STUDIO_X", default=conf.X)``); code reads it
back lazily as ``settings.STUDIO_X`` (inside functions), so tests can override it
with ``settings``. Defaults that follow another setting are functions of it.
docs/settings.md lists every one; a test keeps the page, this module and the
settings module in agreement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

# Where the studio keeps its runtime files (database, media, Redis, models).
VAR_DIR: str = str(BASE_DIR / "var")


def MODEL_ROOTS(var_dir: Path) -> list[str]:  # noqa: N802 - named like its setting
    """Local model paths must lie under one of these folders (follows VAR_DIR)."""
    return [str(Path(var_dir) / "models")]


def TINY_MODEL_DIR(var_dir: Path) -> str:  # noqa: N802 - named like its setting
    """Where `studio_tiny_model` writes the built-in tiny model (follows VAR_DIR)."""
    return str(Path(var_dir) / "models" / "tiny")


# Base models staff can choose for a persona: key -> {"source", "revision",
# "label"}. A source is a Hub id, a local diffusers folder or a single
# .safetensors file. Empty means the built-in tiny model (its images are noise).
MODELS: dict[str, dict[str, str]] = {}
# ControlNet per control type: {"canny": "lllyasviel/sd-controlnet-canny", ...};
# an entry may be {"source", "revision", "variant", "config"} (docs/models.md).
# Empty means the tiny model's ControlNets when the tiny model is in use.
CONTROLNETS: dict[str, Any] = {}
# IP-Adapter: {"source": "h94/IP-Adapter", "subfolder": "models", ...} or {}.
IP_ADAPTER: dict[str, Any] = {}
# Folder with annotator weights in the lllyasviel/Annotators layout.
ANNOTATORS_DIR: str = ""
# A transformers semantic-segmentation model for the seg control type.
SEG_MODEL: str = ""
# Inference device and dtype; empty chooses (CUDA fp16, MPS, CPU fp32).
DEVICE: str = ""
DTYPE: str = ""
# Quantization of a transformer family's big modules (needs bitsandbytes or
# torchao installed): "none", "bnb_8bit", "bnb_4bit", "torchao_int8".
QUANTIZATION: str = "none"
# What happens to an output the safety checker flags: "off" (no check), "flag"
# (keep it, mark it flagged) or "black" (replace it by black, mark it flagged).
SAFETY_CHECKER: str = "flag"
# Where the safety checker lives (diffusers pipeline layout, e.g.
# stable-diffusion-v1-5/stable-diffusion-v1-5); empty: the model's own, if any.
SAFETY_CHECKER_MODEL: str = ""
# Base models kept loaded until this many MiB of weights; 0 means no limit.
MEMORY_BUDGET_MB: int = 0
# Footprint options for small or fast GPUs: the fields of
# generation.engine.vocabulary.Footprint, each under the setting it names
# (tests/engine/test_vocabulary.py keeps them equal; studio/ imports no app).
CPU_OFFLOAD: bool = False
SEQUENTIAL_CPU_OFFLOAD: bool = False
ATTENTION_SLICING: bool = False
VAE_TILING: bool = False
CHANNELS_LAST: bool = False
TORCH_COMPILE: bool = False
# With TORCH_COMPILE: the sizes ("WIDTHxHEIGHT", comma-separated) a worker
# compiles for at start (empty: each model's native size), the highest LoRA
# rank swapped in without recompiling, torch.compile's backend, and whether the
# IP-Adapter's graphs (plain and plus-face) are compiled at start too.
COMPILE_SIZES: str = ""
COMPILE_LORA_RANK: int = 64
COMPILE_BACKEND: str = "inductor"
COMPILE_IP_ADAPTER: bool = True
# Upload limits (decision 7).
MAX_UPLOAD_BYTES: int = 20 * 1024 * 1024
MAX_UPLOAD_PIXELS: int = 40_000_000
MAX_LORA_BYTES: int = 512 * 1024 * 1024
# Checks before any pixel is decoded (decision 14): sides, shape, structure.
MAX_UPLOAD_SIDE: int = 12_000
MAX_UPLOAD_ASPECT_RATIO: float = 10.0
MAX_PNG_CHUNKS: int = 10_000
MAX_JPEG_SCANS: int = 32
# The decode runs in a child process under this CPU and memory budget.
UPLOAD_CHECK_CPU_SECONDS: int = 1
UPLOAD_CHECK_MEMORY_MB: int = 256
# LoRA headers are read only up to this size, with at most this many tensors.
MAX_LORA_HEADER_BYTES: int = 8 * 1024 * 1024
MAX_LORA_TENSORS: int = 20_000
# Largest generation size staff may ask for: at most the engine's MAX_SIZE
# (generation.engine.vocabulary), which is the default.
MAX_WIDTH: int = 2048
MAX_HEIGHT: int = 2048
# Most tiles (generations) one X/Y/Z grid may queue: X values x Y values x Z.
GRID_MAX_TILES: int = 36
# How long the gallery keeps a rendered page at most (0: off); a change to what
# it shows retires it at once (generation/gallery/page_cache.py).
GALLERY_PAGE_CACHE_SECONDS: int = 600
# Longest side of stored thumbnails.
THUMBNAIL_SIZE: int = 256
# zlib level of stored PNGs (outputs, control images), 0-9: 1 encodes several
# times faster than Pillow's 6, files about a third larger; same pixels.
PNG_COMPRESS_LEVEL: int = 1
# Inpainting (manual and the face detailer): the Gaussian blur radius of the
# mask's edge, and the pixels of context kept around the mask's box ("only
# masked"); the engine's defaults (generation.engine.vocabulary
# DEFAULT_MASK_BLUR, DEFAULT_ONLY_MASKED_PADDING), 0-64 and 0-512.
MASK_BLUR: int = 4
ONLY_MASKED_PADDING: int = 32
# RQ queue for generation jobs, and optional routes: model key -> queue.
DEFAULT_QUEUE: str = "gpu"
QUEUE_ROUTES: dict[str, str] = {}
# RQ queue for CPU work that must never hold a GPU worker: face analysis of
# references and the scoring of outputs (served by `studio_worker --queues cpu`).
CPU_QUEUE: str = "cpu"
# Job limits and retries.
JOB_TIMEOUT: int = 3600
MAX_ATTEMPTS: int = 3
RETRY_BACKOFF_SECONDS: list[int] = [5, 30, 120]
PROGRESS_INTERVAL_SECONDS: float = 0.5
# Live previews of running generations (generation.previews): how the worker
# makes them (off, approx, tiny_autoencoder), how often, and how long Redis keeps one.
PREVIEW_METHOD: str = "approx"
PREVIEW_TINY_AUTOENCODERS: dict[str, str] = {}
PREVIEW_EVERY_STEPS: int = 2
PREVIEW_MIN_INTERVAL_MS: int = 500
PREVIEW_TTL_SECONDS: int = 300
RECONCILE_INTERVAL_SECONDS: int = 60
# Models a worker loads at start (keys of MODELS); empty means none.
PRELOAD_MODELS: list[str] = []


def documented_defaults(var_dir: Path | str = VAR_DIR) -> dict[str, Any]:
    """Every setting's default by name (without ``STUDIO_``), as docs list them."""
    defaults: dict[str, Any] = {}
    for name, value in globals().items():
        if not name.isupper() or name == "BASE_DIR":
            continue
        defaults[name] = value(Path(var_dir)) if callable(value) else value
    return defaults
