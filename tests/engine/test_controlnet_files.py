"""ControlNets and IP-Adapters as they are downloaded: a single-file ControlNet
in the original layout (``control_v11p_sd15_openpose_fp16.safetensors``, as
AUTOMATIC1111 and ComfyUI keep them), fp16-only downloads through ``variant``,
and Hub revisions pinned per entry; each equal to raw diffusers."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionXLControlNetPipeline,
)
from safetensors.torch import save_file
from transformers import CLIPVisionModelWithProjection

from generation.engine.config import (
    ControlNetSpec,
    EngineConfig,
    IPAdapterSpec,
    ModelSpec,
    model_catalog,
)
from generation.engine.errors import ModelNotFound
from generation.engine.families import FamilyMismatch, UnknownFamily
from generation.engine.requests import (
    ControlType,
    ControlUnitInput,
    GenerationRequest,
    IPAdapterInput,
    Method,
    ReferenceInput,
)
from generation.engine.runner import Engine
from generation.engine.sources import (
    SourceKind,
    controlnet_traits_of,
    resolve_controlnet,
)
from generation.engine.tiny_model import ldm_controlnet_checkpoint
from generation.engine.vocabulary import TINY_MODEL_KEY, TINY_SDXL_MODEL_KEY
from tests.engine.test_reproducibility import noise_image
from tests.engine.test_sources import COMMIT, cache_repo

SEED = 7
SIZE = 64
OPENPOSE_FILE = "control_v11p_sd15_openpose_fp16.safetensors"


def controlnet_request(model: str = TINY_MODEL_KEY, **overrides) -> GenerationRequest:
    values = {
        "model": model,
        "prompt": "a portrait",
        "method": Method.CONTROLNET,
        "steps": 2,
        "width": SIZE,
        "height": SIZE,
        "seed": SEED,
        "control_units": [
            ControlUnitInput(
                ControlType.OPENPOSE, control_image=noise_image(5, SIZE, SIZE)
            )
        ],
    }
    return GenerationRequest(**{**values, **overrides})


def raw_controlnet_images(
    root: Path,
    controlnet: ControlNetModel,
    pipeline_cls: type = StableDiffusionControlNetPipeline,
    model_folder: str = "sd15",
) -> list[np.ndarray]:
    """The engine's ControlNet call by hand, with diffusers alone (the
    request's defaults passed where a pipeline's own differ: SDXL's guidance
    scale, and its empty negative prompt, which is not zeroed)."""
    pipe = pipeline_cls.from_pretrained(
        root / model_folder, controlnet=controlnet, dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        "a portrait",
        negative_prompt="",
        guidance_scale=GenerationRequest.guidance_scale,
        image=noise_image(5, SIZE, SIZE),
        num_inference_steps=2,
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(SEED),
    ).images
    return [np.asarray(image) for image in images]


def assert_equal_images(result, raw: list[np.ndarray]) -> None:
    assert len(result.images) == len(raw)
    for mine, theirs in zip(result.images, raw, strict=True):
        assert np.array_equal(np.asarray(mine), theirs)


def with_openpose(
    config: EngineConfig, root: Path, entry: object, model_key: str | None = None
) -> EngineConfig:
    """``config`` with ``entry`` as the openpose ControlNet (of ``model_key``, or
    engine-wide) and ``root`` among the model roots."""
    config = replace(config, model_roots=[*config.model_roots, root])
    if model_key is None:
        config.controlnets = {**config.controlnets, "openpose": entry}
    else:
        spec = config.models[model_key]
        config.models = {
            **config.models,
            model_key: replace(
                spec, controlnets={**(spec.controlnets or {}), "openpose": entry}
            ),
        }
    return config


@pytest.fixture
def openpose_file(tiny_model_root: Path, tmp_path: Path) -> Path:
    """The tiny openpose ControlNet as an A1111/ComfyUI single file: original
    key names under ``control_model.``, in fp16."""
    controlnet = ControlNetModel.from_pretrained(
        tiny_model_root / "controlnet" / "openpose"
    )
    checkpoint = {
        key: value.to(torch.float16)
        for key, value in ldm_controlnet_checkpoint(controlnet).items()
    }
    path = tmp_path / "controlnet" / OPENPOSE_FILE
    path.parent.mkdir()
    save_file(checkpoint, path)
    return path


def test_the_stand_in_has_the_original_layout(openpose_file: Path):
    from safetensors import safe_open

    with safe_open(openpose_file, "pt") as stream:
        keys = set(stream.keys())
        dtype = stream.get_tensor("control_model.input_hint_block.0.weight").dtype
    assert dtype == torch.float16
    for key in (
        "control_model.time_embed.0.weight",
        "control_model.input_blocks.0.0.weight",
        "control_model.input_blocks.1.0.in_layers.0.weight",
        "control_model.input_blocks.3.1.transformer_blocks.0.attn2.to_k.weight",
        "control_model.input_hint_block.14.weight",
        "control_model.zero_convs.0.0.weight",
        "control_model.middle_block.1.proj_in.weight",
        "control_model.middle_block_out.0.weight",
    ):
        assert key in keys
    assert not any(key.startswith("controlnet_") for key in keys)


def test_a_single_file_controlnet_loads_through_the_configuration(
    engine_config: EngineConfig,
    tiny_model_root: Path,
    tmp_path: Path,
    openpose_file: Path,
):
    entry = {
        "source": str(openpose_file),
        "config": str(tiny_model_root / "controlnet" / "openpose"),
    }
    config = with_openpose(engine_config, tmp_path, entry)
    source = resolve_controlnet(ControlNetSpec.of(entry), config)
    assert source.kind is SourceKind.SINGLE_FILE
    traits = controlnet_traits_of(source, "openpose")
    assert (traits.family.key, traits.cross_attention_dim) == ("sd15", 32)

    engine = Engine(config)
    result = engine.generate(controlnet_request())

    # What a person does with diffusers alone: from_single_file with the config.
    raw = ControlNetModel.from_single_file(
        openpose_file,
        config=str(tiny_model_root / "controlnet" / "openpose"),
        dtype=torch.float32,
    )
    assert_equal_images(result, raw_controlnet_images(tiny_model_root, raw))
    # The file's weights, not the folder's: fp16-rounded.
    folder = ControlNetModel.from_pretrained(
        tiny_model_root / "controlnet" / "openpose"
    )
    loaded = engine.registry.controlnet(ControlType.OPENPOSE)
    for key, value in folder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value.half().float()), key
    unit = result.snapshot["control_units"][0]["controlnet"]
    assert unit["kind"] == "single_file"
    assert unit["source"] == str(openpose_file)
    assert len(unit["sha256"]) == 64
    assert unit["config"]["source"] == str(
        (tiny_model_root / "controlnet" / "openpose").resolve()
    )


SDXL_OPENPOSE_FILE = "OpenPoseXL2.safetensors"


def sdxl_openpose_file(root: Path, folder: Path, *, original: bool) -> Path:
    """The tiny SDXL openpose ControlNet as one fp16 file: in diffusers' key
    names (controlnet_cond_embedding.*, add_embedding.*), as
    thibaud/controlnet-openpose-sdxl-1.0's OpenPoseXL2.safetensors and the
    diffusers_xl_* files of lllyasviel/sd_control_collection are; or, with
    ``original``, in the original (SGM) layout (control_model.*, label_emb.*)."""
    controlnet = ControlNetModel.from_pretrained(folder)
    weights = (
        ldm_controlnet_checkpoint(controlnet)
        if original
        else {key: value.contiguous() for key, value in controlnet.state_dict().items()}
    )
    path = root / "controlnet" / SDXL_OPENPOSE_FILE
    path.parent.mkdir(exist_ok=True)
    save_file({key: value.to(torch.float16) for key, value in weights.items()}, path)
    return path


def test_a_single_file_sdxl_controlnet_loads_through_the_configuration(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    folder = tiny_model_root / "controlnet-sdxl" / "openpose"
    path = sdxl_openpose_file(tmp_path, folder, original=False)
    from safetensors import safe_open

    with safe_open(path, "pt") as stream:
        keys = set(stream.keys())
    assert {
        "add_embedding.linear_1.weight",
        "controlnet_cond_embedding.conv_in.weight",
    } <= keys

    # As docs/models.md configures it: the file, and the ControlNet's config.
    entry = {"source": str(path), "config": str(folder)}
    config = with_openpose(engine_config, tmp_path, entry, TINY_SDXL_MODEL_KEY)
    source = resolve_controlnet(ControlNetSpec.of(entry), config)
    assert source.kind is SourceKind.SINGLE_FILE
    traits = controlnet_traits_of(source, "openpose")
    assert (traits.family.key, traits.cross_attention_dim) == ("sdxl", 80)

    result = Engine(config).generate(controlnet_request(TINY_SDXL_MODEL_KEY))
    raw = ControlNetModel.from_single_file(
        path, config=str(folder), dtype=torch.float32
    )
    assert_equal_images(
        result,
        raw_controlnet_images(
            tiny_model_root, raw, StableDiffusionXLControlNetPipeline, "sdxl"
        ),
    )
    unit = result.snapshot["control_units"][0]["controlnet"]
    assert (unit["kind"], unit["source"]) == ("single_file", str(path))
    # The SDXL file on the SD 1.5 model is refused, with the reason.
    wrong = with_openpose(engine_config, tmp_path, entry)
    with pytest.raises(FamilyMismatch, match="Stable Diffusion XL"):
        Engine(wrong).generate(controlnet_request())


def test_an_original_layout_sdxl_controlnet_file_is_refused_with_the_reason(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    """diffusers cannot convert its size conditioning (label_emb): refused
    before anything loads, by the engine and the plan check, not a meta-tensor
    crash in the worker."""
    from generation.engine.errors import SourceRefused
    from generation.engine.plan import plan_problems

    folder = tiny_model_root / "controlnet-sdxl" / "openpose"
    path = sdxl_openpose_file(tmp_path, folder, original=True)
    with pytest.raises(NotImplementedError, match="meta tensor"):
        ControlNetModel.from_single_file(path, config=str(folder)).to("cpu")
    entry = {"source": str(path), "config": str(folder)}
    config = with_openpose(engine_config, tmp_path, entry, TINY_SDXL_MODEL_KEY)
    with pytest.raises(SourceRefused) as raised:
        Engine(config).generate(controlnet_request(TINY_SDXL_MODEL_KEY))
    message = str(raised.value)
    assert "an SDXL ControlNet in the original (SGM) key layout" in message
    assert "label_emb.*" in message and "add_embedding.*" in message
    (problem,) = plan_problems(controlnet_request(TINY_SDXL_MODEL_KEY), config)
    assert "original (SGM) key layout" in problem.message


def test_a_single_file_controlnet_without_a_cached_config_is_not_found_offline(
    engine_config: EngineConfig, tmp_path: Path, openpose_file: Path, hub_cache: Path
):
    """Its default config is SD 1.5's ControlNet config (by its key names),
    which must be in the Hugging Face cache: nothing is downloaded."""
    config = with_openpose(engine_config, tmp_path, str(openpose_file))
    with pytest.raises(ModelNotFound, match="lllyasviel/control_v11p_sd15_canny"):
        resolve_controlnet(ControlNetSpec.of(str(openpose_file)), config)


def test_a_single_file_sd15_controlnet_is_refused_for_an_sdxl_model(
    engine_config: EngineConfig,
    tiny_model_root: Path,
    tmp_path: Path,
    openpose_file: Path,
):
    entry = {
        "source": str(openpose_file),
        "config": str(tiny_model_root / "controlnet" / "openpose"),
    }
    config = with_openpose(engine_config, tmp_path, entry, TINY_SDXL_MODEL_KEY)
    with pytest.raises(FamilyMismatch, match="Stable Diffusion 1.5 ControlNet"):
        Engine(config).generate(controlnet_request(TINY_SDXL_MODEL_KEY))


def test_a_file_that_is_no_controlnet_is_refused_naming_its_keys(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    entry = {"source": str(tiny_model_root / "sd15.safetensors")}
    config = with_openpose(engine_config, tmp_path, entry)
    with pytest.raises(UnknownFamily, match="is not a ControlNet.*cond_stage_model"):
        resolve_controlnet(ControlNetSpec.of(entry), config)


def test_an_fp16_only_controlnet_loads_with_its_variant(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    folder = tmp_path / "openpose-fp16"
    ControlNetModel.from_pretrained(
        tiny_model_root / "controlnet" / "openpose"
    ).save_pretrained(folder, variant="fp16")
    assert (folder / "diffusion_pytorch_model.fp16.safetensors").is_file()
    assert not (folder / "diffusion_pytorch_model.safetensors").exists()

    plain = with_openpose(engine_config, tmp_path, str(folder))
    with pytest.raises(ModelNotFound, match="Could not load the model"):
        Engine(plain).generate(controlnet_request())

    config = with_openpose(
        engine_config, tmp_path, {"source": str(folder), "variant": "fp16"}
    )
    result = Engine(config).generate(controlnet_request())
    raw = ControlNetModel.from_pretrained(folder, variant="fp16")
    assert_equal_images(result, raw_controlnet_images(tiny_model_root, raw))
    assert result.snapshot["control_units"][0]["controlnet"]["variant"] == "fp16"


def test_a_controlnet_is_pinned_to_its_hub_revision(
    engine_config: EngineConfig, tiny_model_root: Path, hub_cache: Path
):
    cache_repo(
        hub_cache, "someone/openpose", tiny_model_root / "controlnet" / "openpose"
    )
    pinned = ControlNetSpec(source="someone/openpose", revision=COMMIT)
    source = resolve_controlnet(pinned, engine_config)
    assert (source.kind, source.revision) == (SourceKind.HUB, COMMIT)
    other = replace(pinned, revision="f" * 40)
    with pytest.raises(ModelNotFound, match=f"revision {'f' * 40}"):
        resolve_controlnet(other, engine_config)

    config = with_openpose(
        engine_config, hub_cache, {"source": "someone/openpose", "revision": COMMIT}
    )
    result = Engine(config).generate(controlnet_request())
    unit = result.snapshot["control_units"][0]["controlnet"]
    assert (unit["revision"], unit["commit"]) == (COMMIT, COMMIT)


def ip_adapter_request() -> GenerationRequest:
    return GenerationRequest(
        model=TINY_MODEL_KEY,
        prompt="a portrait",
        method=Method.IP_ADAPTER,
        steps=2,
        width=SIZE,
        height=SIZE,
        seed=SEED,
        references=[ReferenceInput(noise_image(6))],
        ip_adapter=IPAdapterInput(scale=0.8),
    )


def test_an_ip_adapter_with_an_fp16_only_image_encoder_loads_with_its_variant(
    engine_config: EngineConfig, tiny_model_root: Path, tmp_path: Path
):
    adapter = tmp_path / "ip-adapter"
    shutil.copytree(tiny_model_root / "ip-adapter", adapter)
    encoder_folder = adapter / "models" / "image_encoder"
    encoder = CLIPVisionModelWithProjection.from_pretrained(encoder_folder)
    shutil.rmtree(encoder_folder)
    encoder.save_pretrained(encoder_folder, variant="fp16")
    assert (encoder_folder / "model.fp16.safetensors").is_file()
    assert not (encoder_folder / "model.safetensors").exists()
    roots = [*engine_config.model_roots, tmp_path]

    plain = replace(
        engine_config, model_roots=roots, ip_adapter=IPAdapterSpec(source=str(adapter))
    )
    with pytest.raises(ModelNotFound):
        Engine(plain).generate(ip_adapter_request())

    fp16 = replace(
        engine_config,
        model_roots=roots,
        ip_adapter=IPAdapterSpec(source=str(adapter), variant="fp16"),
    )
    result = Engine(fp16).generate(ip_adapter_request())
    # The same pixels as the tiny model's own IP-Adapter: the same weights.
    own = Engine(engine_config).generate(ip_adapter_request())
    assert_equal_images(result, [np.asarray(image) for image in own.images])
    assert result.snapshot["ip_adapter"]["fingerprint"]["variant"] == "fp16"


def test_an_ip_adapter_is_pinned_to_its_hub_revision(
    engine_config: EngineConfig, tiny_model_root: Path, hub_cache: Path
):
    cache_repo(hub_cache, "h94/IP-Adapter", tiny_model_root / "ip-adapter")
    pinned = replace(
        engine_config,
        ip_adapter=IPAdapterSpec(source="h94/IP-Adapter", revision=COMMIT),
    )
    result = Engine(pinned).generate(ip_adapter_request())
    fingerprint = result.snapshot["ip_adapter"]["fingerprint"]
    assert (fingerprint["revision"], fingerprint["commit"]) == (COMMIT, COMMIT)

    elsewhere = replace(
        engine_config,
        ip_adapter=IPAdapterSpec(source="h94/IP-Adapter", revision="e" * 40),
    )
    # Another commit is not in the cache: the refusal names the repository,
    # the revision, the missing file and the command that fetches them all.
    other = "e" * 40
    expected = (
        f"'h94/IP-Adapter' at revision {other} is not in the Hugging Face cache "
        f"({hub_cache}): its file models/ip-adapter_sd15.safetensors is missing "
        "there, and the engine is offline, so nothing is downloaded. Where there "
        "is network, run `hf download h94/IP-Adapter "
        "models/ip-adapter_sd15.safetensors "
        "models/ip-adapter-plus-face_sd15.safetensors "
        "models/image_encoder/config.json models/image_encoder/model.safetensors "
        f"--revision {other}` with HF_HOME set to the cache you then copy to this "
        'host\'s HF_HOME (docs/models.md, "Fully offline")'
    )
    with pytest.raises(ModelNotFound) as raised:
        Engine(elsewhere).generate(ip_adapter_request())
    assert expected in str(raised.value)
    # The plan check that runs before anything is queued says the same.
    from generation.engine.plan import plan_problems

    (problem,) = plan_problems(ip_adapter_request(), elsewhere)
    assert problem.code == "model_not_found" and expected in problem.message
    # auto, which adds the adapter only where it is installed, runs without it.
    auto = Engine(elsewhere).generate(
        replace(ip_adapter_request(), method=Method.AUTO, ip_adapter=None)
    )
    assert auto.snapshot["ip_adapter"] is None


def test_the_catalog_and_the_config_read_controlnet_entries():
    catalog = model_catalog(
        {
            "xl": {
                "source": "a/b",
                "controlnets": {
                    "canny": "c/d",
                    "openpose": {
                        "source": "e/f",
                        "revision": COMMIT,
                        "variant": "fp16",
                    },
                },
                "ip_adapter": {
                    "source": "h94/IP-Adapter",
                    "revision": COMMIT,
                    "variant": "fp16",
                },
            }
        },
        tiny_model_dir="unused",
    )
    config = EngineConfig(models=catalog, model_roots=[])
    assert config.controlnet_spec("canny", "xl") == ControlNetSpec("c/d")
    assert config.controlnet_spec("openpose", "xl") == ControlNetSpec(
        "e/f", revision=COMMIT, variant="fp16"
    )
    assert config.controlnet_spec("depth", "xl") is None
    adapter = config.ip_adapter_for("xl")
    assert (adapter.revision, adapter.variant) == (COMMIT, "fp16")
    with pytest.raises(ValueError, match="'subfolder'"):
        ModelSpec(
            key="m",
            source="a/b",
            controlnets={"canny": {"source": "c/d", "subfolder": "x"}},
        )
    with pytest.raises(ValueError, match="'source'"):
        EngineConfig(
            models={}, model_roots=[], controlnets={"canny": {"variant": "fp16"}}
        )
