"""The safety-checker policy: a flagged output is never a silent black image.

A real ``StableDiffusionSafetyChecker`` at a tiny size, written here with its
thresholds set so that it flags every image (or none), runs on the tiny models.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from generation.engine.config import EngineConfig, ModelSpec
from generation.engine.requests import GenerationRequest, Method
from generation.engine.runner import Engine
from generation.engine.vocabulary import (
    DEFAULT_SAFETY_POLICY,
    TINY_MODEL_KEY,
    TINY_SDXL_MODEL_KEY,
    SafetyPolicy,
)


def write_checker(folder: Path, *, flags_everything: bool) -> Path:
    """A tiny safety checker in the diffusers pipeline layout."""
    from diffusers.pipelines.stable_diffusion.safety_checker import (
        StableDiffusionSafetyChecker,
    )
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(0)
    checker = StableDiffusionSafetyChecker(
        CLIPConfig(
            text_config={"hidden_size": 32, "intermediate_size": 37},
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 37,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 224,
                "patch_size": 14,
            },
            projection_dim=32,
        )
    )
    # A concept scores cos(image, concept) - threshold: a threshold below -1
    # flags every image, one above 1 none.
    threshold = -2.0 if flags_everything else 2.0
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder / "safety_checker")
    CLIPImageProcessor(size=224, crop_size=224).save_pretrained(
        folder / "feature_extractor"
    )
    return folder


@pytest.fixture(scope="module")
def checkers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkers")
    return {
        "flags": write_checker(root / "flags", flags_everything=True),
        "passes": write_checker(root / "passes", flags_everything=False),
    }


def engine_with(config: EngineConfig, checkers, policy, checker=None) -> Engine:
    roots = [*config.model_roots, *{path.parent for path in checkers.values()}]
    return Engine(
        replace(
            config,
            model_roots=roots,
            safety_policy=policy,
            safety_checker=None if checker is None else str(checkers[checker]),
        )
    )


def request(model: str = TINY_MODEL_KEY) -> GenerationRequest:
    return GenerationRequest(
        model=model,
        prompt="a portrait",
        method=Method.TEXT,
        steps=2,
        width=64,
        height=64,
        num_images=2,
    )


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image) for image in result.images]


@pytest.fixture(scope="module")
def unchecked(tiny_model_root: Path) -> list[np.ndarray]:
    from generation.engine.config import tiny_engine_config

    config = replace(tiny_engine_config(tiny_model_root), safety_policy="off")
    return pixels(Engine(config).generate(request()))


def test_the_documented_default_is_flag(engine_config: EngineConfig):
    assert DEFAULT_SAFETY_POLICY is SafetyPolicy.FLAG
    assert engine_config.safety_policy is SafetyPolicy.FLAG


def test_an_unknown_policy_is_refused_at_configuration(tiny_model_root: Path):
    with pytest.raises(ValueError, match="Unknown safety checker policy 'blur'"):
        EngineConfig(models={}, model_roots=[tiny_model_root], safety_policy="blur")


def test_flag_keeps_a_flagged_image_and_says_so(engine_config, checkers, unchecked):
    result = engine_with(engine_config, checkers, "flag", "flags").generate(request())
    assert result.flagged == [True, True]
    assert all(
        np.array_equal(mine, theirs)
        for mine, theirs in zip(pixels(result), unchecked, strict=True)
    )
    assert "Image 1 was flagged by the safety checker and kept" in result.notes[0]
    safety = result.snapshot["safety"]
    assert safety["checked"] is True and safety["flagged"] == [True, True]
    assert safety["checker"] == str(checkers["flags"].resolve())


def test_black_replaces_a_flagged_image_and_says_so(engine_config, checkers):
    engine = engine_with(engine_config, checkers, "black", "flags")
    result = engine.generate(request(TINY_SDXL_MODEL_KEY))
    assert result.flagged == [True, True]
    assert all(not image.any() for image in pixels(result))
    assert any("replaced by a black image" in note for note in result.notes)
    assert result.snapshot["safety"]["policy"] == "black"


def test_an_image_the_checker_passes_is_kept_unflagged(
    engine_config, checkers, unchecked
):
    result = engine_with(engine_config, checkers, "black", "passes").generate(request())
    assert result.flagged == [False, False]
    assert all(
        np.array_equal(mine, theirs)
        for mine, theirs in zip(pixels(result), unchecked, strict=True)
    )
    assert not any("flagged" in note for note in result.notes)


def test_off_loads_no_checker(engine_config, checkers):
    engine = engine_with(engine_config, checkers, "off", "flags")
    result = engine.generate(request())
    assert result.flagged is None
    assert result.snapshot["safety"] == {
        "policy": "off",
        "checker": None,
        "checked": False,
    }
    kinds = {entry["kind"] for entry in engine.registry.stats()["loaded"]}
    assert "safety_checker" not in kinds


def test_a_models_own_checker_is_run_by_the_engine_not_the_pipeline(
    engine_config, checkers, tiny_model_root: Path, tmp_path: Path, unchecked
):
    """A model folder with its own (flagging) checker, as the SD 1.5 repository
    has: raw diffusers would return black images; the engine keeps them under
    ``flag`` and marks them."""
    model = tmp_path / "with-checker"
    shutil.copytree(tiny_model_root / "sd15", model)
    for folder in ("safety_checker", "feature_extractor"):
        shutil.rmtree(model / folder, ignore_errors=True)
        shutil.copytree(checkers["flags"] / folder, model / folder)
    index = json.loads((model / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
    index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (model / "model_index.json").write_text(json.dumps(index))
    spec = ModelSpec(key="own", source=str(model))
    config = replace(
        engine_config,
        models={**engine_config.models, "own": spec},
        model_roots=[*engine_config.model_roots, tmp_path],
    )
    from diffusers import StableDiffusionPipeline

    raw = StableDiffusionPipeline.from_pretrained(model)
    raw.set_progress_bar_config(disable=True)
    raw_output = raw(
        "a portrait", num_inference_steps=2, width=64, height=64, output_type="np"
    )
    assert raw_output.nsfw_content_detected == [True]
    assert not raw_output.images.any()  # what the studio used to save, silently
    result = Engine(config).generate(request("own"))
    assert result.flagged == [True, True]
    assert all(
        np.array_equal(mine, theirs)
        for mine, theirs in zip(pixels(result), unchecked, strict=True)
    )


def test_a_model_without_a_checker_says_its_outputs_were_not_checked(
    engine_config, tiny_model_root: Path, tmp_path: Path
):
    shutil.copytree(tiny_model_root / "sd15", tmp_path / "plain")
    spec = ModelSpec(key="plain", source=str(tmp_path / "plain"))
    config = replace(
        engine_config,
        models={**engine_config.models, "plain": spec},
        model_roots=[*engine_config.model_roots, tmp_path],
    )
    result = Engine(config).generate(request("plain"))
    assert result.flagged is None
    assert result.snapshot["safety"]["checked"] is False
    assert any("were not checked" in note for note in result.notes)
