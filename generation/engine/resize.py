"""Fit an image to the size the model it goes to works at.

Every image that reaches a model passes through here first (DESIGN.md decision
14), so that no accepted upload, whatever its shape, makes a model allocate
more than its working size: :func:`fit_to_size` for the generation size (the
img2img init image the VAE encodes, the source of a control map, a ready-made
control image), :func:`fit_for_image_encoder` for a CLIP image encoder (the
consistency score, the IP-Adapter).

The three modes are AUTOMATIC1111's (see :class:`ResizeMode`). Every mode returns
an RGB image of exactly ``width`` x ``height``, so that an img2img init image and
a control map made from the same reference line up pixel for pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageOps

from generation.engine.requests import ResizeMode

# The input side of the CLIP image encoders the studio uses (ViT-H/14 and
# ViT-bigG/14 of the IP-Adapters, ViT-L/14): 224 x 224.
IMAGE_ENCODER_SIDE = 224


def fit_to_size(
    image: Image.Image,
    width: int,
    height: int,
    mode: ResizeMode,
    *,
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """Return ``image`` as RGB at exactly ``width`` x ``height`` using ``mode``.

    ``resample`` is the filter; use NEAREST for maps whose colours are labels
    (a segmentation map), which any blending would corrupt.
    """
    if width < 1 or height < 1:
        raise ValueError(f"target size must be positive, got {width}x{height}")
    rgb = image.convert("RGB")
    mode = ResizeMode(mode)
    if mode is ResizeMode.JUST_RESIZE:
        return rgb.resize((width, height), resample)
    if mode is ResizeMode.CROP_AND_RESIZE:
        return ImageOps.fit(rgb, (width, height), method=resample)
    return _resize_and_fill(rgb, width, height, resample)


def _resize_and_fill(
    image: Image.Image, width: int, height: int, resample: Image.Resampling
) -> Image.Image:
    """Scale to fit inside the target, centre it, and fill the two empty bands by
    stretching the image's outermost rows (AUTOMATIC1111's fill)."""
    if width * image.height > height * image.width:
        # Relatively taller than the target: the bands are left and right. Work
        # on the transposed image so that one piece of code fills both cases.
        transposed = image.transpose(Image.Transpose.TRANSPOSE)
        filled = _resize_and_fill(transposed, height, width, resample)
        return filled.transpose(Image.Transpose.TRANSPOSE)
    fitted_height = max(1, min(height, round(image.height * width / image.width)))
    fitted = image.resize((width, fitted_height), resample)
    canvas = Image.new("RGB", (width, height))
    top = (height - fitted_height) // 2
    bottom = top + fitted_height
    canvas.paste(fitted, (0, top))
    if top:
        first_row = fitted.crop((0, 0, width, 1))
        canvas.paste(first_row.resize((width, top)), (0, 0))
    if bottom < height:
        last_row = fitted.crop((0, fitted_height - 1, width, fitted_height))
        canvas.paste(last_row.resize((width, height - bottom)), (0, bottom))
    return canvas


def image_encoder_side(image_processor: Any = None) -> int:
    """The square input side of the encoder behind ``image_processor`` (a
    ``CLIPImageProcessor``); :data:`IMAGE_ENCODER_SIDE` when it says nothing."""
    crop_size = getattr(image_processor, "crop_size", None) or {}
    side = crop_size.get("height") if isinstance(crop_size, dict) else crop_size
    return int(side) if isinstance(side, int) and side > 0 else IMAGE_ENCODER_SIDE


# Past this ratio the long side is cut to it (around the centre) before
# scaling: the encoder only ever sees the central square.
_ENCODER_MAX_RATIO = 4


def fit_for_image_encoder(
    image: Image.Image, side: int = IMAGE_ENCODER_SIDE
) -> Image.Image:
    """The centred ``side`` x ``side`` RGB square a CLIP image encoder sees.

    The same pixels as CLIP's own processor makes (transformers' torchvision
    backend: shortest side scaled to ``side``, bicubic with antialiasing, on
    8-bit samples, then the centre cropped), so that the processor only
    normalises what it gets and results equal raw diffusers'. The long side
    is first cut to four times the short one, around the centre: a 12000 x
    1200 reference is never scaled to 2240 x 224, and 65535 x 1 never to
    14.7 million x 224 (what made the worker ask for 20 GB).
    """
    import torch
    from torchvision.transforms.v2 import functional as tvF

    rgb = image.convert("RGB")
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    if long > _ENCODER_MAX_RATIO * short:
        kept = _ENCODER_MAX_RATIO * short
        start = (long - kept) // 2
        box = (
            (start, 0, start + kept, height)
            if width > height
            else (0, start, width, start + kept)
        )
        rgb = rgb.crop(box)
        width, height = rgb.size
        short, long = min(width, height), max(width, height)
    # transformers' get_resize_output_image_size and center_crop.
    scaled_long = int(side * long / short)
    scaled_height, scaled_width = (
        (scaled_long, side) if width <= height else (side, scaled_long)
    )
    pixels = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)
    scaled = tvF.resize(
        pixels,
        [scaled_height, scaled_width],
        interpolation=tvF.InterpolationMode.BICUBIC,
        antialias=True,
    )
    top = int((scaled_height - side) / 2.0)
    left = int((scaled_width - side) / 2.0)
    square = scaled[:, top : top + side, left : left + side]
    return Image.fromarray(square.permute(1, 2, 0).numpy(), "RGB")
