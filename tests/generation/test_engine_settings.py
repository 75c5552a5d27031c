"""The engine's configuration from the STUDIO_* settings, and queue routing."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from generation.engine.config import compile_sizes
from generation.engine.errors import InvalidConfiguration
from generation.engine.vocabulary import (
    TINY_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
    Method,
)
from generation.engine_settings import engine_config, uses_tiny_model
from generation.queues import all_queue_names, queue_name_for_model


def test_no_model_configured_serves_the_tiny_model(settings, tmp_path: Path):
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tmp_path)
    config = engine_config()
    assert uses_tiny_model()
    assert list(config.models) == [TINY_MODEL_KEY]
    assert config.models[TINY_MODEL_KEY].source == str(tmp_path / "sd15")
    assert config.model_roots == [tmp_path]
    assert config.ip_adapter is not None
    assert set(config.controlnets) >= {"canny", "openpose"}


def test_configured_models_and_options_are_passed_on(settings, tmp_path: Path):
    settings.STUDIO_MODELS = {
        "sd15": {"source": "some/hub-model", "revision": "abc", "label": "SD"},
        "local": {"source": str(tmp_path / "one.safetensors"), "config": "cfg"},
    }
    settings.STUDIO_MODEL_ROOTS = [str(tmp_path)]
    settings.STUDIO_CONTROLNETS = {"canny": "some/canny"}
    settings.STUDIO_IP_ADAPTER = {"source": "h94/IP-Adapter"}
    settings.STUDIO_DEVICE = "cpu"
    settings.STUDIO_MEMORY_BUDGET_MB = 0
    settings.STUDIO_ATTENTION_SLICING = True
    config = engine_config()
    assert not uses_tiny_model()
    assert config.models["sd15"].revision == "abc"
    assert config.models["local"].config == "cfg"
    assert config.model_roots == [tmp_path]
    assert config.controlnets == {"canny": "some/canny"}
    assert config.ip_adapter.source == "h94/IP-Adapter"
    assert config.device == "cpu"
    assert config.memory_budget_mb is None
    assert config.attention_slicing is True


def test_compile_settings_reach_the_engine(settings, tmp_path: Path):
    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tmp_path)
    settings.STUDIO_TORCH_COMPILE = True
    settings.STUDIO_COMPILE_SIZES = "512x512, 512X768"
    settings.STUDIO_COMPILE_LORA_RANK = 32
    settings.STUDIO_COMPILE_BACKEND = "eager"
    settings.STUDIO_COMPILE_IP_ADAPTER = False
    config = engine_config()
    assert config.compile
    assert config.compile_sizes == ((512, 512), (512, 768))
    assert (config.compile_lora_rank, config.compile_backend) == (32, "eager")
    assert not config.compile_ip_adapter
    assert compile_sizes("") == ()


@pytest.mark.parametrize("value", ["512", "512x", "0x512", "big x 512", "-8x8"])
def test_a_compile_size_that_is_not_width_x_height_is_refused(value):
    with pytest.raises(InvalidConfiguration, match="STUDIO_COMPILE_SIZES"):
        compile_sizes(value)


def test_a_bad_compile_size_setting_is_a_configuration_error(settings):
    settings.STUDIO_COMPILE_SIZES = "512"
    with pytest.raises(ImproperlyConfigured, match="STUDIO_COMPILE_SIZES: '512'"):
        engine_config()


def test_queues_are_routed_by_model(settings):
    settings.STUDIO_DEFAULT_QUEUE = "gpu"
    settings.STUDIO_QUEUE_ROUTES = {"sdxl": "gpu-large", "other": "gpu"}
    assert queue_name_for_model("sdxl") == "gpu-large"
    assert queue_name_for_model("sd15") == "gpu"
    assert all_queue_names() == ["gpu", "gpu-large"]


@pytest.mark.parametrize(
    ("setting", "hook"),
    [
        ("STUDIO_CPU_OFFLOAD", "CpuOffload"),
        ("STUDIO_SEQUENTIAL_CPU_OFFLOAD", "AlignDevicesHook"),
    ],
)
def test_the_offload_settings_reach_every_module_of_the_pipeline(
    settings, tiny_model_dir: Path, setting: str, hook: str
):
    """The setting, through ``engine_config``, hooks each module of a job's
    pipeline (a registry that offloads on this CPU: ``tests/engine/test_offload``)."""
    from tests.engine.test_offload import CpuOffloadingRegistry, hooked

    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_dir)
    setattr(settings, setting, True)
    pipe, _ = CpuOffloadingRegistry(engine_config()).pipeline(
        TINY_QWEN_IMAGE_MODEL_KEY, Method.REFERENCE_EDIT
    )
    found = hooked(pipe)
    assert set(found) == {"text_encoder", "transformer", "vae"}, found
    assert {kind.__name__ for kind in found.values()} == {hook}
