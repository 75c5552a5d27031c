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

from generation.engine.embeddings import EmbeddingCache
from generation.engine.requests import ResizeMode
from generation.engine.resize import (
    fit_for_image_encoder,
    fit_to_size,
    image_encoder_side,
)
from generation.engine.snapshot import image_sha256

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


REFERENCE_EMBEDDINGS = EmbeddingCache()
"""The references' CLIP embeddings in this process, by the hash of the pixels
the encoder sees: a persona's before reference is encoded once, not per score."""


def clip_cosine(
    reference: Image.Image,
    output: Image.Image,
    image_encoder: Any,
    image_processor: Any,
    *,
    cache: EmbeddingCache | None = REFERENCE_EMBEDDINGS,
) -> float:
    """Cosine similarity (-1..1) of the two images' CLIP image embeddings; the
    reference's is taken from ``cache`` when it holds the same pixels (None:
    encoded every time). Each image is encoded alone, so a cached embedding is
    the very tensor an uncached call computes."""
    side = image_encoder_side(image_processor)
    fitted = fit_for_image_encoder(reference, side)

    def embed(image: Image.Image) -> torch.Tensor:
        return _clip_embedding(image, image_encoder, image_processor)

    if cache is None:
        reference_embeds = embed(fitted)
    else:
        reference_embeds = cache.get(
            image_encoder, ("clip", image_sha256(fitted)), lambda: embed(fitted)
        )
    output_embeds = embed(fit_for_image_encoder(output, side))
    cosine = torch.nn.functional.cosine_similarity(
        reference_embeds, output_embeds, dim=0
    )
    return float(cosine.clamp(-1.0, 1.0))


def _clip_embedding(
    image: Image.Image, image_encoder: Any, image_processor: Any
) -> torch.Tensor:
    """The float32 CLIP image embedding of one encoder-sized image."""
    pixels = image_processor(images=[image], return_tensors="pt").pixel_values
    parameter = next(image_encoder.parameters())
    with torch.no_grad():
        embeds = image_encoder(
            pixel_values=pixels.to(device=parameter.device, dtype=parameter.dtype)
        ).image_embeds.float()
    return embeds[0]


def structural_similarity(reference: Image.Image, output: Image.Image) -> float:
    """SSIM (-1..1) in grayscale, both centre-cropped to ``SSIM_SIDE`` square."""
    from skimage.metrics import structural_similarity as ssim

    def gray(image: Image.Image) -> np.ndarray:
        square = fit_to_size(image, SSIM_SIDE, SSIM_SIDE, ResizeMode.CROP_AND_RESIZE)
        return np.asarray(square.convert("L"), dtype=np.float64)

    return float(ssim(gray(reference), gray(output), data_range=255.0))
