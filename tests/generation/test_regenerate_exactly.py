""" "Regenerate exactly" verifies the fingerprints its snapshot recorded: the
model's weights, each ControlNet's, the IP-Adapter's and the LoRA's, and
refuses, naming what changed, when they differ now.

The outputs are real generations of a copy of the tiny models (made by the
studio's own ``write_tiny_model``) in this process's engine, stored by the
services the job calls; a test then changes one weight file of the copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile, File
from django.core.files.storage import default_storage

from generation import runtime, services
from generation.engine.config import (
    TINY_CONTROLNET_DIR,
    TINY_LORA_FILE,
    TINY_SDXL_REFINER_DIR,
)
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides, request_from_row
from generation.queues import get_queue
from personas.models import ControlNetUnit
from personas.services import persona_set_lora
from tests.workers import make_persona

pytestmark = pytest.mark.django_db


@pytest.fixture
def tiny_copy(studio_settings, tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny models that the test may change, served by this
    process's engine."""
    copy = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, copy)
    studio_settings.STUDIO_TINY_MODEL_DIR = str(copy)
    get_queue("gpu").empty()
    runtime.start()
    yield copy
    runtime.start()


def generate(persona, django_capture_on_commit_callbacks, **overrides) -> Content:
    with django_capture_on_commit_callbacks(execute=True):
        content = services.content_enqueue(
            persona=persona,
            prompt="on a beach",
            overrides=GenerationOverrides(seed=5, **overrides),
        )
    assert services.content_claim(
        content_id=content.pk, job_id=content.rq_job_id, worker_name="test"
    )
    content.refresh_from_db()
    request, inputs = request_from_row(
        content.request, replay_snapshot=content.replay_snapshot, inputs=content.inputs
    )
    result = runtime.engine().generate(request)
    assert services.content_store_result(
        content=content, result=result, inputs=inputs, timings={}
    )
    content.refresh_from_db()
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    return content


def change_a_byte(path: Path) -> None:
    """Change the last byte of a weights file: another value of one tensor."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def refusal(content: Content) -> str:
    with pytest.raises(ValidationError) as raised:
        services.content_regenerate_exactly(content=content)
    assert raised.value.code == "inputs_changed"
    return " ".join(raised.value.messages)


def test_an_unchanged_snapshot_is_replayed(
    tiny_copy, django_capture_on_commit_callbacks
):
    content = generate(
        make_persona(), django_capture_on_commit_callbacks, method="text"
    )
    with django_capture_on_commit_callbacks(execute=True):
        replay = services.content_regenerate_exactly(content=content)
    assert replay.replay_snapshot == content.snapshot
    assert services.snapshot_changes(content.snapshot, inputs=content.inputs) == []


def test_changed_model_weights_are_refused_naming_the_model(
    tiny_copy, django_capture_on_commit_callbacks
):
    content = generate(
        make_persona(), django_capture_on_commit_callbacks, method="text"
    )
    recorded = content.snapshot["model"]["sha256"]
    (unet,) = (tiny_copy / "sd15" / "unet").glob("*.safetensors")
    change_a_byte(unet)
    message = refusal(content)
    assert "Cannot regenerate exactly: the model 'tiny-sd15' changed" in message
    assert f"sha256 {recorded[:12]} then" in message
    assert not content.regenerations.exists()


def test_a_changed_controlnet_is_refused_naming_it(
    tiny_copy, django_capture_on_commit_callbacks
):
    persona = make_persona()
    ControlNetUnit.objects.create(
        persona=persona,
        control_type="canny",
        reference=persona.references.get(),
        order=0,
    )
    content = generate(persona, django_capture_on_commit_callbacks, method="controlnet")
    assert content.snapshot["control_units"][0]["controlnet"]["sha256"]
    (weights,) = (tiny_copy / TINY_CONTROLNET_DIR / "canny").glob("*.safetensors")
    change_a_byte(weights)
    message = refusal(content)
    assert "the 'canny' ControlNet changed (sha256" in message
    assert "the model" not in message


def test_a_changed_lora_file_is_refused_naming_it(
    tiny_copy, django_capture_on_commit_callbacks
):
    persona = make_persona()
    with (tiny_copy / TINY_LORA_FILE).open("rb") as file:
        persona_set_lora(persona=persona, file=File(file, name="ada.safetensors"))
    persona.refresh_from_db()
    content = generate(persona, django_capture_on_commit_callbacks, method="text")
    name = content.snapshot["lora"]["name"]
    stored = persona.lora_weights.name
    data = bytearray(default_storage.open(stored, "rb").read())
    data[-1] ^= 0x01
    default_storage.delete(stored)
    assert default_storage.save(stored, ContentFile(bytes(data))) == stored
    message = refusal(content)
    assert f"the LoRA {name!r} changed (sha256" in message


def test_a_changed_ip_adapter_is_refused_naming_it(
    tiny_copy, django_capture_on_commit_callbacks
):
    content = generate(
        make_persona(), django_capture_on_commit_callbacks, method="ip_adapter"
    )
    assert content.snapshot["ip_adapter"]["fingerprint"]["sha256"]
    recorded = content.snapshot["ip_adapter"]
    (weights,) = (tiny_copy / Path(recorded["source"]).name).rglob(
        recorded["weight_name"]
    )
    change_a_byte(weights)
    message = refusal(content)
    assert "the IP-Adapter changed (sha256" in message


def test_a_changed_refiner_is_refused_naming_it(
    tiny_copy, studio_settings, django_capture_on_commit_callbacks
):
    studio_settings.STUDIO_MODELS = {
        "xl": {
            "source": str(tiny_copy / "sdxl"),
            "refiner": str(tiny_copy / TINY_SDXL_REFINER_DIR),
            "refiner_switch": 0.5,
            "tiny": True,
        }
    }
    studio_settings.STUDIO_MODEL_ROOTS = [str(tiny_copy)]
    runtime.start()
    content = generate(
        make_persona(base_model="xl"), django_capture_on_commit_callbacks, method="text"
    )
    assert content.snapshot["refiner"]["call"]["denoising_start"] == 0.5
    assert services.snapshot_changes(content.snapshot, inputs=content.inputs) == []
    (unet,) = (tiny_copy / TINY_SDXL_REFINER_DIR / "unet").glob("*.safetensors")
    change_a_byte(unet)
    message = refusal(content)
    assert "the model 'xl''s refiner changed (sha256" in message
    assert "the model 'xl' changed" not in message


def test_a_run_without_the_refiner_does_not_depend_on_it(
    tiny_copy, studio_settings, django_capture_on_commit_callbacks
):
    """Switched off for the run: no refiner in its snapshot, so a changed
    refiner does not stop "regenerate exactly", which replays it off."""
    studio_settings.STUDIO_MODELS = {
        "xl": {
            "source": str(tiny_copy / "sdxl"),
            "refiner": str(tiny_copy / TINY_SDXL_REFINER_DIR),
            "tiny": True,
        }
    }
    studio_settings.STUDIO_MODEL_ROOTS = [str(tiny_copy)]
    runtime.start()
    content = generate(
        make_persona(base_model="xl"),
        django_capture_on_commit_callbacks,
        method="text",
        use_refiner=False,
    )
    assert content.snapshot["refiner"] is None
    assert "refiner" not in content.snapshot["model"]
    (unet,) = (tiny_copy / TINY_SDXL_REFINER_DIR / "unet").glob("*.safetensors")
    change_a_byte(unet)
    assert services.snapshot_changes(content.snapshot, inputs=content.inputs) == []
    replayed, _ = request_from_row(
        content.request, replay_snapshot=content.snapshot, inputs=content.inputs
    )
    assert replayed.use_refiner is False
