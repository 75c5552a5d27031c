"""What scoring adds to a GPU job's wall time: before (inline, as
``generation/jobs.py`` did until scoring moved to the CPU queue) and now.

On the tiny model (written to a temporary folder), each run generates one
img2img output from a real photo (the astronaut) and then, for the *inline*
figure, computes in the same process what the GPU job used to compute after
inference (the CLIP/SSIM consistency score on the engine's own image encoder)
and what identity scoring would add there (dlib's analysis and identity score
of the output). *Now* the GPU job does neither: it stores the output and
enqueues one scoring job on the CPU queue when the row commits.

Run from the repository root: ``python -m benchmarks.scoring_overhead
[--runs N] [--device cpu|cuda]``. It prints a Markdown line for BENCHMARKS.md.
Outside the product's import graph.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--device", default=None)
    options = parser.parse_args()

    import torch
    from skimage import data

    from generation.engine.config import tiny_engine_config
    from generation.engine.face import score_identity
    from generation.engine.face_models import face_models
    from generation.engine.identity import EMBEDDING_SIZE
    from generation.engine.requests import GenerationRequest, Method, ReferenceInput
    from generation.engine.runner import Engine
    from generation.engine.scoring import consistency_score
    from generation.engine.tiny_model import write_tiny_model

    torch.set_num_threads(1)
    photo = Image.fromarray(data.astronaut())
    reference_embedding = [0.0] * EMBEDDING_SIZE
    with tempfile.TemporaryDirectory() as folder:
        config = tiny_engine_config(write_tiny_model(Path(folder)))
        config.device = options.device
        engine = Engine(config)
        request = GenerationRequest(
            model="tiny-sd15",
            prompt="a portrait",
            method=Method.IMG2IMG,
            steps=8,
            strength=0.75,
            width=64,
            height=64,
            references=[ReferenceInput(photo, primary=True)],
        )
        face_models()
        engine.generate(request)  # warm: the pipeline and encoder are loaded once
        encoder = engine.registry.image_encoder()
        generate, consistency, identity = [], [], []
        for seed in range(options.runs):
            started = time.perf_counter()
            seeded = GenerationRequest(**{**vars(request), "seed": seed})
            result = engine.generate(seeded)
            generated = time.perf_counter()
            consistency_score(
                photo,
                result.images[0],
                image_encoder=encoder[0] if encoder else None,
                image_processor=encoder[1] if encoder else None,
            )
            scored = time.perf_counter()
            score_identity(result.images[0], [reference_embedding])
            identified = time.perf_counter()
            generate.append(generated - started)
            consistency.append(scored - generated)
            identity.append(identified - scored)
    job = statistics.median(generate)
    inline_consistency = statistics.median(consistency)
    inline_identity = statistics.median(identity)
    print(
        f"- GPU job on the tiny model ({engine.registry.device}, img2img 64x64, 8 "
        f"steps, medians of {options.runs}): generation {job * 1000:.0f} ms; the "
        f"old inline consistency score added {inline_consistency * 1000:.0f} ms "
        f"(+{100 * inline_consistency / job:.0f}%), identity scoring inline would "
        f"add {inline_identity * 1000:.0f} ms more (+{100 * inline_identity / job:.0f}"
        "%); now the job adds 0 ms of scoring (one scoring job enqueued on the CPU "
        "queue on commit). Command: `python -m benchmarks.scoring_overhead "
        f"--runs {options.runs}`"
    )


if __name__ == "__main__":
    main()
