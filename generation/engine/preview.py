"""Live previews: a running generation's latents as a small image, every few steps.

Two decoders, chosen by ``PreviewConfig.method``:

- ``approx``: the family's linear latent-to-RGB map (``families.LatentRGB``,
  AUTOMATIC1111's "Approx cheap"): one small matrix product on the latents, an
  image at 1/8 of the output's size. No model, next to no cost.
- ``tiny_autoencoder``: the family's ``AutoencoderTiny`` (TAESD, TAESDXL) from
  a local folder, loaded once per family on the registry's device and dtype: a
  full-size image for a few milliseconds more on a GPU. A family without one
  configured falls back to ``approx``.

``PreviewThrottle`` decides when one is due (every N steps, at most one per
interval, never after the last step, whose output follows at once), so that a
preview costs the run a few percent at most (BENCHMARKS.md, "Live preview").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image

from .config import PreviewConfig
from .families import Family
from .vocabulary import PreviewMethod

logger = logging.getLogger(__name__)

PreviewCallback = Callable[[int, int, Image.Image], None]
"""``on_preview(step, total, image)``: a preview after denoising step ``step``."""


class PreviewThrottle:
    """When a preview is due: every ``every_steps`` steps, at most one per
    ``min_interval_seconds``, never after the last step."""

    def __init__(
        self,
        *,
        every_steps: int,
        min_interval_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every_steps = max(1, every_steps)
        self.min_interval_seconds = min_interval_seconds
        self.clock = clock
        self.last = float("-inf")

    def due(self, step: int, total: int) -> bool:
        if step >= total or step % self.every_steps:
            return False
        now = self.clock()
        if now - self.last < self.min_interval_seconds:
            return False
        self.last = now
        return True


def approximate_rgb(latents: torch.Tensor, family_row: Family) -> Image.Image | None:
    """The first latent of a batch as RGB through the family's linear map; None
    for a family without one or latents of another shape (packed, other
    channel counts)."""
    latent_rgb = family_row.latent_rgb
    if (
        latent_rgb is None
        or latents.ndim != 4
        or latents.shape[1] != len(latent_rgb.factors)
    ):
        return None
    sample = latents[0].detach().float()
    factors = torch.tensor(latent_rgb.factors, device=sample.device)
    bias = torch.tensor(latent_rgb.bias, device=sample.device)
    rgb = torch.einsum("chw,cr->rhw", sample, factors) + bias[:, None, None]
    return _to_image(rgb)


class PreviewDecoder:
    """Turns latents into preview images for one engine (one device and dtype);
    tiny autoencoders are loaded once per family and kept."""

    def __init__(
        self, config: PreviewConfig, *, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.config = config
        self.device = device
        self.dtype = dtype
        self._tiny: dict[str, Any] = {}

    @property
    def enabled(self) -> bool:
        return self.config.method is not PreviewMethod.OFF

    def throttle(self) -> PreviewThrottle:
        """A fresh throttle for one run."""
        return PreviewThrottle(
            every_steps=self.config.every_steps,
            min_interval_seconds=self.config.min_interval_seconds,
        )

    def decode(self, latents: torch.Tensor, family_row: Family) -> Image.Image | None:
        """The preview of ``latents`` (None when this family has none)."""
        with torch.no_grad():
            tiny = self._tiny_autoencoder(family_row)
            if tiny is not None:
                sample = tiny.decode(latents[:1].to(tiny.dtype)).sample[0]
                return _to_image(sample.float())
            return approximate_rgb(latents, family_row)

    def _tiny_autoencoder(self, family_row: Family) -> Any | None:
        if self.config.method is not PreviewMethod.TINY_AUTOENCODER:
            return None
        folder = self.config.tiny_autoencoders.get(family_row.key)
        if folder is None:
            return None
        if family_row.key not in self._tiny:
            from diffusers import AutoencoderTiny

            try:
                model = AutoencoderTiny.from_pretrained(
                    folder, torch_dtype=self.dtype, local_files_only=True
                )
            except (OSError, ValueError) as error:
                # A preview is a courtesy: a broken folder must not fail runs.
                logger.warning(
                    "The %s tiny autoencoder at %s could not be loaded (%s); "
                    "previews use the approximate map instead.",
                    family_row.label,
                    folder,
                    error,
                )
                model = None
            else:
                model = model.to(self.device).eval()
            self._tiny[family_row.key] = model
        return self._tiny[family_row.key]


def _to_image(rgb: torch.Tensor) -> Image.Image:
    """A (3, H, W) tensor in [-1, 1] as an 8-bit RGB image."""
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy()))
