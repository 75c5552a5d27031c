"""End to end: reference editing on Qwen-Image through a real worker process.

A persona on the tiny Qwen-Image-Edit model, with its primary reference and a
face reference, queued through the services; a real ``studio_worker`` on a real
Redis runs the job with QwenImageEditPlusPipeline; the output is stored, its
snapshot names both references in order and the persona's true CFG scale, and
it is reviewable like every other output. Then "regenerate exactly" gives the
very same pixels.
"""

from __future__ import annotations

import io

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from generation import services
from generation.models import Content, ContentStatus
from personas.services import reference_image_add
from tests.engine.test_reproducibility import noise_image
from tests.workers import make_persona, wait_finished

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _pixels(content: Content) -> bytes:
    with default_storage.open(content.output_image.name, "rb") as file:
        return Image.open(io.BytesIO(file.read())).convert("RGB").tobytes()


def test_a_reference_edit_on_qwen_image_runs_on_the_worker_and_replays(
    admin_client, studio_settings, start_worker
):
    persona = make_persona(
        slug="qwen",
        base_model="tiny-qwen-image",
        method="reference_edit",
        steps=2,
        true_cfg_scale=2.5,
    )
    reference_image_add(
        persona=persona,
        file=SimpleUploadedFile("face.png", _png(noise_image(31, 64, 64))),
        role="face",
    )
    start_worker("generate")
    content = services.content_enqueue(
        persona=persona, prompt="the same person, now on a night street in the rain"
    )
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.method_used == "reference_edit"
    snapshot = content.snapshot
    assert snapshot["family"] == "qwen-image"
    assert snapshot["pipeline_class"] == "QwenImageEditPlusPipeline"
    # The primary reference first, then the face one, handed over natively.
    assert snapshot["reference_edit"]["references"] == [0, 1]
    assert snapshot["reference_edit"]["multi_reference"] == "native"
    # True CFG at the persona's scale, with the (empty) negative prompt; the
    # replay below runs from the snapshot, so it takes the same scale.
    assert snapshot["call"]["negative_prompt"] == ""
    assert snapshot["call"]["true_cfg_scale"] == 2.5
    assert snapshot["request"]["true_cfg_scale"] == 2.5
    with default_storage.open(content.output_image.name, "rb") as file:
        assert Image.open(file).size == (64, 64)

    admin_client.post(
        "/admin/generation/content/",
        {"action": "approve", "_selected_action": [content.pk]},
    )
    content.refresh_from_db()
    assert content.review_state == "approved"

    exact = wait_finished(services.content_regenerate_exactly(content=content))
    assert exact.status == ContentStatus.SUCCEEDED, exact.error_detail
    assert _pixels(exact) == _pixels(content)
