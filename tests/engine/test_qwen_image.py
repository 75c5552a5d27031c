"""Qwen-Image through the engine gives exactly what raw diffusers gives.

On the tiny Qwen-Image model (``tiny_qwen``: one folder in the layout of
Qwen/Qwen-Image-Edit-2509) the same inputs go through the engine and through
``QwenImagePipeline`` / ``QwenImageEditPlusPipeline`` built here with
``from_pretrained``; the pixels must be identical, for text and for reference
editing with one and with three references (given natively, as a list), and an
engine result replays with raw diffusers from its snapshot alone. Then the
family's refusals: an SD LoRA on Qwen-Image and a Qwen LoRA on SD, methods the
family has no pipeline for, sizes off its steps of 16, reference_edit on a
model that cannot edit.

A reference is encoded by the VAE at about one megapixel whatever its size (the
pipeline's own rule), which is the costly part here: the tests use few
references and few runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import QwenImageEditPlusPipeline, QwenImagePipeline
from PIL import Image
from safetensors.torch import load_file

from generation.engine.config import ModelSpec, tiny_engine_config
from generation.engine.errors import InvalidRequest
from generation.engine.families import (
    QWEN_IMAGE,
    FamilyMismatch,
    ModelTraits,
    UnknownFamily,
    check_lora_fits,
    lora_traits,
    traits_from_configs,
    traits_of_folder,
)
from generation.engine.plan import plan_check, plan_problems
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    LoraInput,
    Method,
    ReferenceInput,
    ReferenceRole,
)
from generation.engine.runner import Engine
from generation.engine.tiny_flux import FLUX_KONTEXT_DEV
from generation.engine.tiny_qwen import QWEN_IMAGE as RELEASED_QWEN
from generation.engine.tiny_qwen import SPECIAL_TOKENS
from generation.engine.vocabulary import (
    TINY_FLUX_MODEL_KEY,
    TINY_MODEL_KEY,
    TINY_QWEN_IMAGE_MODEL_KEY,
)
from tests.engine.qwen_loras import tiny_transformer, transformer_lora, write_lora
from tests.engine.test_reproducibility import (
    assert_same_pixels,
    noise_image,
    replay_snapshot,
)

SEED = 2468
STEPS = 2
SIZE = 64
PROMPT = "the same woman, now on a night street in the rain"
NEGATIVE = "blurry"
TRUE_CFG = 4.0


@pytest.fixture(scope="module")
def qwen_dir(tiny_model_root: Path) -> Path:
    return tiny_model_root / "qwen-image"


@pytest.fixture(scope="module")
def engine(tiny_model_root: Path) -> Engine:
    """One engine for the module: each case also checks that the jobs before it
    left nothing behind in the shared modules."""
    return Engine(tiny_engine_config(tiny_model_root))


@pytest.fixture(scope="module")
def edit_pipe(qwen_dir: Path) -> QwenImageEditPlusPipeline:
    """The edit pipeline a person would build with diffusers alone."""
    pipe = QwenImageEditPlusPipeline.from_pretrained(qwen_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def text_pipe(qwen_dir: Path) -> QwenImagePipeline:
    pipe = QwenImagePipeline.from_pretrained(qwen_dir, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_request(**overrides: Any) -> GenerationRequest:
    values: dict[str, Any] = {
        "model": TINY_QWEN_IMAGE_MODEL_KEY,
        "prompt": PROMPT,
        "negative_prompt": NEGATIVE,
        "seed": SEED,
        "steps": STEPS,
        "true_cfg_scale": TRUE_CFG,
        "width": SIZE,
        "height": SIZE,
    }
    return GenerationRequest(**{**values, **overrides})


def raw_call(pipe: Any, **kwargs: Any) -> list[Image.Image]:
    return pipe(
        **{
            "prompt": PROMPT,
            "negative_prompt": NEGATIVE,
            "true_cfg_scale": TRUE_CFG,
            "num_inference_steps": STEPS,
            "width": SIZE,
            "height": SIZE,
            "generator": torch.Generator("cpu").manual_seed(SEED),
            **kwargs,
        }
    ).images


# --- The tiny model -------------------------------------------------------------


def test_the_tiny_model_is_a_qwen_image_edit_plus_folder(qwen_dir: Path):
    traits = traits_of_folder(qwen_dir)
    assert traits.family is QWEN_IMAGE
    assert traits.cross_attention_dim == 16  # the tiny joint_attention_dim
    assert "QwenImageEditPlusPipeline" in traits.found


def test_the_tiny_tokenizer_keeps_the_templates_special_tokens_whole(
    edit_pipe: QwenImageEditPlusPipeline,
):
    tokenizer = edit_pipe.tokenizer
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(256, 256 + len(SPECIAL_TOKENS)))
    text = "<|im_start|>user\nPicture 1: <|vision_start|><|image_pad|><|vision_end|>"
    encoded = tokenizer(text).input_ids
    for token in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>"):
        assert encoded.count(tokenizer.convert_tokens_to_ids(token)) == 1
    # Every other character is one byte-level token: "user\nPicture 1: ".
    assert len(encoded) == 3 + len("user\nPicture 1: ") + 1
    config = edit_pipe.text_encoder.config
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids(
        "<|vision_start|>"
    )


def test_the_processor_gives_each_reference_its_image_tokens(
    edit_pipe: QwenImageEditPlusPipeline,
):
    processor = edit_pipe.processor
    pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    text = "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
    # 392 x 392: 28 x 28 patches of 14 pixels, merged 2 x 2 into 196 tokens.
    inputs = processor(
        text=[text], images=[noise_image(3, 392, 392)], return_tensors="pt"
    )
    assert inputs["image_grid_thw"].tolist() == [[1, 28, 28]]
    assert int((inputs["input_ids"] == pad).sum()) == 196


# --- The same pixels as raw diffusers -------------------------------------------


def test_text_equals_raw_diffusers_with_true_cfg_and_replays(
    engine: Engine, text_pipe: QwenImagePipeline
):
    raw = raw_call(text_pipe)
    result = engine.generate(make_request(method=Method.TEXT))
    assert_same_pixels(result.images, raw)
    snapshot = result.snapshot
    assert snapshot["family"] == "qwen-image"
    assert snapshot["pipeline_class"] == "QwenImagePipeline"
    assert snapshot["call"]["true_cfg_scale"] == TRUE_CFG
    assert snapshot["call"]["negative_prompt"] == NEGATIVE
    assert snapshot["scheduler"]["class"] == "FlowMatchEulerDiscreteScheduler"
    assert_same_pixels(replay_snapshot(result, None), raw)


def test_one_reference_edit_equals_raw_edit_plus_and_replays(
    engine: Engine, edit_pipe: QwenImageEditPlusPipeline
):
    reference = noise_image(11, 96, 80)
    raw = raw_call(edit_pipe, image=[reference])
    result = engine.generate(
        make_request(
            method=Method.REFERENCE_EDIT,
            references=[ReferenceInput(image=reference, role=ReferenceRole.FACE)],
        )
    )
    assert_same_pixels(result.images, raw)
    assert result.method is Method.REFERENCE_EDIT
    assert result.snapshot["pipeline_class"] == "QwenImageEditPlusPipeline"
    assert result.snapshot["reference_edit"]["references"] == [0]
    assert result.snapshot["reference_edit"]["multi_reference"] == "native"
    assert_same_pixels(replay_snapshot(result, None), raw)


def test_three_references_go_natively_primary_first_then_by_role(
    engine: Engine, edit_pipe: QwenImageEditPlusPipeline
):
    # Four references: the primary, then face and full body by role; the pose
    # reference is left out (a reference edit takes at most three).
    pose, full_body, primary, face = (
        noise_image(seed, 64 + 16 * seed, 64) for seed in (21, 22, 23, 24)
    )
    references = [
        ReferenceInput(image=pose, role=ReferenceRole.POSE),
        ReferenceInput(image=full_body, role=ReferenceRole.FULL_BODY),
        ReferenceInput(image=primary, role=ReferenceRole.HALF_BODY, primary=True),
        ReferenceInput(image=face, role=ReferenceRole.FACE),
    ]
    # One step without true CFG (true_cfg_scale 1): each reference adds about
    # 4,100 tokens to every transformer pass; the guidance is checked above.
    raw = raw_call(
        edit_pipe,
        image=[primary, face, full_body],
        negative_prompt=None,
        num_inference_steps=1,
    )
    result = engine.generate(
        make_request(
            method=Method.REFERENCE_EDIT,
            references=references,
            true_cfg_scale=1.0,
            steps=1,
        )
    )
    assert result.snapshot["call"]["true_cfg_scale"] == 1.0
    assert result.snapshot["reference_edit"]["references"] == [2, 3, 1]
    assert_same_pixels(result.images, raw)


def test_true_cfg_is_on_by_default_with_an_empty_negative_prompt(
    engine: Engine, text_pipe: QwenImagePipeline
):
    """As the pipelines do: any negative prompt, "" too, turns true CFG on at
    their default scale (4.0); the studio strips a blank negative prompt."""
    raw = raw_call(text_pipe, negative_prompt="")
    result = engine.generate(
        make_request(method=Method.TEXT, negative_prompt="", true_cfg_scale=None)
    )
    assert result.snapshot["call"]["negative_prompt"] == ""
    assert "true_cfg_scale" not in result.snapshot["call"]
    assert_same_pixels(result.images, raw)
    without = raw_call(text_pipe, negative_prompt=None)
    assert without[0].tobytes() != raw[0].tobytes()


@pytest.fixture(scope="module")
def qwen_lora_files(
    tiny_model_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The tiny Qwen-Image LoRA as shipped (kohya), and LoRAs in diffusers' and
    ComfyUI's key styles on the same transformer."""
    folder = tmp_path_factory.mktemp("qwen-loras")
    transformer = tiny_transformer(tiny_model_root, "qwen-image")
    files = {"kohya": tiny_model_root / "lora" / "persona-qwen-image.safetensors"}
    for style in ("diffusers", "comfyui"):
        files[style] = write_lora(
            transformer_lora(transformer, style), folder / f"{style}.safetensors"
        )
    files["attention-only"] = write_lora(
        transformer_lora(transformer, "diffusers", attention_only=True),
        folder / "attention.safetensors",
    )
    return files


@pytest.mark.parametrize("style", ["kohya", "diffusers", "comfyui", "attention-only"])
def test_a_qwen_lora_equals_raw_diffusers_and_is_reset_after_the_job(
    engine: Engine,
    text_pipe: QwenImagePipeline,
    qwen_lora_files: dict[str, Path],
    style: str,
):
    path = qwen_lora_files[style]
    plain = engine.generate(make_request(method=Method.TEXT)).images
    text_pipe.load_lora_weights(path, adapter_name="persona")
    text_pipe.set_adapters(["persona"], adapter_weights=[0.8])
    try:
        raw = raw_call(text_pipe)
    finally:
        text_pipe.unload_lora_weights()
    with_lora = engine.generate(
        make_request(
            method=Method.TEXT,
            lora=LoraInput(weights=path.read_bytes(), scale=0.8, name=style),
        )
    )
    assert_same_pixels(with_lora.images, raw)
    assert with_lora.snapshot["lora"]["scale"] == 0.8
    # The LoRA changed the picture, and the next job is as if it never ran.
    assert raw[0].tobytes() != plain[0].tobytes()
    assert_same_pixels(engine.generate(make_request(method=Method.TEXT)).images, plain)


def test_comfyuis_alpha_scales_the_lora(
    engine: Engine, qwen_lora_files: dict[str, Path], tmp_path: Path
):
    """ComfyUI's ``alpha`` is honoured: the same weights without it (scale 1
    instead of alpha / rank) give other pixels."""
    weights = load_file(qwen_lora_files["comfyui"])
    without_alpha = {k: v for k, v in weights.items() if not k.endswith(".alpha")}
    images = [
        engine.generate(
            make_request(method=Method.TEXT, lora=LoraInput(weights=data))
        ).images[0]
        for data in (
            qwen_lora_files["comfyui"].read_bytes(),
            write_lora(without_alpha, tmp_path / "no-alpha.safetensors").read_bytes(),
        )
    ]
    assert images[0].tobytes() != images[1].tobytes()


def test_text_and_edit_share_one_base_transformer(engine: Engine):
    registry = engine.registry
    text, _ = registry.pipeline(TINY_QWEN_IMAGE_MODEL_KEY, Method.TEXT)
    edit, hit = registry.pipeline(TINY_QWEN_IMAGE_MODEL_KEY, Method.REFERENCE_EDIT)
    assert hit
    assert type(text) is QwenImagePipeline
    assert type(edit) is QwenImageEditPlusPipeline
    for name in ("transformer", "vae", "text_encoder", "tokenizer"):
        assert getattr(text, name) is getattr(edit, name)
    assert edit.processor is not None
    assert text.scheduler is not edit.scheduler


# --- Refusals, before anything is queued ----------------------------------------


def test_an_sd_lora_on_qwen_image_is_refused_with_the_reason(
    engine: Engine, tiny_model_root: Path
):
    sd_lora = (tiny_model_root / "lora" / "persona.safetensors").read_bytes()
    with pytest.raises(FamilyMismatch) as refused:
        engine.plan(make_request(method=Method.TEXT, lora=LoraInput(weights=sd_lora)))
    message = str(refused.value)
    assert "Qwen-Image" in message
    assert "UNet" in message


def test_a_qwen_lora_on_stable_diffusion_is_refused(
    engine: Engine, tiny_model_root: Path
):
    weights = (tiny_model_root / "lora" / "persona-qwen-image.safetensors").read_bytes()
    request = make_request(
        model=TINY_MODEL_KEY, true_cfg_scale=None, lora=LoraInput(weights=weights)
    )
    with pytest.raises(FamilyMismatch, match="Qwen-Image"):
        engine.plan(request)


def test_an_attention_only_qwen_lora_on_flux_is_refused_by_its_shapes(
    engine: Engine, qwen_lora_files: dict[str, Path]
):
    """Its keys (``transformer_blocks.N.attn.to_q``...) are FLUX.1's too: the
    blocks it reaches and its projections' width tell it apart."""
    weights = qwen_lora_files["attention-only"].read_bytes()
    request = make_request(
        model=TINY_FLUX_MODEL_KEY,
        true_cfg_scale=None,
        lora=LoraInput(weights=weights, name="attention"),
    )
    with pytest.raises(FamilyMismatch) as refused:
        engine.plan(request)
    message = str(refused.value)
    assert "transformer_blocks 0-1, attention width 48" in message
    assert "model 'tiny-flux' is FLUX.1 with 1 transformer_blocks of attention " in (
        message
    )
    assert "Use a LoRA trained for FLUX.1." in message
    # On its own model the same file is accepted.
    engine.plan(make_request(lora=LoraInput(weights=weights)))


def test_an_attention_only_flux_lora_on_qwen_image_is_refused(
    engine: Engine, tiny_model_root: Path, tmp_path: Path
):
    flux_attention = transformer_lora(
        tiny_transformer(tiny_model_root, "flux"), "diffusers", attention_only=True
    )
    weights = write_lora(flux_attention, tmp_path / "flux.safetensors").read_bytes()
    with pytest.raises(FamilyMismatch) as refused:
        engine.plan(make_request(lora=LoraInput(weights=weights, name="flux")))
    message = str(refused.value)
    assert "attention width 32" in message
    assert "Qwen-Image with 2 transformer_blocks of attention width 48" in message


def _header(keys: dict[str, list[int]]) -> dict[str, Any]:
    return {
        key: {"dtype": "BF16", "shape": shape, "data_offsets": [0, 0]}
        for key, shape in keys.items()
    }


def _released(architecture: Any, pipeline: str, transformer: str) -> ModelTraits:
    config = {"_class_name": transformer, **architecture.transformer}
    return traits_from_configs({"_class_name": pipeline}, config, "released")


@pytest.mark.parametrize("prefix", ["transformer.", "diffusion_model.", "lora_unet_"])
def test_a_released_size_attention_lora_past_fluxs_19_blocks_is_qwen_image(
    prefix: str,
):
    """At the released sizes both attentions are 3072 wide: a LoRA reaching
    block 19 or further (Qwen-Image has 60, FLUX.1 19 double blocks) is
    Qwen-Image's, in each key style."""
    separator = "_" if prefix == "lora_unet_" else "."
    keys = {}
    for block in range(60):
        stem = separator.join(["transformer_blocks", str(block), "attn", "to_q"])
        keys[f"{prefix}{stem}.lora_down.weight"] = [16, 3072]
        keys[f"{prefix}{stem}.lora_up.weight"] = [3072, 16]
    header = _header(keys)
    assert lora_traits(header)[0] is QWEN_IMAGE
    qwen = _released(
        RELEASED_QWEN, "QwenImageEditPlusPipeline", "QwenImageTransformer2DModel"
    )
    check_lora_fits(qwen, header, "qwen-image-edit", "lora")
    flux = _released(FLUX_KONTEXT_DEV, "FluxKontextPipeline", "FluxTransformer2DModel")
    with pytest.raises(FamilyMismatch) as refused:
        check_lora_fits(flux, header, "kontext", "qwen")
    assert str(refused.value).startswith(
        "The LoRA 'qwen' is for Qwen-Image (Diffusion transformer keys "
        "(transformer_blocks); transformer_blocks 0-59, attention width 3072); "
        "model 'kontext' is FLUX.1"
    )


def test_reference_edit_on_stable_diffusion_is_refused_naming_the_families(
    engine: Engine,
):
    request = make_request(
        model=TINY_MODEL_KEY,
        true_cfg_scale=None,
        method=Method.REFERENCE_EDIT,
        references=[ReferenceInput(image=noise_image(5))],
    )
    with pytest.raises(InvalidRequest) as refused:
        engine.plan(request)
    assert "qwen-image" in str(refused.value)


def test_methods_without_a_qwen_pipeline_are_refused(engine: Engine):
    reference = ReferenceInput(image=noise_image(6))
    for request in (
        make_request(method=Method.IMG2IMG, references=[reference]),
        make_request(
            method=Method.CONTROLNET,
            control_units=[
                ControlUnitInput(
                    control_type=ControlType.CANNY, control_image=noise_image(7)
                )
            ],
        ),
    ):
        with pytest.raises(InvalidRequest, match="Qwen-Image"):
            engine.plan(request)


def test_sizes_come_in_steps_of_16(engine: Engine):
    with pytest.raises(InvalidRequest, match="multiple of 16; use 64 or 80"):
        engine.plan(make_request(method=Method.TEXT, width=72))


def test_a_qwen_folder_declared_as_another_family_is_refused(
    tiny_model_root: Path, qwen_dir: Path
):
    config = tiny_engine_config(tiny_model_root)
    config.models["wrong"] = ModelSpec(
        key="wrong", source=str(qwen_dir), family="sdxl"
    )
    with pytest.raises(UnknownFamily, match="Qwen-Image"):
        Engine(config).registry.family("wrong")


def test_reference_edit_is_refused_on_a_text_only_qwen_image_model(
    tiny_model_root: Path, text_pipe: QwenImagePipeline, tmp_path: Path
):
    """A Qwen/Qwen-Image folder (QwenImagePipeline, no processor) draws from text
    but was not trained to edit: reference_edit names the model it needs."""
    folder = tmp_path / "qwen-image-text"
    text_pipe.save_pretrained(folder)
    assert not (folder / "processor").exists()
    config = tiny_engine_config(tiny_model_root)
    config.model_roots.append(tmp_path)
    config.models["text-only"] = ModelSpec(key="text-only", source=str(folder))
    engine = Engine(config)
    request = make_request(
        model="text-only",
        method=Method.REFERENCE_EDIT,
        references=[ReferenceInput(image=noise_image(8))],
    )
    with pytest.raises(InvalidRequest, match="QwenImageEditPlusPipeline"):
        engine.plan(request)
    engine.plan(make_request(model="text-only", method=Method.TEXT))
    shutil.rmtree(folder)


def test_the_plan_check_refuses_reference_edit_where_it_cannot_run(
    tiny_model_root: Path, text_pipe: QwenImagePipeline, tmp_path: Path
):
    """Where a person acts (save, generate, retry), before anything loads: on a
    Stable Diffusion model, and on a text-only Qwen-Image model."""
    folder = tmp_path / "qwen-image-text"
    text_pipe.save_pretrained(folder)
    config = tiny_engine_config(tiny_model_root)
    config.model_roots.append(tmp_path)
    config.models["text-only"] = ModelSpec(key="text-only", source=str(folder))
    references = [ReferenceInput(image=noise_image(9))]
    on_sd = make_request(
        model=TINY_MODEL_KEY,
        true_cfg_scale=None,
        method=Method.REFERENCE_EDIT,
        references=references,
    )
    problems = plan_problems(on_sd, config)
    assert [problem.code for problem in problems] == ["invalid_request"]
    assert "qwen-image (Qwen-Image)" in problems[0].message
    on_text_only = make_request(
        model="text-only", method=Method.REFERENCE_EDIT, references=references
    )
    with pytest.raises(InvalidRequest, match="not a Qwen-Image editing model"):
        plan_check(on_text_only, config)
    plan_check(
        make_request(method=Method.REFERENCE_EDIT, references=references), config
    )


def test_quantization_takes_the_two_biggest_modules(
    edit_pipe: QwenImageEditPlusPipeline,
):
    """STUDIO_QUANTIZATION quantizes Qwen-Image's transformer and Qwen2.5-VL
    (named ``text_encoder`` here, not FLUX.1's ``text_encoder_2``)."""
    sizes = {
        name: sum(parameter.numel() for parameter in module.parameters())
        for name, module in edit_pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    biggest = sorted(sizes, key=sizes.get, reverse=True)[:2]
    assert sorted(QWEN_IMAGE.quantized_components) == sorted(biggest)


def test_a_stable_diffusion_scheduler_is_refused_for_qwen_image(engine: Engine):
    with pytest.raises(InvalidRequest, match="FlowMatchEulerDiscreteScheduler"):
        engine.plan(
            make_request(method=Method.TEXT, scheduler="EulerDiscreteScheduler")
        )
