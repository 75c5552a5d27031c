"""Iterations per second on a GPU: the studio against raw diffusers.

For each of the engine's speed options (SDPA alone, which is diffusers' default
attention on torch 2; with channels-last; with ``torch.compile``; with both), raw
diffusers in a bare process, the engine and the full studio path (a sandboxed
worker started with the same option) run the preset's workload in turns
(``overhead.measure_paths``); iterations per second are denoising steps over the
seconds of a whole image (text encoding and VAE decode included, for all paths
alike). Without CUDA the section is skipped and says so.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from benchmarks.overhead import measure_paths
from benchmarks.studio_sandbox import StudioSandbox
from benchmarks.workload import SpeedOptions, Workload
from generation.engine.config import EngineConfig

SPEED_OPTIONS = (
    SpeedOptions(),
    SpeedOptions(channels_last=True),
    SpeedOptions(compile=True),
    SpeedOptions(channels_last=True, compile=True),
)


def measure_gpu(
    config: EngineConfig,
    workload: Workload,
    sandbox: StudioSandbox,
    *,
    workdir: Path,
    runs: int,
    together: bool = True,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Raw and studio it/s for every speed option, or why it was skipped
    (``together``: as ``overhead.measure_paths`` takes it).

    ``dry_run`` runs every path and option on whatever device this is, once,
    with ``torch.compile``'s eager backend (Dynamo's tracing, no code
    generation): it checks that the script runs, before a GPU is lent; its
    figures say nothing about a GPU.
    """
    if not dry_run and not str(config.device).startswith("cuda"):
        return {"skipped": f"no CUDA device (the device is {config.device})"}
    speeds = SPEED_OPTIONS
    if dry_run:
        speeds = tuple(replace(s, compile_backend="eager") for s in speeds)
        runs = 1
    rows = []
    for speed in speeds:
        overhead = measure_paths(
            config,
            workload,
            sandbox,
            workdir=workdir,
            runs=runs,
            speed=speed,
            together=together,
        )["overhead"]
        rows.append(
            {
                "options": speed.label,
                "raw_it_per_s": workload.steps / overhead["raw"]["median"],
                "engine_it_per_s": workload.steps / overhead["engine"]["median"],
                "studio_it_per_s": workload.steps / overhead["studio"]["median"],
                "studio_ratio": overhead["studio_ratio"],
                "same_image": overhead["same_image"],
            }
        )
    return {
        "device": config.device,
        "dtype": config.dtype,
        "dry_run": dry_run,
        "rows": rows,
    }
