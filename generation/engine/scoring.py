"""Consistency score: how close an output stays to its reference.

Two measures, combined into one number in 0..1 (see docs/consistency-score.md):

- ``clip_cosine``: cosine similarity of the CLIP image embeddings of the two
  images, from the IP-Adapter's image encoder. It follows identity, subject and
  style, and ignores where things are in the frame.
- ``ssim``: scikit-image's structural similarity of the two images in grayscale,
  both fitted to a fixed square first. It follows layout and edges, which is what
  img2img and ControlNet keep.

``score`` is ``0.75 * max(clip_cosine, 0) + 0.25 * max(ssim, 0)`` when the
encoder is available, else ``max(ssim, 0)``; ``method`` names which.
On the tiny model the encoder's weights are random, so the numbers mean nothing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from generation.engine.requests import ResizeMode
from generation.engine.resize import (
    fit_for_image_encoder,
    fit_to_size,
    image_encoder_side,
)

CLIP_WEIGHT = 0.75
SSIM_SIDE = 256


def consistency_score(
    reference: Image.Image,
    output: Image.Image,
    *,
    image_encoder: Any = None,
    image_processor: Any = None,
) -> dict[str, Any]:
    """Score ``output`` against ``reference``.

    ``image_encoder`` (a ``CLIPVisionModelWithProjection``) and
    ``image_processor`` (its ``CLIPImageProcessor``) are optional; without them
    only SSIM is measured. Returns ``clip_cosine`` (or None), ``ssim``, ``score``
    and ``method``.
    """
    ssim = structural_similarity(reference, output)
    if image_encoder is None or image_processor is None:
        return {
            "clip_cosine": None,
            "ssim": ssim,
            "score": max(ssim, 0.0),
            "method": "ssim",
        }
    cosine = clip_cosine(reference, output, image_encoder, image_processor)
    score = CLIP_WEIGHT * max(cosine, 0.0) + (1 - CLIP_WEIGHT) * max(ssim, 0.0)
    return {
        "clip_cosine": cosine,
        "ssim": ssim,
        "score": min(score, 1.0),
        "method": f"{CLIP_WEIGHT:g} clip_cosine + {1 - CLIP_WEIGHT:g} ssim",
    }


def clip_cosine(
    reference: Image.Image,
    output: Image.Image,
    image_encoder: Any,
    image_processor: Any,
) -> float:
    """Cosine similarity (-1..1) of the two images' CLIP image embeddings."""
    side = image_encoder_side(image_processor)
    pixels = image_processor(
        images=[fit_for_image_encoder(image, side) for image in (reference, output)],
        return_tensors="pt",
    ).pixel_values
    parameter = next(image_encoder.parameters())
    with torch.no_grad():
        embeds = image_encoder(
            pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype)
        ).image_embeds.float()
    cosine = torch.nn.functional.cosine_similarity(embeds[0], embeds[1], dim=0)
    return float(cosine.clamp(-1.0, 1.0))


def structural_similarity(reference: Image.Image, output: Image.Image) -> float:
    """SSIM (-1..1) in grayscale, both centre-cropped to ``SSIM_SIDE`` square."""
    from skimage.metrics import structural_similarity as ssim

    def gray(image: Image.Image) -> np.ndarray:
        square = fit_to_size(image, SSIM_SIDE, SSIM_SIDE, ResizeMode.CROP_AND_RESIZE)
        return np.asarray(square.convert("L"), dtype=np.float64)

    return float(ssim(gray(reference), gray(output), data_range=255.0))
