"""The geometry of inpainting: check the inputs, feather the mask, choose the
region, and paste the pipeline's output back (AUTOMATIC1111's "only masked").

The pipeline (the family's inpaint class, ``Family.inpaint_pipeline_class``)
sees the region resized to the size it works at; its output is resized back and
blended over the original through the feathered mask, so every pixel where that
mask is black is the original's, bit for bit (the VAE round trip would otherwise
touch the whole image).

Framework free and cheap to import: PIL only.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image, ImageFilter

from .errors import InvalidRequest
from .requests import InpaintRequest
from .vocabulary import (
    MAX_FRACTION,
    MAX_GUIDANCE_SCALE,
    MAX_MASK_BLUR,
    MAX_ONLY_MASKED_PADDING,
    MAX_SIZE,
    MAX_STEPS,
    MIN_GUIDANCE_SCALE,
    MIN_INPAINT_STRENGTH,
    MIN_SIZE,
    MIN_STEPS,
    SIZE_MULTIPLE,
)

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class InpaintRegion:
    """What the pipeline is given: ``image`` and ``mask`` at ``width`` x
    ``height``, cut from ``box`` of the original; ``feathered`` is the whole
    image's feathered mask (the paste's alpha)."""

    box: Box
    image: Image.Image
    mask: Image.Image
    feathered: Image.Image
    width: int
    height: int


def check_inpaint_request(request: InpaintRequest) -> None:
    """Refuse an inpaint request that cannot run, naming what to fix."""
    if request.image.size != request.mask.size:
        raise InvalidRequest(
            f"The mask is {request.mask.size[0]}x{request.mask.size[1]} but the "
            f"image is {request.image.size[0]}x{request.image.size[1]}: draw the "
            "mask on the image itself."
        )
    if request.mask.convert("L").getbbox() is None:
        raise InvalidRequest("The mask is empty: paint the region to redraw.")
    _check_range(
        "Inpaint strength", request.strength, MIN_INPAINT_STRENGTH, MAX_FRACTION
    )
    _check_range("Mask blur", request.mask_blur, 0, MAX_MASK_BLUR)
    _check_range("Steps", request.steps, MIN_STEPS, MAX_STEPS)
    _check_range(
        "Guidance scale", request.guidance_scale, MIN_GUIDANCE_SCALE, MAX_GUIDANCE_SCALE
    )
    _check_range(
        '"Only masked" padding', request.only_masked_padding, 0, MAX_ONLY_MASKED_PADDING
    )
    if request.steps * request.strength < 1:
        raise InvalidRequest(
            f"{request.steps} steps at strength {request.strength} denoise no step: "
            "raise the steps or the strength."
        )
    if request.only_masked:
        if request.size is not None:
            _check_side("The inpaint size", request.size)
    else:
        width, height = request.image.size
        _check_side("The image width", width)
        _check_side("The image height", height)


def feather_mask(mask: Image.Image, blur: int) -> Image.Image:
    """The mask made black and white (any non-black pixel redraws), blurred by
    ``blur`` pixels (0: a hard edge)."""
    hard = mask.convert("L").point(lambda value: 255 if value else 0)
    return hard.filter(ImageFilter.GaussianBlur(blur)) if blur else hard


def masked_box(feathered: Image.Image, padding: int, aspect: float) -> Box:
    """The bounding box of the feathered mask's non-black pixels, grown by
    ``padding`` on every side, then widened (or heightened) to the ``aspect``
    (width / height) the pipeline works at, and kept inside the image."""
    image_width, image_height = feathered.size
    bbox = feathered.getbbox()
    assert bbox is not None, "check_inpaint_request refuses an empty mask"
    left, top, right, bottom = bbox
    left, top = max(left - padding, 0), max(top - padding, 0)
    right = min(right + padding, image_width)
    bottom = min(bottom + padding, image_height)
    width, height = right - left, bottom - top
    if width / height < aspect:
        left, right = _grow(left, right, round(height * aspect), image_width)
    else:
        top, bottom = _grow(top, bottom, round(width / aspect), image_height)
    return left, top, right, bottom


def inpaint_region(request: InpaintRequest, native_size: int) -> InpaintRegion:
    """The region of ``request`` the pipeline redraws, at the size it works at."""
    image = request.image.convert("RGB")
    feathered = feather_mask(request.mask, request.mask_blur)
    if not request.only_masked:
        width, height = image.size
        return InpaintRegion(
            (0, 0, width, height), image, feathered, feathered, width, height
        )
    size = request.size or native_size
    box = masked_box(feathered, request.only_masked_padding, 1.0)
    return InpaintRegion(
        box,
        image.crop(box).resize((size, size), Image.Resampling.LANCZOS),
        feathered.crop(box).resize((size, size), Image.Resampling.LANCZOS),
        feathered,
        size,
        size,
    )


def paste_back(
    original: Image.Image, output: Image.Image, box: Box, feathered: Image.Image
) -> Image.Image:
    """``output`` (the pipeline's image of ``box``) resized to ``box`` and blended
    over ``original`` through ``feathered``; outside it the original is kept."""
    original = original.convert("RGB")
    size = (box[2] - box[0], box[3] - box[1])
    patch = output.convert("RGB")
    if patch.size != size:
        patch = patch.resize(size, Image.Resampling.LANCZOS)
    blended = Image.composite(patch, original.crop(box), feathered.crop(box))
    result = original.copy()
    result.paste(blended, box[:2])
    return result


def _grow(start: int, end: int, length: int, limit: int) -> tuple[int, int]:
    """Widen [start, end) to ``length`` around its centre, inside [0, limit)."""
    length = min(length, limit)
    start = max(min((start + end - length) // 2, limit - length), 0)
    return start, start + length


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low} and {high}, not {value!r}.")


def _check_side(name: str, side: int) -> None:
    if not MIN_SIZE <= side <= MAX_SIZE or side % SIZE_MULTIPLE:
        raise InvalidRequest(
            f"{name} is {side}: it must be between {MIN_SIZE} and {MAX_SIZE} pixels "
            f"in steps of {SIZE_MULTIPLE}."
        )
