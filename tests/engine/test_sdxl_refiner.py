"""The SDXL refiner: text and img2img as diffusers' "ensemble of expert
denoisers" (the base to ``denoising_end``, the refiner from ``denoising_start``
on its latents), equal to raw diffusers on the tiny SDXL model and its tiny
refiner, recorded in the snapshot and replayed exactly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    StableDiffusionXLImg2ImgPipeline,
    StableDiffusionXLPipeline,
)

from generation.engine.config import (
    TINY_SDXL_REFINER_DIR,
    EngineConfig,
    ModelSpec,
    model_catalog,
    tiny_engine_config,
)
from generation.engine.errors import InvalidRequest
from generation.engine.families import SDXL
from generation.engine.prompts import encode_long_prompt
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    LoraInput,
    Method,
    ReferenceInput,
    ResizeMode,
)
from generation.engine.resize import fit_to_size
from generation.engine.runner import Engine
from generation.engine.snapshot import request_from_snapshot
from generation.engine.vocabulary import TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY
from tests.engine.test_reproducibility import assert_same_pixels, noise_image
from tests.engine.test_sdxl import (
    assert_encodes_as_diffusers,
    load_ip_adapter,
    raw_pipeline,
    words_of,
)

SEED = 77
STEPS = 5
SIZE = 64
SWITCH = 0.6
PROMPT = "portrait of the persona"
NEGATIVE = "blurry"
GUIDANCE = 5.0
STRENGTH = 0.8


def with_refiner(root: Path, model_key: str = TINY_SDXL_MODEL_KEY) -> EngineConfig:
    config = tiny_engine_config(root)
    spec = config.models[model_key]
    config.models = {
        **config.models,
        model_key: replace(
            spec, refiner=str(root / TINY_SDXL_REFINER_DIR), refiner_switch=SWITCH
        ),
    }
    return config


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    return Engine(with_refiner(tiny_model_root))


def make_request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "model": TINY_SDXL_MODEL_KEY,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "guidance_scale": GUIDANCE,
        "width": SIZE,
        "height": SIZE,
        "strength": STRENGTH,
        "method": Method.TEXT,
    }
    return GenerationRequest(**{**values, **overrides})


def generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(SEED)


def raw_ensemble(
    root: Path,
    base_cls: type,
    images: int = 1,
    *,
    prepare_base: Callable[[Any], None] | None = None,
    prompts: Callable[[Any], dict[str, Any]] | None = None,
    **base_kwargs: Any,
):
    """diffusers' documented ensemble of expert denoisers, by hand.
    ``prepare_base`` sets the base up (an IP-Adapter, a LoRA: the refiner gets
    neither); ``prompts(pipe)`` gives each pipeline's prompt arguments (default:
    the prompt and negative prompt as text)."""
    base = base_cls.from_pretrained(root / "sdxl", dtype=torch.float32)
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        root / TINY_SDXL_REFINER_DIR, dtype=torch.float32
    )
    for pipe in (base, refiner):
        pipe.set_progress_bar_config(disable=True)
    if prepare_base is not None:
        prepare_base(base)
    if prompts is None:

        def prompts(pipe: Any) -> dict[str, Any]:
            return {"prompt": PROMPT, "negative_prompt": NEGATIVE}

    common = {
        "num_inference_steps": STEPS,
        "guidance_scale": GUIDANCE,
        "num_images_per_prompt": images,
    }
    latents = base(
        **common,
        **prompts(base),
        **base_kwargs,
        denoising_end=SWITCH,
        output_type="latent",
        generator=generator(),
    ).images
    return refiner(
        **common,
        **prompts(refiner),
        denoising_start=SWITCH,
        image=latents,
        generator=generator(),
    ).images


def test_text_with_the_refiner_equals_the_raw_ensemble(engine, tiny_model_root):
    raw = raw_ensemble(
        tiny_model_root, StableDiffusionXLPipeline, images=2, width=SIZE, height=SIZE
    )
    steps: list[tuple[int, int]] = []
    result = engine.generate(
        make_request(num_images=2),
        on_step=lambda done, total: steps.append((done, total)),
    )
    assert_same_pixels(result.images, raw)

    snapshot = result.snapshot
    assert snapshot["call"]["denoising_end"] == SWITCH
    assert snapshot["call"]["output_type"] == "latent"
    refiner = snapshot["refiner"]
    assert refiner["pipeline_class"] == "StableDiffusionXLImg2ImgPipeline"
    assert refiner["call"]["denoising_start"] == SWITCH
    assert refiner["call"]["aesthetic_score"] == 6.0
    assert "image" not in refiner["call"]
    fingerprint = snapshot["model"]["refiner"]
    assert fingerprint["source"] == str(
        (tiny_model_root / TINY_SDXL_REFINER_DIR).resolve()
    )
    assert len(fingerprint["sha256"]) == 64
    # Progress counts on through the refiner's steps.
    done = [step for step, _ in steps]
    assert done == sorted(done) and steps[-1][0] == steps[-1][1] > STEPS * SWITCH


def test_img2img_with_the_refiner_equals_the_raw_ensemble(engine, tiny_model_root):
    reference = noise_image(11)
    raw = raw_ensemble(
        tiny_model_root,
        StableDiffusionXLImg2ImgPipeline,
        image=fit_to_size(reference, SIZE, SIZE, ResizeMode.RESIZE_AND_FILL),
        strength=STRENGTH,
    )
    result = engine.generate(
        make_request(
            method=Method.IMG2IMG,
            references=[ReferenceInput(reference)],
            resize_mode=ResizeMode.RESIZE_AND_FILL,
        )
    )
    assert_same_pixels(result.images, raw)
    assert result.snapshot["refiner"]["call"]["denoising_start"] == SWITCH


def test_the_refiner_changes_the_pixels_and_a_snapshot_replays_them(
    engine, tiny_model_root
):
    refined = engine.generate(make_request())
    plain = Engine(tiny_engine_config(tiny_model_root)).generate(make_request())
    assert plain.snapshot["refiner"] is None
    assert "refiner" not in plain.snapshot["model"]
    with pytest.raises(AssertionError):
        assert_same_pixels(refined.images, plain.images)
    again = engine.generate(make_request())
    assert_same_pixels(again.images, refined.images)


def test_controlnet_jobs_are_not_refined(engine):
    unit = ControlUnitInput(ControlType.CANNY, control_image=noise_image(3, SIZE, SIZE))
    result = engine.generate(
        make_request(method=Method.CONTROLNET, control_units=[unit])
    )
    assert result.snapshot["refiner"] is None
    assert "denoising_end" not in result.snapshot["call"]


def test_a_refiner_on_an_sd15_model_is_refused(tiny_model_root):
    engine = Engine(with_refiner(tiny_model_root, TINY_MODEL_KEY))
    with pytest.raises(InvalidRequest, match="has no refiner"):
        engine.generate(make_request(model=TINY_MODEL_KEY))


def test_the_catalog_reads_the_refiner_and_checks_its_switch():
    spec = model_catalog(
        {
            "xl": {
                "source": "stabilityai/stable-diffusion-xl-base-1.0",
                "refiner": "stabilityai/stable-diffusion-xl-refiner-1.0",
                "refiner_switch": 0.75,
            }
        },
        tiny_model_dir="unused",
    )["xl"]
    assert (spec.refiner, spec.refiner_switch) == (
        "stabilityai/stable-diffusion-xl-refiner-1.0",
        0.75,
    )
    assert model_catalog({"xl": "a/b"}, tiny_model_dir="unused")["xl"].refiner is None
    for switch in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="refiner_switch"):
            ModelSpec(key="xl", source="a/b", refiner="c/d", refiner_switch=switch)


def test_the_plan_check_refuses_a_refiner_before_anything_is_queued(
    tiny_model_root: Path,
):
    from generation.engine.plan import plan_problems

    assert plan_problems(make_request(), with_refiner(tiny_model_root)) == []
    (problem,) = plan_problems(
        make_request(model=TINY_MODEL_KEY),
        with_refiner(tiny_model_root, TINY_MODEL_KEY),
    )
    assert "has no refiner" in problem.message
    missing = with_refiner(tiny_model_root)
    spec = missing.models[TINY_SDXL_MODEL_KEY]
    missing.models[TINY_SDXL_MODEL_KEY] = replace(
        spec, refiner=str(tiny_model_root / "no-such-refiner")
    )
    (problem,) = plan_problems(make_request(), missing)
    assert "no-such-refiner" in problem.message and problem.code == "model_not_found"


# --- A run without the refiner --------------------------------------------------


def test_a_run_can_switch_the_refiner_off_and_its_replay_keeps_it_off(
    engine, tiny_model_root
):
    base = raw_pipeline(tiny_model_root, StableDiffusionXLPipeline)
    raw = base(
        **{"prompt": PROMPT, "negative_prompt": NEGATIVE},
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        width=SIZE,
        height=SIZE,
        generator=generator(),
    ).images
    result = engine.generate(make_request(use_refiner=False))
    assert_same_pixels(result.images, raw)
    snapshot = result.snapshot
    assert snapshot["request"]["use_refiner"] is False
    assert snapshot["refiner"] is None
    assert "denoising_end" not in snapshot["call"]
    # What did not run is not in the fingerprint a replay verifies.
    assert "refiner" not in snapshot["model"]
    assert any("refiner was switched off" in note for note in result.notes)

    replayed = request_from_snapshot(
        snapshot, open_image=lambda key: None, read_bytes=lambda key: b""
    )
    assert replayed.use_refiner is False
    assert_same_pixels(engine.generate(replayed).images, raw)
    # A refined run's snapshot replays refined.
    refined = engine.generate(make_request())
    assert refined.snapshot["request"]["use_refiner"] is True
    again = request_from_snapshot(
        refined.snapshot, open_image=lambda key: None, read_bytes=lambda key: b""
    )
    assert_same_pixels(engine.generate(again).images, refined.images)


def test_the_plan_check_skips_a_refiner_switched_off(tiny_model_root: Path):
    from generation.engine.plan import plan_problems

    missing = with_refiner(tiny_model_root)
    spec = missing.models[TINY_SDXL_MODEL_KEY]
    missing.models[TINY_SDXL_MODEL_KEY] = replace(
        spec, refiner=str(tiny_model_root / "no-such-refiner")
    )
    assert plan_problems(make_request(use_refiner=False), missing) == []


# --- Long prompts on the refiner ------------------------------------------------


@pytest.fixture(scope="module")
def raw_refiner(tiny_model_root: Path):
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        tiny_model_root / TINY_SDXL_REFINER_DIR, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_fitting_prompt_encodes_on_the_refiner_exactly_as_diffusers(raw_refiner):
    """(The test's prompt and negative prompt are test_sdxl's, which fit.)"""
    assert raw_refiner.text_encoder is None  # the second encoder alone
    assert_encodes_as_diffusers(raw_refiner, SDXL.refiner_text_encoding)


def test_a_long_prompt_is_chunked_on_the_refiner_as_on_the_base(
    engine, tiny_model_root, raw_refiner
):
    long_prompt = words_of(raw_refiner.tokenizer_2, 160)

    def prompts(pipe: Any) -> dict[str, Any]:
        encoding = (
            SDXL.text_encoding
            if pipe.text_encoder is not None
            else SDXL.refiner_text_encoding
        )
        embeds, _ = encode_long_prompt(
            pipe, encoding, long_prompt, NEGATIVE, "cpu", True
        )
        return embeds

    raw = raw_ensemble(
        tiny_model_root,
        StableDiffusionXLPipeline,
        prompts=prompts,
        width=SIZE,
        height=SIZE,
    )
    result = engine.generate(make_request(prompt=long_prompt))
    assert_same_pixels(result.images, raw)
    refiner = result.snapshot["refiner"]
    assert refiner["prompt_encoding"]["chunks"] == 3
    assert refiner["prompt_encoding"]["truncated"] is False
    assert refiner["call"]["prompt_embeds"]["tensor_shape"] == [1, 3 * 77, 48]
    assert "prompt" not in refiner["call"]


# --- IP-Adapter and LoRA: the base's, with the reason on the content ----------------


def test_diffusers_refuses_the_bases_ip_adapter_and_lora_on_the_refiner(
    tiny_model_root, raw_refiner
):
    """The documented reason, shown: the weights do not fit the refiner's UNet."""
    with pytest.raises(ValueError, match="expected shape"):
        raw_refiner.load_ip_adapter(
            tiny_model_root / "ip-adapter",
            subfolder="sdxl_models",
            weight_name="ip-adapter_sdxl_vit-h.safetensors",
            image_encoder_folder="models/image_encoder",
        )
    with pytest.raises(RuntimeError, match="size mismatch"):
        raw_refiner.load_lora_weights(
            tiny_model_root / "lora",
            weight_name="persona-sdxl.safetensors",
            adapter_name="p",
        )


def test_ip_adapter_with_the_refiner_equals_the_raw_ensemble_and_says_so(
    engine, tiny_model_root
):
    references = [noise_image(7)]

    raw = raw_ensemble(
        tiny_model_root,
        StableDiffusionXLPipeline,
        prepare_base=lambda pipe: load_ip_adapter(
            pipe, tiny_model_root, "ip-adapter_sdxl_vit-h.safetensors", 0.7
        ),
        width=SIZE,
        height=SIZE,
        ip_adapter_image=[references],
    )
    result = engine.generate(
        make_request(
            method=Method.IP_ADAPTER,
            references=[ReferenceInput(image) for image in references],
            ip_adapter=IPAdapterInput(scale=0.7, face_crop=False),
        )
    )
    assert_same_pixels(result.images, raw)
    refiner = result.snapshot["refiner"]
    assert refiner["without"] == ["ip_adapter"]
    assert "diffusers refuses them" in refiner["without_reason"]
    assert "ip_adapter_image" not in refiner["call"]
    (note,) = [note for note in result.notes if "refiner ran without" in note]
    assert "the IP-Adapter" in note and "switch the refiner off" in note


def test_a_lora_with_the_refiner_equals_the_raw_ensemble_and_says_so(
    engine, tiny_model_root
):
    lora_bytes = (tiny_model_root / "lora" / "persona-sdxl.safetensors").read_bytes()

    def with_lora(pipe: Any) -> None:
        pipe.load_lora_weights(
            tiny_model_root / "lora",
            weight_name="persona-sdxl.safetensors",
            adapter_name="p",
        )
        pipe.set_adapters(["p"], adapter_weights=[0.9])

    raw = raw_ensemble(
        tiny_model_root,
        StableDiffusionXLPipeline,
        prepare_base=with_lora,
        width=SIZE,
        height=SIZE,
    )
    result = engine.generate(make_request(lora=LoraInput(lora_bytes, scale=0.9)))
    assert_same_pixels(result.images, raw)
    assert result.snapshot["refiner"]["without"] == ["lora"]
    assert any("without the LoRA" in note for note in result.notes)
    # Nothing is left on the refiner or the base for the next job.
    plain = engine.generate(make_request())
    assert plain.snapshot["refiner"]["without"] == []
    assert not any("refiner ran without" in note for note in plain.notes)


def test_the_worker_preload_loads_the_refiner_beside_its_base(tiny_model_root):
    from generation.engine.registry import PipelineRegistry

    registry = PipelineRegistry(with_refiner(tiny_model_root))
    registry.preload([TINY_SDXL_MODEL_KEY])
    kinds = {entry["kind"] for entry in registry.stats()["loaded"]}
    assert "refiner" in kinds
    assert "refiner" in registry.fingerprint(TINY_SDXL_MODEL_KEY)
