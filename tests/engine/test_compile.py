"""A compiled UNet on the tiny SD 1.5 model: the warm-up compiles every state a
job needs, and jobs that change only their LoRA and IP-Adapter then compile
nothing (registry.py, "Compiled UNets").

torch.compile runs with its ``eager`` backend (``STUDIO_COMPILE_BACKEND``): what
recompiles is decided by Dynamo's guards, whatever the backend, and inductor's
code generation would take minutes per graph on a small CPU. Still several
minutes in all: marked ``compile``, so ``-m compile`` runs this module alone.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from generation.engine.config import tiny_engine_config
from generation.engine.errors import InvalidRequest
from generation.engine.requests import (
    GenerationRequest,
    IPAdapterInput,
    LoraInput,
    Method,
    ReferenceInput,
)
from generation.engine.runner import Engine

pytestmark = pytest.mark.compile

MODEL = "tiny-sd15"
SIZE = 64


def compiled_graphs() -> int:
    """Graphs Dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.fixture(scope="module")
def warm_engine(tiny_model_root: Path) -> Engine:
    """An engine with the tiny model compiled and warmed up at SIZE x SIZE."""
    config = tiny_engine_config(tiny_model_root)
    config.compile = True
    config.compile_backend = "eager"
    config.compile_sizes = ((SIZE, SIZE),)
    config.compile_lora_rank = 8
    engine = Engine(config)
    engine.registry.preload([MODEL])
    engine.registry.warmup(MODEL)
    yield engine
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def loras(tiny_model_root: Path) -> tuple[LoraInput, LoraInput]:
    """The tiny model's LoRA and another one (its up weights reversed)."""
    weights = (tiny_model_root / "lora" / "persona.safetensors").read_bytes()
    other = {
        key: -value if key.endswith("lora_up.weight") else value
        for key, value in safetensors.torch.load(weights).items()
    }
    return (
        LoraInput(weights=weights, scale=0.9, name="persona"),
        LoraInput(weights=safetensors.torch.save(other), scale=0.5, name="other"),
    )


def request(**overrides) -> GenerationRequest:
    pixels = np.random.default_rng(3).integers(0, 256, (SIZE, SIZE, 3), np.uint8)
    values = {
        "model": MODEL,
        "prompt": "a persona",
        "method": Method.TEXT,
        "steps": 2,
        "width": SIZE,
        "height": SIZE,
        "references": [ReferenceInput(Image.fromarray(pixels), primary=True)],
    }
    return GenerationRequest(**{**values, **overrides})


def pixels(engine: Engine, job: GenerationRequest) -> np.ndarray:
    return np.asarray(engine.generate(job).images[0], dtype=np.int16)


def test_the_warm_up_compiles_the_unet_with_its_blank_lora(warm_engine):
    pipe, _ = warm_engine.registry.pipeline(MODEL, Method.TEXT)
    assert pipe.unet._compiled_call_impl is not None
    assert pipe.get_list_adapters() == {"unet": ["studio_lora"]}
    assert compiled_graphs() > 0


def test_jobs_changing_only_their_adapters_compile_nothing(warm_engine, loras):
    graphs = compiled_graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        plain = pixels(warm_engine, request())
        persona = pixels(
            warm_engine,
            request(lora=loras[0], ip_adapter=IPAdapterInput(scale=0.6)),
        )
        other = pixels(
            warm_engine,
            request(
                lora=loras[1], ip_adapter=IPAdapterInput(scale=0.3, face_crop=True)
            ),
        )
        lora_only = pixels(warm_engine, request(lora=loras[1]))
        again = pixels(warm_engine, request())
    assert compiled_graphs() == graphs
    # Each adapter took effect, and none outlived its job.
    outputs = [plain, persona, other, lora_only]
    assert all(
        not np.array_equal(a, b)
        for i, a in enumerate(outputs)
        for b in outputs[i + 1 :]
    )
    assert np.array_equal(again, plain)


def test_a_lora_scale_of_zero_is_no_lora(warm_engine, loras):
    plain = pixels(warm_engine, request())
    unweighted = pixels(warm_engine, request(lora=replace(loras[0], scale=0.0)))
    assert np.array_equal(unweighted, plain)


def test_a_size_not_declared_compiles_once_in_its_first_job(warm_engine):
    graphs = compiled_graphs()
    pixels(warm_engine, request(width=SIZE, height=SIZE + 32))
    assert compiled_graphs() > graphs
    graphs = compiled_graphs()
    pixels(warm_engine, request(width=SIZE, height=SIZE + 32, seed=1))
    assert compiled_graphs() == graphs


def one_layer_lora(layer: str, rank: int, width: tuple[int, int]) -> LoraInput:
    """A kohya-named LoRA of ones on one UNet layer (dots as underscores)."""
    name = "lora_unet_" + layer.replace(".", "_")
    weights = {
        f"{name}.lora_down.weight": torch.ones(rank, width[0]),
        f"{name}.lora_up.weight": torch.ones(width[1], rank),
    }
    return LoraInput(weights=safetensors.torch.save(weights), name=layer)


BLOCK = "down_blocks.1.attentions.0.transformer_blocks.0"


def test_a_lora_on_other_layers_is_refused_and_the_next_jobs_compile_nothing(
    warm_engine, loras
):
    feed_forward = one_layer_lora(f"{BLOCK}.ff.net.2", 4, (256, 64))
    plain = pixels(warm_engine, request())
    with pytest.raises(InvalidRequest, match="cannot be swapped into the compiled"):
        warm_engine.generate(request(lora=feed_forward))
    graphs = compiled_graphs()
    with torch._dynamo.config.patch(error_on_recompile=True):
        assert np.array_equal(pixels(warm_engine, request()), plain)
        pixels(warm_engine, request(lora=loras[0]))
    assert compiled_graphs() == graphs


def test_a_lora_above_the_compiled_rank_is_refused_by_the_plan(warm_engine):
    wide = one_layer_lora(f"{BLOCK}.attn1.to_q", 16, (64, 64))
    with pytest.raises(InvalidRequest, match="rank 16.*up to 8"):
        warm_engine.plan(request(lora=wide))
