"""How a job's cost grows with the work asked: measured on the engine, warm.

Each series varies one thing and keeps the rest of the preset's workload: img2img
strength, steps, image size, images per job, number of ControlNets (ready-made
control images, so no preprocessor runs), and the IP-Adapter on or off. A point
is the median of several runs of ``Engine.generate``, with the denoising steps
the pipeline really ran and the time they took (from the per-step callback).

img2img runs ``strength x steps`` denoising steps, so its denoising time should be
proportional to the strength; the text encoding and the VAE's encode and decode
are a fixed cost that does not shrink with it. ``strength_proportionality`` checks
the first and reports the second. The strength series runs twice: with the
model's own scheduler (SD 1.5's PNDM, whose PLMS start adds one step to every
run, ``int(strength x steps) + 1``) and with DDIM, which runs exactly
``int(strength x steps)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

from PIL import Image

from benchmarks.presets import Preset
from benchmarks.stats import line_fit
from benchmarks.workload import Workload
from generation.engine.config import EngineConfig
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    Method,
    ReferenceInput,
)
from generation.engine.runner import Engine

PROPORTIONALITY_TOLERANCE = 0.10
# A scheduler that runs exactly ``int(strength x steps)`` img2img steps.
EXACT_STEPS_SCHEDULER = "DDIMScheduler"


@dataclass
class _StepClock:
    """Times the denoising steps of one call through the engine's callback."""

    stamps: list[float]

    def __call__(self, step: int, total: int) -> None:
        self.stamps.append(time.perf_counter())

    def denoise_seconds(self) -> float:
        """Steps run times the median gap between step ends (the first step's
        start is not observable)."""
        gaps = [b - a for a, b in zip(self.stamps, self.stamps[1:], strict=False)]
        return len(self.stamps) * median(gaps) if gaps else 0.0


def measure_growth(
    preset: Preset, config: EngineConfig, workload: Workload, *, runs: int
) -> dict[str, Any]:
    """Every growth series of the preset (see the module docstring)."""
    engine = Engine(config)
    (model_key,) = config.models
    base = workload.request(model_key)
    reference = _reference(workload.width, workload.height)
    control_types = sorted(config.controlnets)
    engine.registry.preload([model_key])
    engine.generate(base)  # warm-up

    img2img = replace(base, method=Method.IMG2IMG, references=[reference])
    plans: dict[str, list[tuple[Any, GenerationRequest]]] = {
        "strength": [(s, replace(img2img, strength=s)) for s in preset.strengths],
        "strength_ddim": [
            (s, replace(img2img, strength=s, scheduler=EXACT_STEPS_SCHEDULER))
            for s in preset.strengths
        ],
        "steps": [(n, replace(base, steps=n)) for n in preset.step_counts],
        "size": [
            (side, replace(base, width=side, height=side)) for side in preset.sizes
        ],
        "images": [(n, replace(base, num_images=n)) for n in preset.image_counts],
        "controlnets": [
            (n, _with_controlnets(base, reference, control_types[:n]))
            for n in preset.controlnet_counts
            if n <= len(control_types)
        ],
        "ip_adapter": [
            (False, base),
            (
                True,
                replace(
                    base,
                    method=Method.IP_ADAPTER,
                    references=[reference],
                    ip_adapter=IPAdapterInput(face_crop=False),
                ),
            ),
        ],
    }
    samples: dict[str, list[list[_Sample]]] = {
        name: [[] for _ in points] for name, points in plans.items()
    }
    # Rounds over every point: other work on the machine then spreads over all
    # the points instead of distorting a few neighbouring ones.
    for _ in range(runs):
        for name, points in plans.items():
            for index, (_, request) in enumerate(points):
                samples[name][index].append(_sample(engine, request))
    result = {
        name: [
            {"value": value, **_point(samples[name][index])}
            for index, (value, _) in enumerate(points)
        ]
        for name, points in plans.items()
    }
    # Cost per unit of each series: seconds per step, per image, per ControlNet,
    # per megapixel.
    fits = {
        name: line_fit(
            [to_x(point["value"]) for point in result[name]],
            [point["median"] for point in result[name]],
        )
        for name, to_x in (
            ("steps", float),
            ("images", float),
            ("controlnets", float),
            ("size", lambda side: side * side / 1e6),
        )
    }
    return {
        **result,
        "fits": fits,
        "strength_proportionality": {
            "model_scheduler": strength_proportionality(result["strength"]),
            "ddim": strength_proportionality(result["strength_ddim"]),
        },
    }


def strength_proportionality(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether img2img's denoising time is proportional to its strength.

    Each point's denoising time is compared with ``strength x`` that of the
    full-strength point; the largest relative deviation must stay within 10%.
    The total time's straight-line fit gives the fixed cost (text encoding, VAE
    encode and decode), which does not scale with the strength.
    """
    full = max(points, key=lambda point: point["value"])
    deviations = {
        point["value"]: point["denoise_median"]
        / (point["value"] / full["value"] * full["denoise_median"])
        - 1.0
        for point in points
    }
    fit = line_fit(
        [point["value"] for point in points], [point["median"] for point in points]
    )
    worst = max(abs(deviation) for deviation in deviations.values())
    return {
        "deviations": deviations,
        "max_deviation": worst,
        "within_tolerance": worst <= PROPORTIONALITY_TOLERANCE,
        "fixed_seconds": fit["intercept"],
        "seconds_per_unit_strength": fit["slope"],
        "total_r2": fit["r2"],
    }


@dataclass(frozen=True)
class _Sample:
    seconds: float
    denoise_seconds: float
    steps_run: int


def _sample(engine: Engine, request: GenerationRequest) -> _Sample:
    clock = _StepClock([])
    started = time.perf_counter()
    engine.generate(request, on_step=clock)
    return _Sample(
        time.perf_counter() - started, clock.denoise_seconds(), len(clock.stamps)
    )


def _point(samples: list[_Sample]) -> dict[str, Any]:
    return {
        "median": median(sample.seconds for sample in samples),
        "denoise_median": median(sample.denoise_seconds for sample in samples),
        "steps_run": samples[0].steps_run,
    }


def _with_controlnets(
    base: GenerationRequest, reference: ReferenceInput, control_types: list[str]
) -> GenerationRequest:
    """``base`` with one ControlNet unit per type, each with a ready-made control
    image; no ControlNet at all is the text method."""
    if not control_types:
        return base
    return replace(
        base,
        method=Method.CONTROLNET,
        references=[reference],
        control_units=[
            ControlUnitInput(
                control_type=ControlType(control_type), control_image=reference.image
            )
            for control_type in control_types
        ],
    )


def _reference(width: int, height: int) -> ReferenceInput:
    """A primary reference image made in memory."""
    image = Image.radial_gradient("L").convert("RGB").resize((width, height))
    return ReferenceInput(image=image, primary=True)
