"""One benchmark run: a preset's model written, the chosen sections measured on
one machine, the targets checked, all gathered in one JSON-ready report.

The sections, in the order they run: ``registry`` (in a fresh process),
``overhead`` (raw diffusers in a bare process, the engine here and the studio in
a sandbox, in turns), ``queue`` (the same sandboxed worker, many tiny jobs),
``growth`` (the engine here) and ``gpu`` (the overhead's three paths per speed
option; CUDA only).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.gpu import measure_gpu
from benchmarks.growth import measure_growth
from benchmarks.overhead import measure_paths
from benchmarks.presets import ALL_SECTIONS, Preset
from benchmarks.registry_economics import measure_registry
from benchmarks.report import machine_info
from benchmarks.studio_sandbox import StudioSandbox
from benchmarks.targets import evaluate_targets
from benchmarks.throughput import queue_result
from benchmarks.workload import Workload
from generation.engine.families import family
from generation.engine.registry import choose_device, choose_dtype

SECTIONS = ALL_SECTIONS
# The queue's tiny jobs: one step at the smallest size, so that everything
# around the engine shows.
QUEUE_WORKLOAD = Workload(steps=1, width=64, height=64)


@dataclass(frozen=True)
class BenchOptions:
    """What to run: the sections, timed runs per measurement (None: the
    preset's), queue jobs (None: the preset's), the device (None: chosen as the
    engine does) and the working folder (models and sandbox)."""

    sections: Collection[str]
    workdir: Path
    runs: int | None = None
    queue_jobs: int | None = None
    device: str | None = None
    gpu_dry_run: bool = False


def run_bench(
    preset: Preset, options: BenchOptions, *, log: Callable[[str], None]
) -> dict[str, Any]:
    """Run the selected sections of ``preset``; the report (see ``report``)."""
    unknown = set(options.sections) - set(SECTIONS)
    if unknown:
        raise ValueError(
            f"Unknown sections {', '.join(sorted(unknown))}; choose from "
            f"{', '.join(SECTIONS)}."
        )
    runs = options.runs or preset.runs
    queue_jobs = preset.queue_jobs if options.queue_jobs is None else options.queue_jobs
    device = choose_device(options.device)
    model_root = options.workdir / preset.name / "model"
    report: dict[str, Any] = {
        "preset": preset.name,
        "summary": preset.summary,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "device": str(device),
        "dtype": str(choose_dtype(None, device, family(preset.family))).removeprefix(
            "torch."
        ),
        "runs": runs,
    }
    log(f"Writing the {preset.name} model under {model_root}")
    config = preset.write_model(model_root)
    config.device, config.dtype = report["device"], report["dtype"]
    workload = Workload(
        steps=preset.steps,
        width=preset.width,
        height=preset.height,
        guidance_scale=preset.guidance_scale,
    )
    sandbox_root = options.workdir / preset.name / "studio"
    raw_workdir = options.workdir / preset.name / "raw"

    if "registry" in options.sections:
        log("registry: cold load, hit, derivation, memory (fresh process)")
        report["registry"] = measure_registry(
            model_root, device=report["device"], runs=runs
        )
    overhead_runs = runs if "overhead" in options.sections else 0
    queue_jobs = queue_jobs if "queue" in options.sections else 0
    if overhead_runs or queue_jobs:
        log(
            f"overhead: {overhead_runs} rounds of raw diffusers, engine and studio; "
            f"queue: {queue_jobs} tiny jobs"
        )
        measured = measure_paths(
            config,
            workload,
            StudioSandbox(sandbox_root, config, report["device"], report["dtype"]),
            workdir=raw_workdir,
            runs=overhead_runs,
            queue_workload=QUEUE_WORKLOAD,
            queue_jobs=queue_jobs,
            together=preset.paths_together,
        )
        if measured["overhead"]:
            report["overhead"] = measured["overhead"]
        if measured["queue"]:
            report["queue"] = queue_result(measured["queue"])
    if "growth" in options.sections:
        log("growth: strength, steps, size, images, ControlNets, IP-Adapter")
        # Half the runs per point: the series have many points.
        report["growth"] = measure_growth(
            preset, config, workload, runs=(runs + 1) // 2
        )
    if "gpu" in options.sections:
        log("gpu: raw diffusers and studio it/s per speed option")
        report["gpu"] = measure_gpu(
            config,
            workload,
            StudioSandbox(sandbox_root, config, report["device"], report["dtype"]),
            workdir=raw_workdir,
            runs=runs,
            together=preset.paths_together,
            dry_run=options.gpu_dry_run,
        )
    report["targets"] = evaluate_targets(report)
    # Other work on the machine skews timings: say how busy it was at the end too.
    report["machine"]["load_average_end"] = [round(load, 2) for load in os.getloadavg()]
    return report
