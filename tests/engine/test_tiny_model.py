"""The tiny model is written deterministically and loads like the real formats."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
)
from diffusers.models.embeddings import ImageProjection, IPAdapterPlusImageProjection
from PIL import Image
from safetensors import safe_open
from transformers import CLIPTokenizer

from generation.engine.config import ModelSpec, is_tiny_model_path
from generation.engine.requests import ControlType
from generation.engine.tiny_model import write_tiny_model


def file_digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def generate(pipe: StableDiffusionPipeline, **kwargs: object) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    output = pipe(
        "a portrait of a woman",
        num_inference_steps=2,
        width=64,
        height=64,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    )
    return output.images[0]


@pytest.fixture
def pipe(tiny_model_root: Path) -> StableDiffusionPipeline:
    return StableDiffusionPipeline.from_pretrained(
        tiny_model_root / "sd15", local_files_only=True
    )


def test_writing_twice_gives_identical_bytes(tiny_model_root: Path, tmp_path: Path):
    again = write_tiny_model(tmp_path / "again")

    assert file_digests(again) == file_digests(tiny_model_root)
    assert len(file_digests(again)) > 30


def test_rewriting_a_tiny_model_in_place_gives_identical_bytes(
    tiny_model_root: Path, tmp_path: Path
):
    target = write_tiny_model(tmp_path / "tiny")
    (target / "sd15" / "stale-file.txt").write_text("left over")

    write_tiny_model(target)

    assert file_digests(target) == file_digests(tiny_model_root)


def test_refuses_a_non_empty_folder_that_is_not_a_tiny_model(tmp_path: Path):
    (tmp_path / "precious.txt").write_text("do not delete")

    with pytest.raises(FileExistsError):
        write_tiny_model(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "do not delete"


def test_marker_says_the_images_are_noise(tiny_model_root: Path, tmp_path: Path):
    marker = json.loads((tiny_model_root / "TINY_MODEL.json").read_text())

    assert marker["tiny"] is True
    assert "noise" in marker["note"]
    assert is_tiny_model_path(tiny_model_root)
    assert is_tiny_model_path(tiny_model_root / "sd15")
    assert is_tiny_model_path(tiny_model_root / "lora" / "persona.safetensors")
    assert not is_tiny_model_path(tmp_path)
    assert ModelSpec(key="any", source=str(tiny_model_root / "sd15")).is_tiny
    assert not ModelSpec(key="any", source=str(tmp_path)).is_tiny


def test_loads_as_a_stable_diffusion_1_5_pipeline(pipe: StableDiffusionPipeline):
    assert isinstance(pipe.tokenizer, CLIPTokenizer)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.text_encoder.config.max_position_embeddings == 77
    assert pipe.vae_scale_factor == 8  # SD 1.5's latent downsampling
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"
    assert pipe.safety_checker is None

    image = generate(pipe)

    assert image.shape == (64, 64, 3)
    assert image.std() > 0


def test_tokenizer_has_clip_special_tokens_and_one_token_per_character(
    pipe: StableDiffusionPipeline,
):
    ids = pipe.tokenizer("a cat").input_ids

    assert ids[0] == pipe.tokenizer.bos_token_id
    assert ids[-1] == pipe.tokenizer.eos_token_id
    assert len(ids) == 2 + len("acat")
    long_prompt = "a very detailed portrait " * 5
    assert len(pipe.tokenizer(long_prompt).input_ids) > 77


def test_accepts_512_pixel_requests(pipe: StableDiffusionPipeline):
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "x", num_inference_steps=1, width=512, height=512, output_type="np"
    ).images[0]

    assert image.shape == (512, 512, 3)


def test_single_file_checkpoint_holds_the_same_weights(tiny_model_root: Path):
    single = StableDiffusionPipeline.from_single_file(
        str(tiny_model_root / "sd15.safetensors"),
        config=str(tiny_model_root / "sd15"),
        local_files_only=True,
    )
    folder = StableDiffusionPipeline.from_pretrained(
        tiny_model_root / "sd15", local_files_only=True
    )
    with safe_open(tiny_model_root / "sd15.safetensors", "pt") as checkpoint:
        keys = set(checkpoint.keys())

    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in keys
    for name in ("unet", "vae", "text_encoder"):
        expected = getattr(folder, name).state_dict()
        loaded = getattr(single, name).state_dict()
        assert loaded.keys() == expected.keys()
        assert all(torch.equal(loaded[key], expected[key]) for key in expected)


@pytest.mark.parametrize(
    ("weight_name", "projection"),
    [
        ("ip-adapter_sd15.safetensors", ImageProjection),
        ("ip-adapter-plus-face_sd15.safetensors", IPAdapterPlusImageProjection),
    ],
)
def test_ip_adapters_load_from_an_h94_style_folder_and_change_the_output(
    pipe: StableDiffusionPipeline, tiny_model_root: Path, weight_name, projection
):
    without = generate(pipe)

    pipe.load_ip_adapter(
        str(tiny_model_root / "ip-adapter"),
        subfolder="models",
        weight_name=weight_name,
        image_encoder_folder="image_encoder",
    )
    pipe.set_ip_adapter_scale(0.8)
    face = Image.new("RGB", (96, 128), (210, 160, 140))
    with_adapter = generate(pipe, ip_adapter_image=face)

    assert isinstance(pipe.unet.encoder_hid_proj.image_projection_layers[0], projection)
    assert pipe.image_encoder is not None
    assert not np.array_equal(with_adapter, without)


def test_ip_adapter_files_use_the_original_key_layout(tiny_model_root: Path):
    folder = tiny_model_root / "ip-adapter" / "models"
    with safe_open(folder / "ip-adapter_sd15.safetensors", "pt") as plain:
        plain_keys = set(plain.keys())
    with safe_open(folder / "ip-adapter-plus-face_sd15.safetensors", "pt") as face:
        face_keys = set(face.keys())

    assert {"image_proj.proj.weight", "image_proj.norm.weight"} <= plain_keys
    assert "ip_adapter.1.to_k_ip.weight" in plain_keys
    assert {"image_proj.latents", "image_proj.layers.3.0.to_kv.weight"} <= face_keys


def test_lora_loads_in_kohya_format_and_changes_the_output(
    pipe: StableDiffusionPipeline, tiny_model_root: Path
):
    lora = tiny_model_root / "lora" / "persona.safetensors"
    with safe_open(lora, "pt") as weights:
        keys = list(weights.keys())
    without = generate(pipe)

    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name)
    with_lora = generate(pipe)

    assert any(key.startswith("lora_unet_") for key in keys)
    assert any(key.startswith("lora_te_") for key in keys)
    assert not np.array_equal(with_lora, without)


def test_every_control_type_has_a_controlnet_that_fits_the_unet(
    pipe: StableDiffusionPipeline, tiny_model_root: Path
):
    controlnets = {
        control_type: ControlNetModel.from_pretrained(
            tiny_model_root / "controlnet" / control_type.value
        )
        for control_type in ControlType
    }
    weights = {
        t: next(iter(model.controlnet_down_blocks.parameters())).sum().item()
        for t, model in controlnets.items()
    }
    controlled = StableDiffusionControlNetPipeline.from_pipe(
        pipe, controlnet=controlnets[ControlType.CANNY]
    )
    edges = Image.new("RGB", (64, 64))
    edges.paste((255, 255, 255), (16, 16, 48, 48))

    image = generate(controlled, image=edges)

    assert len(set(weights.values())) == len(ControlType)  # distinct weights
    assert all(
        model.config.block_out_channels == pipe.unet.config.block_out_channels
        for model in controlnets.values()
    )
    assert not np.array_equal(image, generate(pipe))


def test_a_ddim_or_ddpm_scheduler_from_its_config_needs_no_clip_sample_patch(
    pipe: StableDiffusionPipeline,
):
    import warnings

    from diffusers import DDIMScheduler, DDPMScheduler

    for scheduler_cls in (DDIMScheduler, DDPMScheduler):
        scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        assert scheduler.config.clip_sample is False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            StableDiffusionPipeline.from_pipe(pipe, scheduler=scheduler)
        assert [
            str(warning.message)
            for warning in caught
            if "clip_sample" in str(warning.message)
        ] == []
