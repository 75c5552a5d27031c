"""Model families: detected from a model's files, refused when unknown, and every
ControlNet, IP-Adapter and LoRA of another family refused with the reason."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import diffusers
import huggingface_hub
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from generation.engine.config import (
    EngineConfig,
    IPAdapterSpec,
    ModelSpec,
    model_catalog,
)
from generation.engine.errors import ModelNotFound
from generation.engine.families import (
    FAMILIES,
    SD15,
    SDXL,
    FamilyMismatch,
    UnknownFamily,
    single_file_family,
    traits_of_folder,
)
from generation.engine.methods import pipeline_class
from generation.engine.registry import PipelineRegistry
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    LoraInput,
    Method,
    ReferenceInput,
    ReferenceRole,
)
from generation.engine.runner import Engine
from generation.engine.vocabulary import (
    BASE_METHODS,
    TINY_FLUX_MODEL_KEY,
    TINY_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
    TINY_SDXL_MODEL_KEY,
    Denoiser,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
REFERENCE = Image.new("RGB", (64, 64), "gray")


def request(model: str = TINY_SDXL_MODEL_KEY, **overrides) -> GenerationRequest:
    values = {"model": model, "prompt": "a portrait", "steps": 2}
    return GenerationRequest(**{"width": 64, "height": 64, **values, **overrides})


def with_model(config: EngineConfig, spec: ModelSpec, *roots: Path) -> EngineConfig:
    return replace(
        config,
        models={**config.models, spec.key: spec},
        model_roots=[*config.model_roots, *roots],
    )


@pytest.mark.parametrize(
    ("folder", "family", "width"), [("sd15", SD15, 32), ("sdxl", SDXL, 80)]
)
def test_a_folder_family_comes_from_its_class_name_and_unet_config(
    tiny_model_root: Path, folder, family, width
):
    traits = traits_of_folder(tiny_model_root / folder)
    assert traits.family is family
    assert traits.cross_attention_dim == width
    assert "_class_name" in traits.found


def test_every_family_maps_its_base_methods_to_diffusers_classes():
    for family in FAMILIES.values():
        assert set(family.pipeline_classes) <= BASE_METHODS
        if family.denoiser is Denoiser.UNET:
            assert set(family.pipeline_classes) == BASE_METHODS - {
                Method.REFERENCE_EDIT
            }
        for method in family.pipeline_classes:
            assert pipeline_class(method, family) is getattr(
                diffusers, family.pipeline_class_name(method)
            )
    assert pipeline_class(Method.HYBRID, "sdxl").__name__ == (
        "StableDiffusionXLControlNetImg2ImgPipeline"
    )


def test_the_catalog_offers_both_tiny_models_with_their_families(
    tiny_model_root: Path, engine_config: EngineConfig
):
    catalog = model_catalog({}, tiny_model_dir=tiny_model_root)
    assert list(catalog) == [
        TINY_MODEL_KEY,
        TINY_SDXL_MODEL_KEY,
        TINY_FLUX_MODEL_KEY,
        TINY_QWEN_IMAGE_MODEL_KEY,
    ]
    assert catalog[TINY_FLUX_MODEL_KEY].family == "flux"
    assert catalog[TINY_QWEN_IMAGE_MODEL_KEY].family == "qwen-image"
    assert catalog[TINY_SDXL_MODEL_KEY].family == "sdxl"
    assert catalog[TINY_SDXL_MODEL_KEY].is_tiny
    registry = PipelineRegistry(engine_config)
    assert registry.family(TINY_MODEL_KEY) is SD15
    assert registry.family(TINY_SDXL_MODEL_KEY) is SDXL
    # An SDXL model's IP-Adapter defaults to the sdxl_models/ layout of h94.
    adapter = catalog[TINY_SDXL_MODEL_KEY].ip_adapter
    assert adapter.subfolder == "sdxl_models"
    assert adapter.weight_name == "ip-adapter_sdxl_vit-h.safetensors"


def test_a_configured_family_and_ip_adapter_come_from_studio_models():
    catalog = model_catalog(
        {
            "xl": {
                "source": "stabilityai/stable-diffusion-xl-base-1.0",
                "family": "sdxl",
                "controlnets": {"canny": "diffusers/controlnet-canny-sdxl-1.0"},
                "ip_adapter": {"source": "h94/IP-Adapter"},
            }
        },
        tiny_model_dir="unused",
    )
    spec = catalog["xl"]
    assert spec.family == "sdxl"
    assert spec.ip_adapter == IPAdapterSpec.for_family("sdxl", source="h94/IP-Adapter")
    assert spec.ip_adapter.face_weight_name == (
        "ip-adapter-plus-face_sdxl_vit-h.safetensors"
    )


def test_an_unknown_family_key_is_refused_at_configuration():
    with pytest.raises(UnknownFamily, match="Unknown model family 'sd3'.*sd15"):
        ModelSpec(
            key="f", source="stabilityai/stable-diffusion-3.5-large", family="sd3"
        )


def test_a_cached_hub_model_is_detected_offline(
    engine_config: EngineConfig,
    tiny_model_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    cache = tmp_path / "hf-cache"
    repo = cache / "models--studio--tiny-sdxl"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_model_root / "sdxl", repo / "snapshots" / COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    config = with_model(engine_config, ModelSpec(key="hub", source="studio/tiny-sdxl"))

    traits = PipelineRegistry(config).traits("hub")
    assert traits.family is SDXL and traits.cross_attention_dim == 80


def test_single_files_are_recognised_by_their_key_names(tiny_model_root: Path):
    assert single_file_family(tiny_model_root / "sd15.safetensors") is SD15
    assert single_file_family(tiny_model_root / "sdxl.safetensors") is SDXL


def test_a_single_sdxl_file_defaults_to_sdxls_configs(
    engine_config: EngineConfig,
    tiny_model_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    spec = ModelSpec(key="file", source=str(tiny_model_root / "sdxl.safetensors"))
    registry = PipelineRegistry(with_model(engine_config, spec))
    with pytest.raises(ModelNotFound, match="stabilityai/stable-diffusion-xl-base-1.0"):
        registry.source("file")


def test_a_single_file_whose_config_is_of_another_family_is_refused(
    engine_config: EngineConfig, tiny_model_root: Path
):
    spec = ModelSpec(
        key="file", source=str(tiny_model_root / "sdxl.safetensors"), config="sd15"
    )
    registry = PipelineRegistry(with_model(engine_config, spec))
    with pytest.raises(UnknownFamily, match="is a Stable Diffusion XL checkpoint"):
        registry.traits("file")


def test_a_single_file_of_no_served_family_is_refused_with_its_keys(tmp_path: Path):
    path = tmp_path / "sd3_medium.safetensors"
    save_file({"joint_blocks.0.x_block.attn.qkv.weight": torch.zeros(1)}, path)
    with pytest.raises(UnknownFamily) as error:
        single_file_family(path)
    message = str(error.value)
    assert "joint_blocks" in message
    assert "'conditioner.embedders.1.' (sdxl)" in message
    assert "'double_blocks.' (flux)" in message


def test_a_folder_of_no_served_family_is_refused_with_what_was_found(
    engine_config: EngineConfig, tmp_path: Path
):
    folder = tmp_path / "sd3"
    (folder / "transformer").mkdir(parents=True)
    (folder / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline"})
    )
    (folder / "transformer" / "config.json").write_text(
        json.dumps({"_class_name": "SD3Transformer2DModel", "in_channels": 16})
    )
    config = with_model(
        engine_config, ModelSpec(key="sd3", source=str(folder)), tmp_path
    )
    engine = Engine(config)
    with pytest.raises(UnknownFamily) as error:
        engine.validate(request("sd3"))
    message = str(error.value)
    assert "Model 'sd3'" in message and "'StableDiffusion3Pipeline'" in message
    assert "Served: sd15 (Stable Diffusion 1.5), sdxl (Stable Diffusion XL)" in message
    assert "flux (FLUX.1)" in message


def test_a_declared_family_the_files_contradict_is_refused(
    engine_config: EngineConfig, tiny_model_root: Path
):
    spec = ModelSpec(key="wrong", source=str(tiny_model_root / "sd15"), family="sdxl")
    registry = PipelineRegistry(with_model(engine_config, spec))
    with pytest.raises(UnknownFamily, match="configured as Stable Diffusion XL but"):
        registry.traits("wrong")


def test_an_sd15_lora_on_sdxl_is_refused_with_the_reason(
    engine_config: EngineConfig, tiny_model_root: Path
):
    engine = Engine(engine_config)
    sd15_lora = (tiny_model_root / "lora" / "persona.safetensors").read_bytes()
    with pytest.raises(FamilyMismatch) as error:
        engine.validate(request(lora=LoraInput(weights=sd15_lora, name="anna")))
    message = str(error.value)
    assert "The LoRA 'anna' is for Stable Diffusion 1.5" in message
    assert "lora_te_*" in message
    assert "model 'tiny-sdxl' is Stable Diffusion XL" in message
    sdxl_lora = (tiny_model_root / "lora" / "persona-sdxl.safetensors").read_bytes()
    with pytest.raises(FamilyMismatch, match="is for Stable Diffusion XL"):
        engine.validate(request(TINY_MODEL_KEY, lora=LoraInput(weights=sdxl_lora)))
    engine.validate(request(lora=LoraInput(weights=sdxl_lora)))


def test_an_sd15_controlnet_on_sdxl_is_refused_with_the_reason(
    engine_config: EngineConfig, tiny_model_root: Path
):
    sdxl = replace(
        engine_config.models[TINY_SDXL_MODEL_KEY],
        controlnets={"canny": str(tiny_model_root / "controlnet" / "canny")},
    )
    engine = Engine(with_model(engine_config, sdxl))
    unit = ControlUnitInput(ControlType.CANNY, control_image=REFERENCE)
    with pytest.raises(FamilyMismatch) as error:
        engine.validate(request(method=Method.CONTROLNET, control_units=[unit]))
    message = str(error.value)
    assert "is a Stable Diffusion 1.5 ControlNet (cross-attention width 32)" in message
    assert "model 'tiny-sdxl' is Stable Diffusion XL (width 80)" in message


def test_an_sd15_ip_adapter_on_sdxl_is_refused_with_the_reason(
    engine_config: EngineConfig, tiny_model_root: Path
):
    sdxl = replace(
        engine_config.models[TINY_SDXL_MODEL_KEY],
        ip_adapter=IPAdapterSpec(source=str(tiny_model_root / "ip-adapter")),
    )
    engine = Engine(with_model(engine_config, sdxl))
    with pytest.raises(FamilyMismatch) as error:
        engine.validate(
            request(
                method=Method.IP_ADAPTER,
                references=[ReferenceInput(REFERENCE)],
                ip_adapter=IPAdapterInput(face_crop=False),
            )
        )
    message = str(error.value)
    assert "models/ip-adapter_sd15.safetensors" in message
    assert "cross-attention width 32" in message
    assert "sdxl_models/ip-adapter_sdxl_vit-h.safetensors" in message


def test_the_studio_settings_give_each_model_its_family_and_safety_policy(
    settings, tiny_model_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from generation.engine_settings import engine_config, model_family

    settings.STUDIO_MODELS = {}
    settings.STUDIO_TINY_MODEL_DIR = str(tiny_model_root)
    settings.STUDIO_SAFETY_CHECKER = "black"
    assert model_family(TINY_MODEL_KEY) == "sd15"
    assert model_family(TINY_SDXL_MODEL_KEY) == "sdxl"
    assert engine_config().safety_policy == "black"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    settings.STUDIO_MODELS = {
        "xl": {"source": "stabilityai/stable-diffusion-xl-base-1.0", "family": "sdxl"}
    }
    assert model_family("xl") == "sdxl"  # declared: the weights are elsewhere


def test_auto_adds_only_an_ip_adapter_of_the_models_family(
    engine_config: EngineConfig,
):
    """The tiny SDXL model without an IP-Adapter of its own falls back to the
    engine-wide one, which is SD 1.5's: auto leaves it out, it does not fail."""
    sdxl = replace(engine_config.models[TINY_SDXL_MODEL_KEY], ip_adapter=None)
    engine = Engine(with_model(engine_config, sdxl))
    face = ReferenceInput(REFERENCE, role=ReferenceRole.FACE)
    assert engine.plan(request(references=[face])).ip_adapter is None
    assert engine.plan(request(TINY_MODEL_KEY, references=[face])).ip_adapter
    with pytest.raises(FamilyMismatch):
        engine.validate(request(method=Method.IP_ADAPTER, references=[face]))


def test_the_plan_check_refuses_adapters_of_another_family_before_queueing(
    tiny_model_root,
):
    """At generate, before anything is queued: an SDXL ControlNet or IP-Adapter
    configured for an SD 1.5 model is refused with the family layer's reason."""
    from PIL import Image

    from generation.engine.config import IPAdapterSpec, tiny_engine_config
    from generation.engine.plan import plan_problems
    from generation.engine.requests import (
        ControlType,
        ControlUnitInput,
        GenerationRequest,
        IPAdapterInput,
        Method,
        ReferenceInput,
    )

    config = tiny_engine_config(tiny_model_root)
    config.controlnets = {"canny": str(tiny_model_root / "controlnet-sdxl" / "canny")}
    config.ip_adapter = IPAdapterSpec.for_family(
        "sdxl", source=str(tiny_model_root / "ip-adapter")
    )
    reference = ReferenceInput(Image.new("RGB", (64, 64), "gray"))
    unit = ControlUnitInput(ControlType.CANNY)
    request = GenerationRequest(
        model="tiny-sd15",
        prompt="a portrait",
        method=Method.CONTROLNET,
        references=[reference],
        control_units=[unit],
        ip_adapter=IPAdapterInput(),
        width=64,
        height=64,
    )
    messages = [problem.message for problem in plan_problems(request, config)]
    assert any("is a Stable Diffusion XL ControlNet" in m for m in messages), messages
    assert any("The IP-Adapter sdxl_models/" in m for m in messages), messages
    assert {p.code for p in plan_problems(request, config)} == {"family_mismatch"}
    # The same request on the SDXL model, whose own adapters fit, is clean.
    sdxl = tiny_engine_config(tiny_model_root)
    assert (
        plan_problems(
            GenerationRequest(**{**vars(request), "model": "tiny-sdxl"}), sdxl
        )
        == []
    )
