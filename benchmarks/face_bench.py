"""Face analysis timings on this CPU: dlib's HOG and CNN detection and the
embedding, per image, on the real photos the tests use.

Run from the repository root: ``python -m benchmarks.face_bench [--repeats N]``.
It prints a Markdown section for BENCHMARKS.md. Outside the product's import
graph: nothing in studio/, personas/ or generation/ imports it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from generation.engine.face import analyse_faces, detect_faces, embed_face
from generation.engine.face_models import cnn_detector, dlib_version, face_models


def _photos() -> dict[str, Image.Image]:
    from matplotlib import cbook
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())
    with Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as f:
        hopper = f.convert("RGB")
    noise = Image.fromarray(
        np.random.default_rng(7).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    )
    return {
        "astronaut 512x512": astronaut,
        "Grace Hopper 512x600": hopper,
        "astronaut 160x160": astronaut.resize((160, 160), Image.Resampling.LANCZOS),
        "astronaut 3000x3000": astronaut.resize((3000, 3000), Image.Resampling.BICUBIC),
        "noise 512x512 (no face)": noise,
    }


def _median_ms(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and minimum of ``repeats`` timed calls, after one warm-up."""
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times)


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(repeats: int) -> str:
    started = time.perf_counter()
    face_models()
    load_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    cnn_detector()
    cnn_load_ms = (time.perf_counter() - started) * 1000
    load_before = "/".join(f"{value:.2f}" for value in os.getloadavg())
    rows = []
    for name, image in _photos().items():
        for detector in ("hog", "cnn"):
            analysis = analyse_faces(image, detector=detector)
            detect_ms, detect_min = _median_ms(
                lambda image=image, detector=detector: detect_faces(
                    image, detector=detector
                ),
                repeats,
            )
            analyse_ms, analyse_min = _median_ms(
                lambda image=image, detector=detector: analyse_faces(
                    image, detector=detector
                ),
                repeats,
            )
            embed = "(no face)"
            if analysis.face_found:
                embed_ms, embed_min = _median_ms(
                    lambda image=image, face=analysis.persona_face: embed_face(
                        image, face
                    ),
                    repeats,
                )
                embed = f"{embed_ms:.0f} ({embed_min:.0f})"
            rows.append(
                f"| {name} | {detector} | {analysis.upsample} | "
                f"{analysis.scanned_size[0]}x{analysis.scanned_size[1]} | "
                f"{len(analysis.faces)} | {detect_ms:.0f} ({detect_min:.0f}) | "
                f"{embed} | {analyse_ms:.0f} ({analyse_min:.0f}) |"
            )
    load_after = "/".join(f"{value:.2f}" for value in os.getloadavg())
    return "\n".join(
        [
            "### Face analysis (dlib) per image, CPU",
            "",
            f"- Date: {datetime.now(UTC).isoformat(timespec='seconds')}",
            f"- Command: `python -m benchmarks.face_bench --repeats {repeats}`",
            f"- Machine: {_cpu()}, {os.cpu_count()} cores; dlib {dlib_version()} "
            f"(dlib-bin wheel); load average (1, 5, 15 min) at start "
            f"{load_before}, at the end {load_after}",
            f"- Model loading, once per process: HOG detector, 5-point landmarks "
            f"and recognition ResNet {load_ms:.0f} ms; CNN detector "
            f"{cnn_load_ms:.0f} ms",
            "",
            f"Medians (minimum) of {repeats} runs after a warm-up, in ms. "
            "*detect* is `detect_faces`; *analyse* is `analyse_faces` (detect, "
            "5-point landmarks, aligned 150x150 chip, 128-D embedding of the "
            "persona's face); *embed* is `embed_face` (the same without the "
            "detection). Default upsampling "
            "(as far as the scan bound: 1024 px for HOG, 512 for CNN).",
            "",
            "| image | detector | upsample | scanned | faces | detect ms | "
            "embed ms | analyse ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    arguments = parser.parse_args()
    if arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    print(run(arguments.repeats))


if __name__ == "__main__":
    main()
