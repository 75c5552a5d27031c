"""Benchmark of the pipeline registry: cold load, hit, derivation, memory.

    python -m benchmarks.registry [--sizes tiny sd15] [--repeat 5]

For each size it writes a random model (``tiny``: the built-in tiny model;
``sd15``: Stable Diffusion 1.5's full sizes, about 1.4 billion parameters with
one ControlNet, 5.3 GB on disk) into a temporary folder, then measures in a
fresh process, so that the resident memory (RSS) counts only what the registry
holds:

- cold load: the first ``pipeline(model, text)`` call (the files were just
  written, so they may still be in the OS page cache), and a ControlNet's first
  load; first read: reading every base weight once after it (``_read_weights``);
- hit: a later ``pipeline(model, text)`` call (derivation and a fresh scheduler);
- derivation: ``pipeline`` for img2img, controlnet and hybrid on a warm registry;
- memory: parameter bytes the registry counts, and RSS after the base alone, with
  the ControlNet, and with one live pipeline of every method.

Times are medians of ``--repeat`` calls, in milliseconds. Prints one JSON object
per size.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SD15_SIZES = {
    "unet": {
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "vae": {
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    "text_encoder": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "projection_dim": 768,
    },
    "controlnet_conditioning_channels": (16, 32, 96, 256),
}


def write_model(size: str, root: Path) -> float:
    """Write the model of ``size`` under ``root``; return the seconds it took."""
    from generation.engine.config import TINY_CONTROLNET_DIR, TINY_PIPELINE_DIR
    from generation.engine.tiny_model import (
        Architecture,
        random_controlnet,
        random_pipeline,
        write_tiny_model,
    )

    started = time.perf_counter()
    if size == "tiny":
        write_tiny_model(root)
    else:
        pipe = random_pipeline(Architecture(**SD15_SIZES))
        pipe.save_pretrained(root / TINY_PIPELINE_DIR)
        controlnet = random_controlnet(pipe.unet, Architecture(**SD15_SIZES), seed=1)
        controlnet.save_pretrained(root / TINY_CONTROLNET_DIR / "canny")
    return time.perf_counter() - started


def measure(root: Path, repeat: int) -> dict[str, Any]:
    """Measure the registry on the model under ``root`` (run in a fresh process)."""
    import psutil  # a dependency of accelerate
    import torch

    from generation.engine.config import TINY_MODEL_KEY, tiny_engine_config
    from generation.engine.registry import PipelineRegistry
    from generation.engine.requests import ControlType, Method

    process = psutil.Process()

    def rss_mb() -> float:
        gc.collect()
        return round(process.memory_info().rss / 2**20, 1)

    def record_memory(stage: str) -> None:
        """RSS, and on a GPU the memory allocated there (where the weights are)."""
        result[f"rss_mb_{stage}"] = rss_mb()
        if registry.device.type == "cuda":
            allocated = torch.cuda.memory_allocated(registry.device)
            result[f"cuda_mb_{stage}"] = round(allocated / 2**20, 1)
            peak = torch.cuda.max_memory_allocated(registry.device)
            result["cuda_peak_mb"] = round(peak / 2**20, 1)

    config = tiny_engine_config(root)
    config.controlnets = {"canny": str(root / "controlnet" / "canny")}
    registry = PipelineRegistry(config)
    canny = [ControlType.CANNY]
    result: dict[str, Any] = {
        "device": str(registry.device),
        "dtype": str(registry.dtype).removeprefix("torch."),
        "rss_mb_before_load": rss_mb(),
    }

    started = time.perf_counter()
    text, hit = registry.pipeline(TINY_MODEL_KEY, Method.TEXT)
    result["cold_load_ms"] = _ms(time.perf_counter() - started)
    assert hit is False
    result["first_read_ms"] = _ms(_read_weights(text.unet, text.vae, text.text_encoder))
    record_memory("base")
    result["base_parameter_mb"] = round(registry.stats()["total_bytes"] / 2**20, 1)

    started = time.perf_counter()
    controlnet = registry.controlnet(ControlType.CANNY)
    result["controlnet_cold_load_ms"] = _ms(time.perf_counter() - started)
    _read_weights(controlnet)
    record_memory("base_and_controlnet")

    result["hit_ms"] = _median_ms(
        lambda: registry.pipeline(TINY_MODEL_KEY, Method.TEXT), repeat
    )
    derived = {
        "img2img": lambda: registry.pipeline(TINY_MODEL_KEY, Method.IMG2IMG),
        "controlnet": lambda: registry.pipeline(
            TINY_MODEL_KEY, Method.CONTROLNET, canny
        ),
        "hybrid": lambda: registry.pipeline(TINY_MODEL_KEY, Method.HYBRID, canny),
    }
    for method, derive in derived.items():
        result[f"derive_{method}_ms"] = _median_ms(derive, repeat)
    live = [derive()[0] for derive in derived.values()]
    assert all(pipe.unet is text.unet and pipe.vae is text.vae for pipe in live)
    _read_weights(*(module for pipe in live for module in pipe.components.values()))
    record_memory("all_variants")
    result["registry_parameter_mb"] = round(registry.stats()["total_bytes"] / 2**20, 1)
    result["loads"] = registry.stats()["loads"]
    return result


def _read_weights(*modules: Any) -> float:
    """Read every parameter once; return the seconds it took.

    On the CPU, safetensors weights are memory-mapped: loading maps the files and
    the pages are read (and counted in RSS) on first use. Reading them all makes
    RSS honest and shows what the first job would otherwise pay.
    """
    import torch

    started = time.perf_counter()
    with torch.no_grad():
        for module in modules:
            if isinstance(module, torch.nn.Module):
                for parameter in module.parameters():
                    parameter.sum()
    return time.perf_counter() - started


def _median_ms(call: Callable[[], Any], repeat: int) -> float:
    timings = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return _ms(statistics.median(timings))


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["tiny", "sd15"])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeat)))
        return
    import torch

    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-{size}-") as folder:
            write_seconds = write_model(size, Path(folder))
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    __spec__.name,
                    "--measure",
                    folder,
                    "--repeat",
                    str(args.repeat),
                ],
                check=True,
                capture_output=True,
                text=True,
            )
            report = {
                "size": size,
                "torch_threads": torch.get_num_threads(),
                "write_s": round(write_seconds, 1),
                **json.loads(child.stdout.strip().splitlines()[-1]),
            }
            print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
