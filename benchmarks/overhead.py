"""The studio's overhead: one job timed three ways on the same model and inputs.

1. raw diffusers in a bare process (``raw_diffusers.py``): the floor, 1.00;
2. ``Engine.generate`` on a warm registry, in this process;
3. the full studio path in a sandbox (``studio_sandbox``): ``content_enqueue``,
   a real worker process, the stored output, thumbnails and score, the row
   updated, timed until the worker publishes the result.

All three are loaded and warmed up first, then run in turns, one run each per
round, the first of the round rotating (raw, engine, studio; then engine,
studio, raw; ...), so that other work on the machine slows them alike; each path
reports the median and the minimum of its rounds, the ratios are given both ways,
and the spread rule (``stats.SPREAD_LIMIT``) says whether the rounds were steady
enough to judge them. All three must produce the same pixels (same seed,
scheduler and arguments), which the result checks: equal times for different
work would prove nothing. The same sandboxed worker then drains the queue
throughput's jobs (``throughput``).
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from statistics import median
from typing import Any

import torch

from benchmarks.line_process import LineProcess
from benchmarks.stats import SPREAD_LIMIT, judgeable, summary
from benchmarks.studio_sandbox import StudioSandbox
from benchmarks.workload import (
    VANILLA,
    SpeedOptions,
    Workload,
    pixels_sha256,
)
from generation.engine.config import EngineConfig
from generation.engine.families import family
from generation.engine.requests import Method
from generation.engine.runner import Engine

RAW_SCRIPT = Path(__file__).with_name("raw_diffusers.py")
WARMUP_RUNS = 1


def measure_paths(
    config: EngineConfig,
    workload: Workload,
    sandbox: StudioSandbox,
    *,
    workdir: Path,
    runs: int,
    speed: SpeedOptions = VANILLA,
    queue_workload: Workload | None = None,
    queue_jobs: int = 0,
    together: bool = True,
) -> dict[str, Any]:
    """``runs`` rounds of raw, engine and studio (none when 0), then the queue's
    ``queue_jobs`` on the sandboxed worker (none when 0). Returns ``overhead``
    (see ``overhead_result``) and ``queue`` (the driver's drained queue).

    ``together`` False loads and runs the three paths one after another, each
    freed before the next loads, for a model the device holds once only; other
    work on the machine then weighs on the paths unevenly, which the spread
    rule cannot see.
    """
    (model_key,) = config.models
    # torch.compile compiles during the first call.
    warmup = WARMUP_RUNS + speed.compile
    plan = {
        "model_key": model_key,
        "workload": workload.as_dict(),
        "warmup_jobs": warmup if runs else 0,
        "queue_workload": (queue_workload or workload).as_dict(),
    }
    result: dict[str, Any] = {"overhead": None, "queue": None}
    raw_runs: list[dict[str, Any]] = []
    engine_runs: list[dict[str, Any]] = []
    studio_jobs: list[dict[str, Any]] = []
    raw_ready: dict[str, Any] = {}
    if not together:
        if runs:
            with _start_raw(config, workload, workdir, speed, warmup) as raw:
                raw.wait_ready()
                raw_ready = raw.ready
                raw_runs = [raw.request("run") for _ in range(runs)]
            engine = _EngineRunner(config, workload, speed, warmup)
            engine_runs = [engine.run() for _ in range(runs)]
            engine.close()
        with sandbox.start(plan, speed) as studio:
            studio.wait_ready()
            studio_jobs = [studio.request("job") for _ in range(runs)]
            if queue_jobs:
                result["queue"] = studio.request(f"queue {queue_jobs}")
    else:
        # The helpers load at the same time; the engine loads here meanwhile.
        with (
            sandbox.start(plan, speed) as studio,
            _start_raw(config, workload, workdir, speed, warmup)
            if runs
            else nullcontext() as raw,
        ):
            engine = _EngineRunner(config, workload, speed, warmup) if runs else None
            studio.wait_ready()
            if runs:
                raw.wait_ready()
                raw_ready = raw.ready
                turns = [
                    lambda: raw_runs.append(raw.request("run")),
                    lambda: engine_runs.append(engine.run()),
                    lambda: studio_jobs.append(studio.request("job")),
                ]
                for round_index in range(runs):
                    first = round_index % len(turns)
                    for turn in turns[first:] + turns[:first]:
                        turn()
            if queue_jobs:
                result["queue"] = studio.request(f"queue {queue_jobs}")
    if runs:
        result["overhead"] = overhead_result(
            {**_summary(raw_runs), "ready": raw_ready},
            _summary(engine_runs),
            studio_summary(studio_jobs),
            config=config,
            workload=workload,
        )
        result["overhead"]["paths_together"] = together
    return result


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
            # Of which the worker's pick-up: the row's enqueued_at to started_at
            # (the job's ``queue_wait``), Redis BLPOP wake-up and job claim.
            "pick_up": median(job["queue_wait"] for job in jobs),
            "job_before_and_after_engine": median(
                job["job"] - job["engine"] for job in jobs
            ),
            "score": median(job["score"] for job in jobs),
            "store_and_row_update": median(
                job["in_worker"] - job["job"] for job in jobs
            ),
            # Parts of the above, each paired per job (the medians of parts
            # need not add up to the median of the whole).
            "enqueue": median(job.get("enqueue", 0.0) for job in jobs),
            "hand_over": median(job.get("hand_over", 0.0) for job in jobs),
            "after_finish": median(job.get("after_finish", 0.0) for job in jobs),
            "encode": median(job.get("encode", 0.0) for job in jobs),
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
        "engine_ratio_min": engine["min"] / raw["min"],
        "studio_ratio_min": studio["min"] / raw["min"],
        "max_spread": max(raw["spread"], engine["spread"], studio["spread"]),
        "spread_limit": SPREAD_LIMIT,
        "judgeable": judgeable([raw["spread"], engine["spread"], studio["spread"]]),
        "engine_overhead_ms": 1000 * (engine["median"] - floor),
        "studio_overhead_ms": 1000 * (studio["median"] - floor),
        # Everything the studio adds to an engine call, and its two parts: what
        # the worker's engine call took beyond this process's (the job's
        # per-step progress and cancellation checks), and what lies outside the
        # call (paired per job: wall clock minus that job's own engine time).
        "beyond_engine_ms": 1000 * (studio["median"] - engine["median"]),
        "inside_engine_call_ms": 1000 * (studio["engine_median"] - engine["median"]),
        "outside_engine_call_ms": 1000 * studio["beyond_engine_median"],
        "same_image": raw["pixels_sha256"]
        == engine["pixels_sha256"]
        == studio["pixels_sha256"],
    }


def _start_raw(
    config: EngineConfig,
    workload: Workload,
    workdir: Path,
    speed: SpeedOptions,
    warmup: int,
) -> LineProcess:
    """Raw diffusers in a bare process (``python -I``: not even this package is
    importable there), loaded and warmed up."""
    (spec,) = config.models.values()
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path = workdir / "raw-spec.json"
    spec_path.write_text(
        json.dumps(
            {
                "pipeline": spec.source,
                "pipeline_class": family(spec.family or "sd15").pipeline_class_name(
                    Method.TEXT
                ),
                "device": config.device,
                "dtype": config.dtype,
                **workload.as_dict(),
                "warmup_runs": warmup,
                "channels_last": speed.channels_last,
                "compile": speed.compile,
                "compile_backend": speed.compile_backend,
            }
        )
    )
    return LineProcess(
        [sys.executable, "-I", str(RAW_SCRIPT), str(spec_path)],
        env=dict(os.environ),
        cwd=workdir,
        log_path=workdir / "raw.log",
    )


class _EngineRunner:
    """``Engine.generate`` on a warm registry in this process."""

    def __init__(
        self,
        config: EngineConfig,
        workload: Workload,
        speed: SpeedOptions,
        warmup: int,
    ) -> None:
        config = replace(
            config,
            channels_last=speed.channels_last,
            compile=speed.compile,
            compile_backend=speed.compile_backend,
        )
        self.engine = Engine(config)
        (model_key,) = config.models
        self.engine.registry.preload([model_key])
        self.request = workload.request(model_key)
        for _ in range(warmup):
            self.engine.generate(self.request)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        result = self.engine.generate(self.request)
        return {
            "seconds": time.perf_counter() - started,
            "pixels_sha256": pixels_sha256(result.images[0]),
        }

    def close(self) -> None:
        """Drop the engine and its models, freeing the device for the next path."""
        del self.engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, spread and pixel hash of one path's runs."""
    return {
        **summary([run["seconds"] for run in runs]),
        "pixels_sha256": runs[0]["pixels_sha256"],
    }
