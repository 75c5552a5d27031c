"""The studio's overhead: one job timed three ways on the same model and inputs.

1. raw diffusers in a bare process (``raw_diffusers.py``): the floor, 1.00;
2. ``Engine.generate`` on a warm registry, in this process;
3. the full studio path in a sandbox (``studio_sandbox``): ``content_enqueue``,
   a real worker process, the stored output, thumbnails and score, the row
   updated, timed until the worker publishes the result.

Each is the median of several runs after a warm-up run. All three must produce
the same pixels (same seed, scheduler and arguments), which the result checks:
equal times for different work would prove nothing.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

from generation.bench.stats import summary
from generation.bench.workload import (
    VANILLA,
    SpeedOptions,
    Workload,
    pixels_sha256,
)
from generation.engine.config import EngineConfig
from generation.engine.runner import Engine

RAW_SCRIPT = Path(__file__).with_name("raw_diffusers.py")
WARMUP_RUNS = 1


def time_raw(
    config: EngineConfig,
    workload: Workload,
    *,
    workdir: Path,
    runs: int,
    speed: SpeedOptions = VANILLA,
) -> dict[str, Any]:
    """Raw diffusers in a bare process (``python -I``: not even this package is
    importable there); its timings and the first image's pixel hash."""
    (spec,) = config.models.values()
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, out_path = workdir / "raw-spec.json", workdir / "raw-result.json"
    spec_path.write_text(
        json.dumps(
            {
                "pipeline": spec.source,
                "device": config.device,
                "dtype": config.dtype,
                **workload.as_dict(),
                "runs": runs,
                # torch.compile compiles during the first call.
                "warmup_runs": WARMUP_RUNS + speed.compile,
                "channels_last": speed.channels_last,
                "compile": speed.compile,
            }
        )
    )
    subprocess.run(
        [sys.executable, "-I", str(RAW_SCRIPT), str(spec_path), str(out_path)],
        cwd=workdir,
        env=os.environ,
        check=True,
        capture_output=True,
    )
    result = json.loads(out_path.read_text())
    return {
        **summary(result["seconds"]),
        "load_seconds": result["load_seconds"],
        "pixels_sha256": result["pixels_sha256"],
        "studio_modules_imported": result["studio_modules"],
    }


def time_engine(
    config: EngineConfig,
    workload: Workload,
    *,
    runs: int,
    speed: SpeedOptions = VANILLA,
) -> dict[str, Any]:
    """``Engine.generate`` on a warm registry in this process."""
    config = replace(config, channels_last=speed.channels_last, compile=speed.compile)
    engine = Engine(config)
    (model_key,) = config.models
    started = time.perf_counter()
    engine.registry.preload([model_key])
    load_seconds = time.perf_counter() - started
    request = workload.request(model_key)
    for _ in range(WARMUP_RUNS + speed.compile):
        engine.generate(request)
    seconds, inference, images = [], [], []
    for _ in range(runs):
        started = time.perf_counter()
        result = engine.generate(request)
        seconds.append(time.perf_counter() - started)
        inference.append(result.timings.inference)
        images.append(result.images[0])
    del engine
    gc.collect()
    return {
        **summary(seconds),
        "load_seconds": load_seconds,
        "inference_median": median(inference),
        "pixels_sha256": pixels_sha256(images[0]),
    }


def studio_plan(
    model_key: str,
    workload: Workload,
    *,
    runs: int,
    speed: SpeedOptions = VANILLA,
    queue_workload: Workload | None = None,
    queue_jobs: int = 0,
) -> dict[str, Any]:
    """The sandbox driver's plan: ``runs`` timed jobs of ``workload`` after the
    warm-up, then ``queue_jobs`` of ``queue_workload`` (see ``studio_driver``)."""
    return {
        "model_key": model_key,
        "workload": workload.as_dict(),
        "warmup_jobs": WARMUP_RUNS + speed.compile if runs else 0,
        "jobs": runs,
        "queue_workload": (queue_workload or workload).as_dict(),
        "queue_jobs": queue_jobs,
    }


def studio_summary(jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """The studio's timed jobs: wall clock, row timestamps, and where the time
    beyond the engine went (medians, seconds)."""
    return {
        **summary([job["wall"] for job in jobs]),
        "row_median": median(job["row"] for job in jobs),
        "engine_median": median(job["engine"] for job in jobs),
        "beyond_engine_median": median(job["wall"] - job["engine"] for job in jobs),
        "breakdown": {
            "enqueue_and_queue": median(job["wall"] - job["in_worker"] for job in jobs),
            "job_before_and_after_engine": median(
                job["job"] - job["engine"] for job in jobs
            ),
            "score": median(job["score"] for job in jobs),
            "store_and_row_update": median(
                job["in_worker"] - job["job"] for job in jobs
            ),
        },
        "registry_hits": sum(job["registry_hit"] for job in jobs),
        "pixels_sha256": jobs[0]["pixels_sha256"],
    }


def overhead_result(
    raw: dict[str, Any],
    engine: dict[str, Any],
    studio: dict[str, Any],
    *,
    config: EngineConfig,
    workload: Workload,
) -> dict[str, Any]:
    """Ratios to raw diffusers and the overhead in milliseconds per job."""
    floor = raw["median"]
    return {
        "device": config.device,
        "dtype": config.dtype,
        "workload": workload.as_dict(),
        "raw": raw,
        "engine": engine,
        "studio": studio,
        "engine_ratio": engine["median"] / floor,
        "studio_ratio": studio["median"] / floor,
        "engine_overhead_ms": 1000 * (engine["median"] - floor),
        "studio_overhead_ms": 1000 * (studio["median"] - floor),
        # Paired per job (wall clock minus that job's own engine time), so it
        # does not carry the noise between two processes' medians.
        "beyond_engine_ms": 1000 * studio["beyond_engine_median"],
        "same_image": raw["pixels_sha256"]
        == engine["pixels_sha256"]
        == studio["pixels_sha256"],
    }
