"""The safety-checker policy: every flagged output is said to be flagged.

diffusers' SD 1.5 pipelines run their safety checker inside the call and return a
black image for a flagged output with only a log line; single-file loads and
SDXL have no checker at all, so the same weights behaved differently depending
on how they were installed. Here the pipelines are loaded without their checker
and the engine runs one itself after every call (``check_outputs``), the same
way for every model: the checker of ``EngineConfig.safety_checker`` or the
model's own. What happens to a flagged output is the policy
(``vocabulary.SafetyPolicy``): ``flag`` keeps it as generated, ``black`` replaces
it by black (what diffusers does), both mark it flagged in the result, its notes
and its snapshot; ``off`` runs nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .vocabulary import SafetyPolicy

SAFETY_CHECKER_FOLDER = "safety_checker"
FEATURE_EXTRACTOR_FOLDER = "feature_extractor"


@dataclass
class SafetyOutcome:
    """What the check did: the images to keep, which were flagged (None: not
    checked), and the snapshot's record."""

    images: list[Image.Image]
    flagged: list[bool] | None
    record: dict[str, Any]
    notes: list[str]


def check_outputs(
    images: list[Image.Image],
    policy: SafetyPolicy,
    checker: tuple[Any, Any, str] | None,
) -> SafetyOutcome:
    """Run ``checker`` (model, image processor, source) on ``images`` under
    ``policy``; ``checker`` None means none is available."""
    policy = SafetyPolicy(policy)
    record: dict[str, Any] = {"policy": policy.value, "checker": None}
    if policy is SafetyPolicy.OFF:
        return SafetyOutcome(images, None, {**record, "checked": False}, [])
    if checker is None:
        return SafetyOutcome(
            images,
            None,
            {**record, "checked": False},
            [
                "No safety checker is available for this model, so its outputs "
                "were not checked: set STUDIO_SAFETY_CHECKER_MODEL (docs/models.md)."
            ],
        )
    model, processor, source = checker
    flagged = flagged_images(model, processor, images)
    kept = [
        Image.new(image.mode, image.size)
        if hit and policy is SafetyPolicy.BLACK
        else image
        for image, hit in zip(images, flagged, strict=True)
    ]
    action = "replaced by a black image" if policy is SafetyPolicy.BLACK else "kept"
    notes = [
        f"Image {index + 1} was flagged by the safety checker and {action} "
        f"(STUDIO_SAFETY_CHECKER={policy.value})."
        for index, hit in enumerate(flagged)
        if hit
    ]
    return SafetyOutcome(
        kept,
        flagged,
        {**record, "checker": source, "checked": True, "flagged": flagged},
        notes,
    )


def flagged_images(model: Any, processor: Any, images: list[Image.Image]) -> list[bool]:
    """The checker's verdict per image, computed as diffusers'
    ``run_safety_checker`` does (the checker's own thresholds)."""
    parameter = next(model.parameters())
    pixels = processor(images, return_tensors="pt").pixel_values
    arrays = np.stack([np.asarray(image, dtype=np.float32) / 255 for image in images])
    with torch.no_grad():
        _, has_nsfw = model(
            images=arrays,
            clip_input=pixels.to(device=parameter.device, dtype=parameter.dtype),
        )
    return [bool(hit) for hit in has_nsfw]
