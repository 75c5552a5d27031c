"""The pipeline registry on the tiny model: sharing, caching, eviction, job state."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from diffusers import (
    EulerDiscreteScheduler,
    StableDiffusionControlNetImg2ImgPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.attention_processor import SlicedAttnProcessor
from diffusers.models.controlnets import MultiControlNetModel
from PIL import Image

from generation.engine.config import EngineConfig, ModelSpec
from generation.engine.errors import InvalidRequest, ModelNotFound
from generation.engine.registry import PipelineRegistry, choose_dtype
from generation.engine.requests import ControlType, IPAdapterInput, LoraInput, Method

MODEL = "tiny-sd15"
FACE = Image.new("RGB", (96, 128), (205, 150, 130))


def generate(pipe: StableDiffusionPipeline, **kwargs: object) -> np.ndarray:
    output = pipe(
        "a portrait of a woman",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(7),
        output_type="np",
        **kwargs,
    )
    return output.images[0]


def text_image(registry: PipelineRegistry) -> np.ndarray:
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)
    return generate(pipe)


@pytest.fixture
def registry(engine_config: EngineConfig) -> PipelineRegistry:
    return PipelineRegistry(engine_config)


@pytest.fixture
def lora(tiny_model_root: Path) -> LoraInput:
    weights = (tiny_model_root / "lora" / "persona.safetensors").read_bytes()
    return LoraInput(weights=weights, scale=0.9)


@pytest.fixture
def two_model_config(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
) -> EngineConfig:
    """The tiny model twice, the second copy in a model root of its own."""
    shutil.copytree(tiny_model_root / "sd15", tmp_path / "copy")
    models = dict(engine_config.models)
    models["copy"] = ModelSpec(key="copy", source=str(tmp_path / "copy"))
    return replace(
        engine_config, models=models, model_roots=[tiny_model_root, tmp_path]
    )


def test_every_method_shares_the_base_modules_without_a_second_load(
    registry: PipelineRegistry,
):
    text, first_hit = registry.pipeline(MODEL, Method.TEXT)
    img2img, _ = registry.pipeline(MODEL, Method.IMG2IMG)
    controlnet, _ = registry.pipeline(MODEL, Method.CONTROLNET, [ControlType.CANNY])
    hybrid, last_hit = registry.pipeline(MODEL, Method.HYBRID, [ControlType.DEPTH])

    assert (first_hit, last_hit) == (False, True)
    assert type(text) is StableDiffusionPipeline
    assert type(img2img) is StableDiffusionImg2ImgPipeline
    assert type(controlnet) is StableDiffusionControlNetPipeline
    assert type(hybrid) is StableDiffusionControlNetImg2ImgPipeline
    for derived in (img2img, controlnet, hybrid):
        assert derived.unet is text.unet
        assert derived.vae is text.vae
        assert derived.text_encoder is text.text_encoder
        assert derived.unet.dtype == torch.float32
    stats = registry.stats()
    assert (stats["loads"], stats["misses"], stats["hits"]) == (1, 1, 3)
    assert [entry["kind"] for entry in stats["loaded"]].count("base") == 1


def test_deriving_adds_no_parameter_bytes(registry: PipelineRegistry):
    registry.pipeline(MODEL, Method.TEXT)
    base_bytes = registry.stats()["total_bytes"]

    registry.pipeline(MODEL, Method.IMG2IMG)

    assert registry.stats()["total_bytes"] == base_bytes


def test_deriving_shares_modules_by_identity_and_copies_no_parameter(
    registry: PipelineRegistry,
):
    text, _ = registry.pipeline(MODEL, Method.TEXT)
    before = {
        name: [(p, p.data_ptr(), p.dtype) for p in module.parameters()]
        for name, module in text.components.items()
        if isinstance(module, torch.nn.Module)
    }

    img2img, _ = registry.pipeline(MODEL, Method.IMG2IMG)
    hybrid, _ = registry.pipeline(MODEL, Method.HYBRID, [ControlType.CANNY])

    assert type(img2img) is StableDiffusionImg2ImgPipeline
    assert type(hybrid) is StableDiffusionControlNetImg2ImgPipeline
    for derived in (img2img, hybrid):
        for name, parameters in before.items():
            module = getattr(derived, name)
            assert module is getattr(text, name)
            after = [(p, p.data_ptr(), p.dtype) for p in module.parameters()]
            assert len(after) == len(parameters)
            for (old, old_ptr, old_dtype), (new, new_ptr, new_dtype) in zip(
                parameters, after, strict=True
            ):
                assert new is old
                assert (new_ptr, new_dtype) == (old_ptr, old_dtype)


def test_a_derived_pipeline_without_the_cast_paints_what_from_pipe_paints(
    registry: PipelineRegistry,
):
    text, _ = registry.pipeline(MODEL, Method.TEXT)
    derived, _ = registry.pipeline(MODEL, Method.IMG2IMG)
    plain = StableDiffusionImg2ImgPipeline.from_pipe(
        text, dtype=torch.float32, scheduler=derived.scheduler
    )
    plain.set_progress_bar_config(disable=True)
    start = Image.new("RGB", (64, 64), (120, 90, 60))

    assert dict(derived.config) == dict(plain.config)
    ours = generate(derived, image=start, strength=0.6)
    theirs = generate(plain, image=start, strength=0.6)
    np.testing.assert_array_equal(ours, theirs)


def test_each_call_gets_a_fresh_scheduler(registry: PipelineRegistry):
    first, _ = registry.pipeline(MODEL, Method.TEXT)
    second, _ = registry.pipeline(MODEL, Method.TEXT)
    img2img, _ = registry.pipeline(MODEL, Method.IMG2IMG)

    assert len({id(first.scheduler), id(second.scheduler), id(img2img.scheduler)}) == 3
    assert first.scheduler.config == second.scheduler.config
    first.scheduler.set_timesteps(5)
    assert second.scheduler.timesteps is None or len(second.scheduler.timesteps) != 5


def test_a_named_compatible_scheduler_is_built_from_the_model_config(
    registry: PipelineRegistry,
):
    pipe, _ = registry.pipeline(MODEL, Method.TEXT, scheduler="EulerDiscreteScheduler")

    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    with pytest.raises(InvalidRequest, match="Unknown scheduler"):
        registry.pipeline(MODEL, Method.TEXT, scheduler="NoSuchScheduler")


def test_controlnets_are_cached_and_combined_for_several_units(
    registry: PipelineRegistry,
):
    canny = registry.controlnet(ControlType.CANNY)

    pipe, _ = registry.pipeline(
        MODEL, Method.CONTROLNET, [ControlType.CANNY, ControlType.OPENPOSE]
    )
    single, _ = registry.pipeline(MODEL, Method.HYBRID, [ControlType.CANNY])

    assert isinstance(pipe.controlnet, MultiControlNetModel)
    assert pipe.controlnet.nets[0] is canny
    assert pipe.controlnet.nets[1] is registry.controlnet(ControlType.OPENPOSE)
    assert single.controlnet is canny
    assert registry.stats()["controlnet_loads"] == 2


def test_requests_that_do_not_fit_fail_before_loading(
    registry: PipelineRegistry, engine_config: EngineConfig
):
    with pytest.raises(ModelNotFound, match="Unknown model"):
        registry.pipeline("no-such-model", Method.TEXT)
    with pytest.raises(InvalidRequest, match="at least one"):
        registry.pipeline(MODEL, Method.CONTROLNET)
    with pytest.raises(InvalidRequest, match="no ControlNet unit"):
        registry.pipeline(MODEL, Method.IMG2IMG, [ControlType.CANNY])
    with pytest.raises(InvalidRequest):
        registry.pipeline(MODEL, Method.AUTO)
    unconfigured = PipelineRegistry(replace(engine_config, controlnets={}))
    with pytest.raises(ModelNotFound, match="No ControlNet is configured"):
        unconfigured.pipeline(MODEL, Method.CONTROLNET, [ControlType.SEG])
    assert registry.stats()["loads"] == unconfigured.stats()["loads"] == 0


def test_least_recently_used_base_is_evicted_past_the_budget(
    two_model_config: EngineConfig,
):
    measure = PipelineRegistry(two_model_config)
    measure.preload([MODEL])
    one_model_mb = measure.stats()["total_bytes"] / 2**20
    budget = int(one_model_mb * 1.5) + 1
    registry = PipelineRegistry(replace(two_model_config, memory_budget_mb=budget))

    registry.pipeline(MODEL, Method.TEXT)
    registry.pipeline("copy", Method.TEXT)
    loaded = [entry["label"] for entry in registry.stats()["loaded"]]
    _, hit = registry.pipeline(MODEL, Method.TEXT)

    assert loaded == ["copy"]
    assert hit is False
    stats = registry.stats()
    assert stats["evictions"] == 2
    assert stats["loads"] == 3
    assert stats["total_bytes"] <= budget * 2**20


def test_within_the_budget_both_models_stay(two_model_config: EngineConfig):
    registry = PipelineRegistry(two_model_config)

    registry.preload([MODEL, "copy"])
    _, hit = registry.pipeline(MODEL, Method.TEXT)

    assert hit is True
    assert [e["label"] for e in registry.stats()["loaded"]] == ["copy", MODEL]


def test_evict_drops_a_model_until_it_is_asked_for_again(registry: PipelineRegistry):
    registry.preload([MODEL])

    registry.evict(MODEL)
    _, hit = registry.pipeline(MODEL, Method.TEXT)

    assert hit is False
    assert registry.stats()["loads"] == 2


def test_device_and_dtype_default_to_cpu_float32_and_can_be_overridden(
    engine_config: EngineConfig,
):
    automatic = PipelineRegistry(engine_config)
    bf16 = PipelineRegistry(replace(engine_config, dtype="bfloat16", device="cpu"))

    pipe, _ = bf16.pipeline(MODEL, Method.IMG2IMG)

    assert (automatic.device.type, automatic.dtype) == ("cpu", torch.float32)
    assert bf16.dtype == torch.bfloat16
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16
    assert choose_dtype(None, torch.device("cuda")) == torch.float16
    with pytest.raises(ValueError, match="Unknown dtype"):
        choose_dtype("float8", torch.device("cpu"))


@pytest.mark.parametrize("face_crop", [False, True])
def test_an_ip_adapter_job_leaves_no_trace(
    registry: PipelineRegistry, engine_config: EngineConfig, face_crop: bool
):
    expected = text_image(PipelineRegistry(engine_config))
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)

    with registry.job_state(pipe, ip_adapter=IPAdapterInput(face_crop=face_crop)):
        with_adapter = generate(pipe, ip_adapter_image=FACE)
    after = text_image(registry)

    assert not np.array_equal(with_adapter, expected)
    assert np.array_equal(after, expected)
    assert pipe.unet.encoder_hid_proj is None
    assert pipe.image_encoder is None


def test_a_lora_job_leaves_no_trace(
    registry: PipelineRegistry, engine_config: EngineConfig, lora: LoraInput
):
    expected = text_image(PipelineRegistry(engine_config))
    pipe, _ = registry.pipeline(MODEL, Method.IMG2IMG)
    init = Image.new("RGB", (64, 64), (120, 80, 60))

    with registry.job_state(pipe, lora=lora):
        with_lora = generate(pipe, image=init, strength=1.0)
    after = text_image(registry)

    assert not np.array_equal(with_lora, generate(pipe, image=init, strength=1.0))
    assert np.array_equal(after, expected)
    assert not pipe.get_list_adapters()


def test_lora_scale_weights_its_effect(registry: PipelineRegistry, lora: LoraInput):
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)
    plain = generate(pipe)

    with registry.job_state(pipe, lora=replace(lora, scale=0.0)):
        unweighted = generate(pipe)
    with registry.job_state(pipe, lora=lora):
        weighted = generate(pipe)

    assert np.allclose(unweighted, plain, atol=1e-6)
    assert not np.allclose(weighted, plain, atol=1e-3)


def test_a_failed_job_with_both_adapters_still_leaves_no_trace(
    registry: PipelineRegistry, engine_config: EngineConfig, lora: LoraInput
):
    expected = text_image(PipelineRegistry(engine_config))
    pipe, _ = registry.pipeline(MODEL, Method.CONTROLNET, [ControlType.CANNY])

    with pytest.raises(RuntimeError, match="job failed"):
        with registry.job_state(pipe, ip_adapter=IPAdapterInput(), lora=lora):
            raise RuntimeError("job failed")

    assert np.array_equal(text_image(registry), expected)


def test_bad_lora_files_are_refused_and_leave_no_trace(
    registry: PipelineRegistry, engine_config: EngineConfig, lora: LoraInput
):
    expected = text_image(PipelineRegistry(engine_config))
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)
    foreign = safetensors.torch.save(
        {
            "lora_unet_no_such_layer.lora_down.weight": torch.ones(4, 8),
            "lora_unet_no_such_layer.lora_up.weight": torch.ones(8, 4),
        }
    )

    other_architecture = safetensors.torch.save(
        {
            "transformer.blocks.0.attn.to_q.lora_A.weight": torch.ones(4, 8),
            "transformer.blocks.0.attn.to_q.lora_B.weight": torch.ones(8, 4),
        }
    )

    with pytest.raises(InvalidRequest, match="not a readable"):
        with registry.job_state(pipe, lora=replace(lora, weights=b"garbage")):
            pass
    with pytest.raises(InvalidRequest, match="does not fit this model"):
        with registry.job_state(pipe, lora=replace(lora, weights=foreign)):
            pass
    with pytest.raises(InvalidRequest, match="no weights for this model"):
        with registry.job_state(pipe, lora=replace(lora, weights=other_architecture)):
            pass

    assert np.array_equal(text_image(registry), expected)


def test_ip_adapter_jobs_share_one_image_encoder(registry: PipelineRegistry):
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)
    encoder, processor = registry.image_encoder()

    for face_crop in (True, False):
        with registry.job_state(pipe, ip_adapter=IPAdapterInput(face_crop=face_crop)):
            assert pipe.image_encoder is encoder

    assert registry.ip_adapter_installed
    assert processor.crop_size["height"] == encoder.config.image_size
    assert registry.stats()["image_encoder_loads"] == 1


def test_without_an_ip_adapter_configured_none_is_installed(
    engine_config: EngineConfig,
):
    registry = PipelineRegistry(replace(engine_config, ip_adapter=None))
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)

    assert not registry.ip_adapter_installed
    assert registry.image_encoder() is None
    with pytest.raises(ModelNotFound, match="No IP-Adapter"):
        with registry.job_state(pipe, ip_adapter=IPAdapterInput()):
            pass


def test_footprint_switches_apply_and_survive_an_ip_adapter_job(
    engine_config: EngineConfig,
):
    registry = PipelineRegistry(
        replace(engine_config, attention_slicing=True, vae_tiling=True)
    )
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)

    with registry.job_state(pipe, ip_adapter=IPAdapterInput()):
        generate(pipe, ip_adapter_image=FACE)

    processors = pipe.unet.attn_processors.values()
    assert all(isinstance(p, SlicedAttnProcessor) for p in processors)
    assert pipe.vae.use_tiling


def test_reduce_footprint_turns_the_memory_savers_on(registry: PipelineRegistry):
    pipe, _ = registry.pipeline(MODEL, Method.TEXT)
    before = generate(pipe)

    registry.reduce_footprint()
    after = generate(pipe)

    footprint = registry.stats()["footprint"]
    assert footprint["attention_slicing"] and footprint["vae_tiling"]
    assert not footprint["cpu_offload"]  # only on CUDA
    assert pipe.vae.use_tiling
    assert np.allclose(before, after, atol=1e-4)


def test_preload_and_warmup_make_the_first_job_a_hit(registry: PipelineRegistry):
    registry.preload([MODEL])
    registry.warmup(MODEL)

    _, hit = registry.pipeline(MODEL, Method.TEXT)

    assert hit is True
    assert registry.stats()["loads"] == 1


def test_fingerprints_identify_the_model_and_its_controlnets(
    registry: PipelineRegistry,
):
    model = registry.fingerprint(MODEL)
    control = registry.controlnet_fingerprint(ControlType.CANNY)

    assert model["kind"] == "folder"
    assert len(model["sha256"]) == 64
    assert registry.fingerprint(MODEL) == model
    assert control["sha256"] != model["sha256"]
    assert control["source"].endswith("controlnet/canny")
