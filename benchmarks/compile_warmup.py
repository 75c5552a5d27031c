"""The first job after a worker boots against a warm one, with ``torch.compile``.

In one fresh process, on the tiny model (written to a temporary folder): the
boot a worker does (``preload`` then ``warmup``, which compiles the UNet for the
size in use, with its blank LoRA; with the IP-Adapter too unless
``--no-ip-adapter``), then jobs in turn with two different LoRAs and none (and,
with the IP-Adapter, IP-Adapter scales), the first of which is the first job
after boot. Reports the boot's seconds, the first job's and the warm jobs'
median, their ratio (target 1.1), and the graphs Dynamo compiled during the
jobs (0: nothing recompiled when only adapters changed).

Run from the repository root: ``python -m benchmarks.compile_warmup [--runs N]
[--backend inductor|eager] [--no-ip-adapter] [--device D]``. It prints a
Markdown block for BENCHMARKS.md. Outside the product's import graph.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

SIZE = 64
STEPS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6, help="warm jobs")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--no-ip-adapter", action="store_true")
    parser.add_argument("--device", default=None)
    options = parser.parse_args()

    import numpy as np
    import safetensors.torch
    import torch
    from PIL import Image
    from torch._dynamo.utils import counters

    from benchmarks.report import machine_info
    from generation.engine.config import tiny_engine_config
    from generation.engine.requests import (
        GenerationRequest,
        IPAdapterInput,
        LoraInput,
        Method,
        ReferenceInput,
    )
    from generation.engine.runner import Engine
    from generation.engine.tiny_model import write_tiny_model

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        root = write_tiny_model(Path(folder))
        config = tiny_engine_config(root)
        config.device = options.device
        config.compile = True
        config.compile_backend = options.backend
        config.compile_sizes = ((SIZE, SIZE),)
        config.compile_lora_rank = 8
        if options.no_ip_adapter:
            config.ip_adapter = None
        weights = (root / "lora" / "persona.safetensors").read_bytes()
        other = {
            key: -value if key.endswith("lora_up.weight") else value
            for key, value in safetensors.torch.load(weights).items()
        }
        # Every job has a LoRA, so that the first job and the warm ones do the
        # same work (tests/engine/test_compile.py covers jobs without one).
        loras = [
            LoraInput(weights=weights, scale=0.9, name="persona"),
            LoraInput(weights=safetensors.torch.save(other), scale=0.5, name="other"),
        ]
        scales = [None] if options.no_ip_adapter else [0.6, None, 0.3]
        pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
        reference = ReferenceInput(Image.fromarray(pixels), primary=True)

        def job(index: int) -> float:
            scale = scales[index % len(scales)]
            request = GenerationRequest(
                model="tiny-sd15",
                prompt="a persona",
                method=Method.TEXT,
                steps=STEPS,
                width=SIZE,
                height=SIZE,
                seed=index,
                references=[reference],
                lora=loras[index % len(loras)],
                ip_adapter=None if scale is None else IPAdapterInput(scale=scale),
            )
            started = time.perf_counter()
            result = engine.generate(request)
            seconds = time.perf_counter() - started
            timings.append(result.timings)
            return seconds

        timings = []
        started = time.perf_counter()
        engine = Engine(config)
        engine.registry.preload(["tiny-sd15"])
        engine.registry.warmup("tiny-sd15")
        boot = time.perf_counter() - started
        graphs = counters["stats"]["unique_graphs"]
        first = job(0)
        warm = [job(index) for index in range(1, options.runs + 1)]
        recompiled = counters["stats"]["unique_graphs"] - graphs
    machine = machine_info()
    median = statistics.median(warm)
    adapters = "LoRA (two, in turn)" + (
        "" if options.no_ip_adapter else " and IP-Adapter (scales 0.6, 0.3, off)"
    )
    print(
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, GPU: {machine['gpu'] or 'none'}; torch "
        f"{machine['torch']}, diffusers {machine['diffusers']}; load average at "
        f"the end {'/'.join(map(str, machine['load_average']))}\n"
        f"- Tiny SD 1.5 model, {options.device or 'cpu'}, text {SIZE}x{SIZE}, "
        f"{STEPS} steps, backend {options.backend}; jobs change {adapters}\n"
        f"- Boot (preload + warm-up compile): {boot:.1f} s, "
        f"{graphs} graphs compiled\n"
        f"- First job after boot: {first * 1000:.0f} ms; warm jobs: median "
        f"{median * 1000:.0f} ms, min {min(warm) * 1000:.0f} ms "
        f"(n={len(warm)}); first / warm median: **{first / median:.2f}x**\n"
        f"- Graphs compiled during the jobs: **{recompiled}**\n"
        f"- Engine phases (load / preprocess / inference), first job: "
        f"{_phases(timings[0])}; warm jobs, medians: "
        f"{_phases(*timings[1:])}"
    )


def _phases(*timings) -> str:
    return " / ".join(
        f"{statistics.median(getattr(t, name) for t in timings) * 1000:.0f} ms"
        for name in ("load", "preprocess", "inference")
    )


if __name__ == "__main__":
    main()
