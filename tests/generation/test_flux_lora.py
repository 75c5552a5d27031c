"""A kohya-format FLUX.1 LoRA (``lora_unet_double_blocks_...``,
``lora_unet_single_blocks_...``), as sd-scripts and ComfyUI users have them:
accepted at upload for a FLUX.1 persona (and refused for an SD one), applied
through a real worker, and its pixels equal to raw diffusers with the same file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import safetensors.torch
import torch
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile

from generation import services
from generation.engine.snapshot import image_sha256
from generation.engine.vocabulary import TINY_FLUX_MODEL_KEY, Method
from generation.models import ContentStatus
from generation.parameters import GenerationOverrides
from personas.lora import check_lora_fits_base_model, validate_lora_upload
from personas.services import persona_set_lora
from tests.workers import make_persona, wait_finished

KOHYA_FILE = "lora/persona-flux-kohya.safetensors"


def kohya_upload(root: Path) -> ContentFile:
    return ContentFile((root / KOHYA_FILE).read_bytes(), name="anna-flux.safetensors")


def test_a_kohya_flux_lora_is_accepted_for_flux_and_refused_for_sd15(
    studio_settings, tiny_model_dir
):
    lora = validate_lora_upload(kohya_upload(tiny_model_dir))
    check_lora_fits_base_model(lora, TINY_FLUX_MODEL_KEY)
    with pytest.raises(ValidationError) as error:
        check_lora_fits_base_model(lora, "tiny-sd15")
    assert error.value.code == "wrong_family"
    assert "is for FLUX.1" in " ".join(error.value.messages)


def test_a_kohya_flux_lora_runs_through_a_real_worker_as_raw_diffusers_does(
    studio_settings, shared_worker, tiny_model_dir
):
    persona = make_persona(
        slug="kohya-flux", base_model=TINY_FLUX_MODEL_KEY, guidance_scale=3.5, steps=3
    )
    persona = persona_set_lora(persona=persona, file=kohya_upload(tiny_model_dir))
    content = services.content_enqueue(
        persona=persona,
        prompt="a portrait in the rain",
        overrides=GenerationOverrides(method=Method.TEXT),
    )
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    snapshot = content.snapshot
    assert snapshot["pipeline_class"] == "FluxPipeline"
    weights = (tiny_model_dir / KOHYA_FILE).read_bytes()
    assert snapshot["lora"]["sha256"] == persona.lora_sha256

    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_model_dir / "flux", dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(safetensors.torch.load(weights), adapter_name="anna")
    pipe.set_adapters(["anna"], adapter_weights=[snapshot["lora"]["scale"]])
    call = dict(snapshot["call"])
    generator = call.pop("generator")
    raw = pipe(
        **call,
        generator=torch.Generator(generator["device"]).manual_seed(generator["seed"]),
    ).images
    assert [image_sha256(image) for image in raw] == snapshot["outputs"]
    pipe.unload_lora_weights()
    plain = pipe(
        **call,
        generator=torch.Generator(generator["device"]).manual_seed(generator["seed"]),
    ).images
    assert [image_sha256(image) for image in plain] != snapshot["outputs"]
