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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from statistics import median
from typing import Any

from PIL import Image

from generation.bench.presets import Preset
from generation.bench.stats import line_fit
from generation.bench.workload import Workload
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

    def series(
        values: Sequence[Any], make: Callable[[Any], GenerationRequest]
    ) -> list[dict[str, Any]]:
        return [
            {"value": value, **_point(engine, make(value), runs)} for value in values
        ]

    img2img = replace(base, method=Method.IMG2IMG, references=[reference])
    result = {
        "strength": series(preset.strengths, lambda s: replace(img2img, strength=s)),
        "strength_ddim": series(
            preset.strengths,
            lambda s: replace(img2img, strength=s, scheduler=EXACT_STEPS_SCHEDULER),
        ),
        "steps": series(preset.step_counts, lambda n: replace(base, steps=n)),
        "size": series(
            preset.sizes, lambda side: replace(base, width=side, height=side)
        ),
        "images": series(preset.image_counts, lambda n: replace(base, num_images=n)),
        "controlnets": series(
            [n for n in preset.controlnet_counts if n <= len(control_types)],
            lambda n: _with_controlnets(base, reference, control_types[:n]),
        ),
        "ip_adapter": series(
            [False, True],
            lambda on: replace(
                base,
                method=Method.IP_ADAPTER if on else Method.TEXT,
                references=[reference] if on else [],
                ip_adapter=IPAdapterInput(face_crop=False) if on else None,
            ),
        ),
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


def _point(engine: Engine, request: GenerationRequest, runs: int) -> dict[str, Any]:
    seconds, denoise, steps = [], [], 0
    for _ in range(runs):
        clock = _StepClock([])
        started = time.perf_counter()
        engine.generate(request, on_step=clock)
        seconds.append(time.perf_counter() - started)
        denoise.append(clock.denoise_seconds())
        steps = len(clock.stamps)
    return {
        "median": median(seconds),
        "denoise_median": median(denoise),
        "steps_run": steps,
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
