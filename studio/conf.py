"""The studio's own settings: every ``STUDIO_*`` setting and its default, in one place.

Each name here is read from the environment as ``STUDIO_<NAME>`` by
``studio.settings.base`` (JSON for lists and dicts) and read back lazily with
:func:`studio_setting`, so tests can override them with ``settings``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

DEFAULTS: dict[str, Any] = {
    # Where the studio keeps its runtime files (database, media, Redis, models).
    "VAR_DIR": str(VAR_DIR),
    # Base models staff can choose for a persona: key -> {"source", "revision",
    # "label"}. A source is a Hub id, a local diffusers folder or a single
    # .safetensors file. Empty means the built-in tiny model (its images are noise).
    "MODELS": {},
    # Local model paths must lie under one of these folders.
    "MODEL_ROOTS": [str(VAR_DIR / "models")],
    # Where `studio_tiny_model` writes the built-in tiny model.
    "TINY_MODEL_DIR": str(VAR_DIR / "models" / "tiny"),
    # ControlNet per control type: {"canny": "lllyasviel/sd-controlnet-canny", ...}.
    # Empty means the tiny model's ControlNets when the tiny model is in use.
    "CONTROLNETS": {},
    # IP-Adapter: {"source": "h94/IP-Adapter", "subfolder": "models", ...} or {}.
    "IP_ADAPTER": {},
    # Folder with annotator weights in the lllyasviel/Annotators layout.
    "ANNOTATORS_DIR": "",
    # A transformers semantic-segmentation model for the seg control type.
    "SEG_MODEL": "",
    # Inference device and dtype; empty chooses (CUDA fp16, MPS, CPU fp32).
    "DEVICE": "",
    "DTYPE": "",
    # Base models kept loaded until this many MiB of weights; 0 means no limit.
    "MEMORY_BUDGET_MB": 0,
    # Footprint options for small or fast GPUs.
    "CPU_OFFLOAD": False,
    "ATTENTION_SLICING": False,
    "VAE_TILING": False,
    "CHANNELS_LAST": False,
    "TORCH_COMPILE": False,
    # Upload limits (decision 7).
    "MAX_UPLOAD_BYTES": 20 * 1024 * 1024,
    "MAX_UPLOAD_PIXELS": 40_000_000,
    "MAX_LORA_BYTES": 512 * 1024 * 1024,
    # Largest generation size staff may ask for.
    "MAX_WIDTH": 2048,
    "MAX_HEIGHT": 2048,
    # Longest side of stored thumbnails.
    "THUMBNAIL_SIZE": 256,
    # RQ queue for generation jobs, and optional routes: model key -> queue.
    "DEFAULT_QUEUE": "gpu",
    "QUEUE_ROUTES": {},
    # Job limits and retries.
    "JOB_TIMEOUT": 3600,
    "MAX_ATTEMPTS": 3,
    "RETRY_BACKOFF_SECONDS": [5, 30, 120],
    "PROGRESS_INTERVAL_SECONDS": 0.5,
    "RECONCILE_INTERVAL_SECONDS": 60,
    # Models a worker loads at start (keys of MODELS); empty means none.
    "PRELOAD_MODELS": [],
    # Test-only fault injection: the first N attempts of every generation hit a
    # real out-of-memory error at a denoising step (generation/jobs.py). Keep 0.
    "TEST_OOM_ATTEMPTS": 0,
}


def studio_setting(name: str) -> Any:
    """Return ``settings.STUDIO_<name>``, falling back to its documented default."""
    from django.conf import settings

    return getattr(settings, f"STUDIO_{name}", DEFAULTS[name])
