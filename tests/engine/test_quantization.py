"""torchao int8 weight-only quantization, run for real on this CPU.

``STUDIO_QUANTIZATION=torchao_int8`` loads a transformer family's two big
modules (the transformer, and T5-XXL or Qwen2.5-VL) with int8 weights through
diffusers' ``PipelineQuantizationConfig``; torchao's int8 kernels run on the
CPU, so a whole job runs here on the tiny models. torchao is an optional extra
(``pip install -e '.[quantization]'``): without it these tests skip, and the
setting is refused naming what to install (``test_flux``). bitsandbytes needs a
GPU for its kernels and is not run here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from generation.engine.config import tiny_engine_config
from generation.engine.requests import GenerationRequest, Method
from generation.engine.runner import Engine
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
    Quantization,
)

pytest.importorskip(
    "torchao", reason="torchao is not installed (the optional extra 'quantization')"
)

# (model, the module that is its big text encoder)
MODELS = [
    (TINY_QWEN_IMAGE_MODEL_KEY, "text_encoder"),
    (TINY_FLUX_MODEL_KEY, "text_encoder_2"),
]


def _quantized_engine(root: Path) -> Engine:
    config = tiny_engine_config(root)
    config.quantization = Quantization.TORCHAO_INT8
    return Engine(config)


def _int8_linears(module: torch.nn.Module) -> tuple[int, int]:
    """(linear layers with torchao int8 weights, linear layers)."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    int8 = [m for m in linears if "torchao" in type(m.weight).__module__]
    return len(int8), len(linears)


@pytest.mark.parametrize(("model", "text_encoder"), MODELS)
def test_torchao_int8_quantizes_the_two_big_modules_and_a_job_runs(
    tiny_model_root: Path, model: str, text_encoder: str
):
    engine = _quantized_engine(tiny_model_root)
    pipe, _ = engine.registry.pipeline(model, Method.TEXT)
    for name in ("transformer", text_encoder):
        int8, linears = _int8_linears(getattr(pipe, name))
        assert int8 > 0 and int8 >= linears // 2, (name, int8, linears)
    assert _int8_linears(pipe.vae) == (0, _int8_linears(pipe.vae)[1])

    request = GenerationRequest(
        model=model, prompt="a portrait", seed=3, steps=2, width=64, height=64
    )
    result = engine.generate(request)
    assert np.asarray(result.images[0]).std() > 0
    assert result.snapshot["model"]["quantization"] == "torchao_int8"
    plain = Engine(tiny_engine_config(tiny_model_root)).generate(request)
    assert "quantization" not in plain.snapshot["model"]


def test_a_stable_diffusion_model_is_not_quantized(tiny_model_root: Path):
    engine = _quantized_engine(tiny_model_root)
    pipe, _ = engine.registry.pipeline(TINY_MODEL_KEY, Method.TEXT)
    assert _int8_linears(pipe.unet)[0] == 0
    assert "quantization" not in engine.registry.fingerprint(TINY_MODEL_KEY)
