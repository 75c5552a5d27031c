"""What the live preview costs a run: the same generation without a preview and
with each preview method, in interleaved turns, in one process.

Each mode runs ``Engine.generate`` with an ``on_preview`` that encodes the
preview as the worker does (JPEG, ``generation.previews``' quality) and keeps
it, so the decode, the throttle and the encoding are all counted (the Redis
write, a few hundred bytes on a local socket, is left out). Modes:

- ``off``: no ``on_preview`` (the engine makes nothing);
- ``approx, every step``: the family's linear map after every step, no interval
  (the worst case);
- ``approx, default``: the default throttle (every 2 steps, at most every
  500 ms);
- ``tiny autoencoder, every step`` and ``default``: an ``AutoencoderTiny`` of
  TAESD's own size (random weights: the real arithmetic) instead of the map.

Run from the repository root:
``python -m benchmarks.live_preview [--preset tiny|small] [--runs N] [--steps S]``.
It prints the Markdown section of BENCHMARKS.md ("Live preview"). Outside the
product's import graph.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

JPEG_QUALITY = 80  # generation.previews.PREVIEW_JPEG_QUALITY (Django-side module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=("tiny", "small"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--decode-only",
        action="store_true",
        help="only the per-preview cost at real latent sizes (no generation)",
    )
    options = parser.parse_args()
    if options.decode_only:
        print("\n".join(per_preview_costs(threads=options.threads)))
        return

    import torch
    from diffusers import AutoencoderTiny

    from benchmarks.presets import PRESETS
    from benchmarks.stats import summary
    from generation.engine.config import PreviewConfig
    from generation.engine.registry import PipelineRegistry
    from generation.engine.requests import GenerationRequest, Method
    from generation.engine.runner import Engine
    from generation.engine.vocabulary import PreviewMethod

    torch.set_num_threads(options.threads)
    preset = PRESETS[options.preset]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        taesd = root / "taesd"
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(taesd)  # TAESD's default sizes
        config = preset.write_model(root / "model")
        modes = {
            "off": None,
            "approx, every step": PreviewConfig(every_steps=1, min_interval_seconds=0),
            "approx, default": PreviewConfig(),
            "tiny autoencoder, every step": PreviewConfig(
                method=PreviewMethod.TINY_AUTOENCODER,
                every_steps=1,
                min_interval_seconds=0,
                tiny_autoencoders={"sd15": str(taesd)},
            ),
            "tiny autoencoder, default": PreviewConfig(
                method=PreviewMethod.TINY_AUTOENCODER,
                tiny_autoencoders={"sd15": str(taesd)},
            ),
        }
        # One registry (the model loaded once), one engine per mode.
        registry = PipelineRegistry(config)
        engines = {
            name: Engine(
                replace(
                    config, preview=preview or PreviewConfig(method=PreviewMethod.OFF)
                ),
                registry=registry,
            )
            for name, preview in modes.items()
        }
        request = GenerationRequest(
            model=preset.model_key,
            prompt="a portrait",
            method=Method.TEXT,
            steps=options.steps,
            width=preset.width,
            height=preset.height,
            seed=1,
        )
        timings: dict[str, list[float]] = {name: [] for name in modes}
        previews: dict[str, int] = {}
        for name, engine in engines.items():  # warm-up: load, first calls
            engine.generate(request, on_preview=_keeper([]) if modes[name] else None)
        for _ in range(options.runs):
            for name, engine in engines.items():
                kept: list[bytes] = []
                started = time.perf_counter()
                engine.generate(
                    request, on_preview=_keeper(kept) if modes[name] else None
                )
                timings[name].append(time.perf_counter() - started)
                previews[name] = len(kept)
    load_after = os.getloadavg()

    base = summary(timings["off"])["median"]
    lines = [
        "### Latest",
        "",
        f"- Date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        "- Command: `python -m benchmarks.live_preview "
        f"--preset {options.preset} --runs {options.runs} --steps {options.steps} "
        f"--threads {options.threads}`",
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, "
        f"{options.threads} torch threads, cpu; load average at start "
        f"{'/'.join(f'{value:.2f}' for value in load_before)}, at the end "
        f"{'/'.join(f'{value:.2f}' for value in load_after)}",
        f"- Run: preset `{preset.name}` ({preset.summary}), text method, "
        f"{options.steps} steps, medians of {options.runs} interleaved runs",
        "",
        "| mode | previews per run | median s | spread | vs off |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, seconds in timings.items():
        stats = summary(seconds)
        ratio = stats["median"] / base - 1
        lines.append(
            f"| {name} | {previews.get(name, 0)} | {stats['median']:.3f} | "
            f"{stats['spread']:.0%} | {ratio:+.1%} |"
        )
    print("\n".join(lines))
    print()
    print(
        "Minimum-of-runs ratios (less sensitive to a noisy neighbour): "
        + ", ".join(
            f"{name} {min(seconds) / min(timings['off']) - 1:+.1%}"
            for name, seconds in timings.items()
            if name != "off"
        )
    )


def per_preview_costs(*, threads: int, repeats: int = 30) -> list[str]:
    """The cost of one preview (decode and JPEG encode) at the latent sizes of
    real models, medians of ``repeats``: what a job pays per preview."""
    import torch
    from diffusers import AutoencoderTiny

    from benchmarks.stats import summary
    from generation.engine.config import PreviewConfig
    from generation.engine.families import SD15, SDXL
    from generation.engine.preview import PreviewDecoder
    from generation.engine.vocabulary import PreviewMethod

    torch.set_num_threads(threads)
    lines = [
        f"- Date: {datetime.now(UTC).isoformat(timespec='seconds')}",
        f"- Command: `python -m benchmarks.live_preview --decode-only "
        f"--threads {threads}`",
        f"- Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, torch {torch.__version__}, {threads} torch "
        f"threads, cpu; load average {'/'.join(f'{v:.2f}' for v in os.getloadavg())}",
        "",
        "| family, output size | method | ms per preview (decode + JPEG) | spread |",
        "| --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        AutoencoderTiny().save_pretrained(folder)  # TAESD's default sizes
        decoders = {
            "approx": PreviewDecoder(
                PreviewConfig(), device=torch.device("cpu"), dtype=torch.float32
            ),
            "tiny autoencoder": PreviewDecoder(
                PreviewConfig(
                    method=PreviewMethod.TINY_AUTOENCODER,
                    tiny_autoencoders={"sd15": folder, "sdxl": folder},
                ),
                device=torch.device("cpu"),
                dtype=torch.float32,
            ),
        }
        keep = _keeper([])
        for family_row, side in ((SD15, 512), (SDXL, 1024)):
            latents = torch.randn(1, 4, side // 8, side // 8)
            for method, decoder in decoders.items():
                seconds = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    keep(1, 2, decoder.decode(latents, family_row))
                    seconds.append(time.perf_counter() - started)
                stats = summary(seconds)
                lines.append(
                    f"| {family_row.label}, {side}x{side} | {method} | "
                    f"{stats['median'] * 1000:.2f} | {stats['spread']:.0%} |"
                )
    return lines


def _keeper(kept: list[bytes]):
    """An ``on_preview`` that encodes each preview as the worker does."""

    def keep(step: int, total: int, image) -> None:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, "JPEG", quality=JPEG_QUALITY)
        kept.append(buffer.getvalue())

    return keep


if __name__ == "__main__":
    main()
