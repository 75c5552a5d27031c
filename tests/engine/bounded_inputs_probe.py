"""Run every method and the consistency score on one reference shape, in a
process of its own, and print what the run added to the peak resident memory.

``python -m tests.engine.bounded_inputs_probe TINY_MODEL_ROOT WIDTH HEIGHT``
prints one JSON object. The model is loaded and every method warmed up on a
small reference first, so the figure is what the reference's shape costs.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

import numpy as np
from PIL import Image

METHODS = ("img2img", "controlnet", "hybrid", "ip_adapter")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reference(width: int, height: int) -> Image.Image:
    # Noise in 64-pixel tiles: real structure for canny, cheap to make.
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (-(-height // 64), -(-width // 64), 3), np.uint8)
    return Image.fromarray(tiles).resize((width, height), Image.Resampling.NEAREST)


def run_everything(engine, image: Image.Image, scorer: dict) -> None:
    from generation.engine.requests import (
        ControlType,
        ControlUnitInput,
        GenerationRequest,
        IPAdapterInput,
        Method,
        ReferenceInput,
    )
    from generation.engine.scoring import consistency_score

    for method in METHODS:
        result = engine.generate(
            GenerationRequest(
                model="tiny-sd15",
                prompt="a persona",
                method=Method(method),
                steps=2,
                width=64,
                height=64,
                references=[ReferenceInput(image, primary=True)],
                control_units=[ControlUnitInput(ControlType.CANNY)]
                if method in ("controlnet", "hybrid")
                else [],
                ip_adapter=IPAdapterInput(face_crop=False)
                if method == "ip_adapter"
                else None,
            )
        )
        consistency_score(image, result.images[0], **scorer)


def main(root: str, width: str, height: str) -> None:
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from generation.engine.config import tiny_engine_config
    from generation.engine.runner import Engine

    torch.set_num_threads(1)
    engine = Engine(tiny_engine_config(Path(root)))
    scorer = {
        "image_encoder": CLIPVisionModelWithProjection.from_pretrained(
            Path(root) / "ip-adapter" / "models" / "image_encoder"
        ),
        "image_processor": CLIPImageProcessor.from_pretrained(
            Path(root) / "sd15" / "feature_extractor"
        ),
    }
    run_everything(engine, reference(64, 64), scorer)
    image = reference(int(width), int(height))
    before = peak_rss_bytes()
    run_everything(engine, image, scorer)
    print(
        json.dumps(
            {
                "image_bytes": image.width * image.height * 4,
                "peak_before": before,
                "peak_after": peak_rss_bytes(),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
