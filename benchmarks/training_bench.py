"""LoRA training speed and memory on this machine: steps per second of the
engine's trainer (``generation/engine/training.py``) on the tiny model and the
benchmark's ``small`` preset, with gradient checkpointing off and on.

``python -m benchmarks.training_bench [--steps-tiny N] [--steps-small N]``
prints a Markdown table for BENCHMARKS.md. Each configuration runs in its own
process, so that its peak resident memory (``ru_maxrss``) is its own. The rate is
taken between the first and the last step's callback: model loading, latent
caching and the first step's warm-up are left out. Random weights: the
arithmetic is real, the images are noise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

CONFIGS = [
    # (preset, resolution, rank, batch size, gradient checkpointing)
    ("tiny", 64, 4, 1, False),
    ("tiny", 64, 4, 4, False),
    ("small", 256, 16, 1, False),
    ("small", 256, 16, 1, True),
]


def measure(
    preset: str,
    resolution: int,
    rank: int,
    batch: int,
    checkpointing: bool,
    steps: int,
    workdir: Path,
    scratch: Path,
) -> dict:
    """One configuration, in this process (the child's side)."""
    import resource
    import time

    import torch
    from PIL import Image

    from benchmarks.presets import PRESETS
    from generation.engine.runner import Engine
    from generation.engine.training import (
        Trainer,
        TrainingImage,
        TrainingRequest,
        TrainingSettings,
    )

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    config = PRESETS[preset].write_model(workdir / preset)
    engine = Engine(config)
    images = [
        TrainingImage(
            Image.new("RGB", size, (40 * index, 120, 200)), f"sks person {index}"
        )
        for index, size in enumerate([(512, 512), (640, 512), (512, 640)])
    ]
    settings = TrainingSettings(
        steps=steps,
        rank=rank,
        alpha=float(rank),
        learning_rate=1e-4,
        resolution=resolution,
        batch_size=batch,
        gradient_checkpointing=checkpointing,
    )
    stamps: list[float] = []
    Trainer(engine).train(
        TrainingRequest(
            model=next(iter(config.models)), images=images, settings=settings
        ),
        work_dir=scratch,
        on_step=lambda step, total, loss: stamps.append(time.perf_counter()),
    )
    rate = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {
        "steps_per_second": rate,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps-tiny", type=int, default=40)
    parser.add_argument("--steps-small", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=Path("var/bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        preset, resolution, rank, batch, checkpointing, steps = json.loads(args.child)
        with tempfile.TemporaryDirectory() as scratch:
            result = measure(
                preset,
                resolution,
                rank,
                batch,
                checkpointing,
                steps,
                args.workdir.resolve(),
                Path(scratch),
            )
        print(json.dumps(result))
        return
    load_before = os.getloadavg()
    rows = []
    for preset, resolution, rank, batch, checkpointing in CONFIGS:
        steps = args.steps_tiny if preset == "tiny" else args.steps_small
        child = json.dumps([preset, resolution, rank, batch, checkpointing, steps])
        output = (
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.training_bench",
                    "--child",
                    child,
                    "--workdir",
                    str(args.workdir),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        rows.append(
            (preset, resolution, rank, batch, checkpointing, steps, json.loads(output))
        )
    import torch

    print(f"- Date: {datetime.now(UTC).isoformat(timespec='seconds')}")
    print(
        f"- Command: `python -m benchmarks.training_bench --steps-tiny "
        f"{args.steps_tiny} --steps-small {args.steps_small}`"
    )
    print(
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{os.environ.get('BENCH_THREADS', '2')} torch threads; load average at "
        f"start {'/'.join(f'{x:.2f}' for x in load_before)}, at the end "
        f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print()
    print(
        "| preset | resolution | rank | batch | gradient checkpointing | steps "
        "| steps/s | peak RSS MB |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for preset, resolution, rank, batch, checkpointing, steps, result in rows:
        print(
            f"| {preset} | {resolution}² | {rank} | {batch} | "
            f"{'on' if checkpointing else 'off'} | {steps} | "
            f"{result['steps_per_second']:.3g} | {result['peak_rss_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
