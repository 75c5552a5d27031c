"""Face crop for the IP-Adapter plus-face adapter.

The detector is scikit-image's LBP frontal-face cascade: it ships with
scikit-image, runs offline on the CPU and needs no weights download. It finds
frontal faces only; when it finds none the whole image is used and the returned
info says so, so the snapshot can record it.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from PIL import Image

DETECTOR = "scikit-image LBP frontal-face cascade"
# Detection runs on a copy whose longest side is at most this: the cascade's
# cost grows with the pixel count, and a face large enough to matter survives.
_DETECTION_SIDE = 512
# The cascade's training window: nothing smaller can be found.
_MIN_FACE_SIDE = 24


@cache
def _cascade() -> Any:
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def detect_faces(image: Image.Image) -> list[tuple[int, int, int, int]]:
    """Return face boxes ``(left, top, width, height)`` in ``image`` pixels,
    largest first."""
    scale = min(1.0, _DETECTION_SIDE / max(image.size))
    working = image.convert("L")
    if scale < 1.0:
        working = working.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
            Image.Resampling.LANCZOS,
        )
    pixels = np.asarray(working, dtype=np.float64) / 255.0
    shortest = min(pixels.shape)
    if shortest < _MIN_FACE_SIDE:
        return []
    detections = _cascade().detect_multi_scale(
        img=pixels,
        scale_factor=1.2,
        step_ratio=1,
        min_size=(_MIN_FACE_SIDE, _MIN_FACE_SIDE),
        max_size=(shortest, shortest),
    )
    boxes = [
        (
            round(found["c"] / scale),
            round(found["r"] / scale),
            round(found["width"] / scale),
            round(found["height"] / scale),
        )
        for found in detections
    ]
    return sorted(boxes, key=lambda box: box[2] * box[3], reverse=True)


def crop_face(image: Image.Image, *, margin: float = 0.4) -> tuple[Image.Image, dict]:
    """Crop ``image`` to a square around its largest face.

    ``margin`` is the share of the face's side added on every side of it. The
    square is moved (not shrunk) to stay inside the image where it can, and
    shrunk to the image's shorter side where it cannot. Returns the crop (RGB)
    and an info dict: ``face_found``, ``box`` (the face, left/top/width/height),
    ``crop_box`` (left/top/right/bottom), ``faces`` (how many were found) and
    ``detector``. Without a face, the whole image and ``face_found`` False.
    """
    if margin < 0:
        raise ValueError(f"margin must not be negative, got {margin}")
    rgb = image.convert("RGB")
    faces = detect_faces(rgb)
    info: dict[str, Any] = {
        "face_found": bool(faces),
        "faces": len(faces),
        "detector": DETECTOR,
        "margin": margin,
        "box": None,
        "crop_box": [0, 0, rgb.width, rgb.height],
    }
    if not faces:
        return rgb, info
    left, top, width, height = faces[0]
    side = min(round(max(width, height) * (1 + 2 * margin)), rgb.width, rgb.height)
    crop_left = _clamp(left + width // 2 - side // 2, rgb.width - side)
    crop_top = _clamp(top + height // 2 - side // 2, rgb.height - side)
    crop_box = (crop_left, crop_top, crop_left + side, crop_top + side)
    info["box"] = [left, top, width, height]
    info["crop_box"] = list(crop_box)
    return rgb.crop(crop_box), info


def _clamp(start: int, highest: int) -> int:
    return max(0, min(start, highest))
