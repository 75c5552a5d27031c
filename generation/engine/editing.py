"""The images a reference edit is given (method ``reference_edit``).

A family's ``multi_reference`` says how several references reach its pipeline:

- ``native`` (Qwen-Image-Edit-Plus): a list of the references, each as it is
  (the pipeline sizes them itself) unless it is larger than the pipeline's
  working area (``NATIVE_MAX_AREA``), when it is scaled down to it first;
- ``stitch`` (FLUX.1 Kontext, which takes one image): the references side by
  side on one canvas, in the plan's order (primary first, on the left), all
  scaled to one height, each as wide as its share of their joint aspect ratio;
  the canvas keeps that ratio and has about the output's pixel area (width x
  height, so about one megapixel at 1024x1024, the area Kontext was trained
  at), its sides in the family's size steps. It is handed to the pipeline with
  its automatic resizing off, so what the snapshot records is what the model
  saw. One reference goes the same way, alone on the
  canvas. This is the stitched-canvas approach of ComfyUI's Kontext workflows
  ("Image Stitch"); diffusers' community multi-image Kontext pipeline
  concatenates latents instead.

``edit_inputs`` returns the images and what the snapshot records of them: the
references used, the mode, the canvas size and each reference's place on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .families import Family
from .vocabulary import MultiReference

# What Qwen-Image-Edit-Plus encodes each reference at (its VAE_IMAGE_SIZE, about
# a megapixel; it sizes each one itself, from the image it is given): a larger
# reference is brought to it before the call, so that what reaches the
# pipeline never exceeds its working size, whatever the upload's shape.
NATIVE_MAX_AREA = 1024 * 1024


@dataclass
class EditInputs:
    """The images of a reference edit and their record for the snapshot."""

    images: list[Image.Image]
    record: dict[str, Any] = field(default_factory=dict)


def edit_inputs(
    references: list[Image.Image],
    indexes: tuple[int, ...],
    row: Family,
    width: int,
    height: int,
) -> EditInputs:
    """The images a family's reference-editing pipeline is given (module doc)."""
    chosen = [references[index].convert("RGB") for index in indexes]
    mode = row.multi_reference or MultiReference.NATIVE
    record: dict[str, Any] = {
        "references": list(indexes),
        "multi_reference": mode.value,
    }
    if mode is MultiReference.NATIVE:
        fitted = [within_area(image, NATIVE_MAX_AREA) for image in chosen]
        if any(
            image.size != original.size
            for image, original in zip(fitted, chosen, strict=True)
        ):
            record["fitted"] = [list(image.size) for image in fitted]
        return EditInputs(images=fitted, record=record)
    canvas, boxes = stitch(chosen, width * height, row.size_multiple)
    record["canvas"] = [canvas.width, canvas.height]
    record["boxes"] = [list(box) for box in boxes]
    return EditInputs(images=[canvas], record=record)


def within_area(image: Image.Image, area: int) -> Image.Image:
    """``image`` itself when it has at most ``area`` pixels, else a copy of its
    aspect ratio with about ``area`` pixels (DESIGN.md decision 14)."""
    if image.width * image.height <= area:
        return image
    scale = math.sqrt(area / (image.width * image.height))
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def stitch(
    images: list[Image.Image], area: int, multiple: int
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """The images side by side at one height, on a canvas of about ``area``
    pixels whose sides are multiples of ``multiple``; and each image's box
    (left, top, right, bottom)."""
    ratios = [image.width / image.height for image in images]
    joint = sum(ratios)
    canvas_height = _steps(math.sqrt(area / joint), multiple)
    canvas_width = _steps(canvas_height * joint, multiple)
    # Each image's share of the canvas width, in proportion to its aspect ratio
    # (the last takes what rounding left).
    widths = [max(1, round(canvas_width * ratio / joint)) for ratio in ratios]
    widths[-1] = max(1, canvas_width - sum(widths[:-1]))
    canvas = Image.new("RGB", (sum(widths), canvas_height))
    boxes, left = [], 0
    for image, image_width in zip(images, widths, strict=True):
        canvas.paste(
            image.resize((image_width, canvas_height), Image.Resampling.LANCZOS),
            (left, 0),
        )
        boxes.append((left, 0, left + image_width, canvas_height))
        left += image_width
    return canvas, boxes


def _steps(value: float, multiple: int) -> int:
    """``value`` rounded to the nearest multiple of ``multiple`` (at least one)."""
    return max(multiple, round(value / multiple) * multiple)
