"""CPU offload, model by model and layer by layer, run for real on this CPU.

The registry offloads only on CUDA (``PipelineRegistry.OFFLOAD_DEVICE_TYPES``):
on the CPU it would save nothing. A registry class that also offloads on the
CPU runs diffusers' own ``enable_model_cpu_offload`` and
``enable_sequential_cpu_offload`` here, with accelerate's real hooks, so that
what a GPU worker gets is checked without a GPU: after setup every module a
job uses (text encoders, denoiser, VAE, and the IP-Adapter image encoder that
a job adds) carries an offload hook, and the images are those of a registry
that does not offload (model offload; a job cannot run with sequential offload
on the CPU, see ``SEQUENTIAL_ON_THE_CPU``). The memory it saves is a GPU's and
is not measured here (docs/models.md gives the figures).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from accelerate.hooks import AlignDevicesHook, CpuOffload

from generation.engine.config import EngineConfig, tiny_engine_config
from generation.engine.registry import PipelineRegistry
from generation.engine.requests import (
    GenerationRequest,
    IPAdapterInput,
    Method,
    ReferenceInput,
    ReferenceRole,
)
from generation.engine.runner import Engine
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
)
from tests.engine.test_reproducibility import assert_same_pixels, noise_image

OFFLOADS = {
    "model": ("cpu_offload", CpuOffload),
    "sequential": ("sequential_cpu_offload", AlignDevicesHook),
}
JOBS = [
    # (model, method, the modules its pipeline must have hooked)
    (TINY_MODEL_KEY, Method.TEXT, {"text_encoder", "unet", "vae"}),
    (
        TINY_FLUX_MODEL_KEY,
        Method.REFERENCE_EDIT,
        {"text_encoder", "text_encoder_2", "transformer", "vae"},
    ),
    (
        TINY_QWEN_IMAGE_MODEL_KEY,
        Method.REFERENCE_EDIT,
        {"text_encoder", "transformer", "vae"},
    ),
]


class CpuOffloadingRegistry(PipelineRegistry):
    """Offloads on the CPU too (the offload hooks are the same on a GPU)."""

    OFFLOAD_DEVICE_TYPES = frozenset({"cuda", "cpu"})


def offloading_config(root: Path, offload: str) -> EngineConfig:
    config = tiny_engine_config(root)
    setattr(config, OFFLOADS[offload][0], True)
    return config


def offloading_registry(root: Path, offload: str) -> CpuOffloadingRegistry:
    return CpuOffloadingRegistry(offloading_config(root, offload))


def hooked(pipe: Any) -> dict[str, type]:
    """Each module of the pipeline with the kind of offload hook it carries."""
    return {
        name: type(_hook_of(module))
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module) and _hook_of(module) is not None
    }


def _hook_of(module: torch.nn.Module) -> Any:
    hook = getattr(module, "_hf_hook", None)
    # accelerate chains hooks (SequentialHook) when several are added.
    return next((h for h in getattr(hook, "hooks", (hook,)) if h is not None), None)


@pytest.mark.parametrize("offload", list(OFFLOADS))
@pytest.mark.parametrize(("model", "method", "modules"), JOBS)
def test_every_module_a_job_uses_is_hooked_for_offload(
    tiny_model_root: Path, offload: str, model: str, method: Method, modules: set
):
    registry = offloading_registry(tiny_model_root, offload)
    assert registry.stats()["footprint"][OFFLOADS[offload][0]] is True
    pipe, _ = registry.pipeline(model, method)
    hook_kind = OFFLOADS[offload][1]
    found = hooked(pipe)
    assert set(found) >= modules, found
    assert all(issubclass(kind, hook_kind) for kind in found.values()), found
    # The same pipeline from a registry that does not offload has no hook.
    plain, _ = PipelineRegistry(tiny_engine_config(tiny_model_root)).pipeline(
        model, method
    )
    assert hooked(plain) == {}


@pytest.mark.parametrize("offload", list(OFFLOADS))
def test_the_ip_adapter_image_encoder_a_job_adds_is_hooked_too(
    tiny_model_root: Path, offload: str
):
    registry = offloading_registry(tiny_model_root, offload)
    pipe, _ = registry.pipeline(TINY_MODEL_KEY, Method.TEXT)
    with registry.job_state(pipe, ip_adapter=IPAdapterInput(face_crop=False)):
        found = hooked(pipe)
        assert {"image_encoder", "text_encoder", "unet", "vae"} <= set(found), found
    assert pipe.image_encoder is None


def _face_request() -> GenerationRequest:
    return GenerationRequest(
        model=TINY_MODEL_KEY,
        prompt="a portrait",
        method=Method.IP_ADAPTER,
        seed=5,
        steps=2,
        width=64,
        height=64,
        references=[ReferenceInput(noise_image(3, 64, 64), role=ReferenceRole.FACE)],
        ip_adapter=IPAdapterInput(face_crop=False),
    )


def _qwen_request() -> GenerationRequest:
    return GenerationRequest(
        model=TINY_QWEN_IMAGE_MODEL_KEY,
        prompt="a portrait",
        method=Method.TEXT,
        negative_prompt="blurry",
        seed=5,
        steps=2,
        width=64,
        height=64,
    )


SEQUENTIAL_ON_THE_CPU = pytest.mark.xfail(
    raises=TypeError,
    strict=True,
    reason="diffusers names the execution device cpu:0, and accelerate's "
    "layer hooks then fail to put a weight back on the meta device after its "
    "layer ran (set_module_tensor_to_device: Parameter(...) of a plain tensor; "
    "a bare torch.nn.Linear fails so on cpu:0 and runs on cpu). Whether a GPU "
    "job runs is not checked here: the hooks above are.",
)


@pytest.mark.parametrize(
    "offload",
    ["model", pytest.param("sequential", marks=SEQUENTIAL_ON_THE_CPU)],
)
@pytest.mark.parametrize("request_of", [_face_request, _qwen_request])
def test_an_offloaded_job_gives_the_pixels_of_one_that_is_not(
    tiny_model_root: Path, offload: str, request_of: Any
):
    plain = Engine(tiny_engine_config(tiny_model_root)).generate(request_of())
    config = offloading_config(tiny_model_root, offload)
    offloaded = Engine(config, CpuOffloadingRegistry(config)).generate(request_of())
    assert_same_pixels(offloaded.images, plain.images)
    assert np.asarray(plain.images[0]).std() > 0
