"""End to end: the face detailer and manual inpainting through real workers on
the real Redis. A GPU-queue worker generates on the tiny model and runs the
detailer pass or the inpaint; a CPU-queue worker analyses the references and
scores both images of a detailed output.

The persona is a real photo (scikit-image's astronaut, its face reference),
so the detailer's redraw gets the persona's face through IP-Adapter plus-face
and both images are scored against a real face embedding. The tiny model's
outputs are noise, so the honest result of the pass is "no face found" (the
image comes back unchanged, said as such) and both scores are "no face"; the
redraw of a found face is proved on the astronaut itself, pixel for pixel
against raw diffusers, in tests/engine/test_detailer.py.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, ImageDraw
from skimage import data

from generation import services
from generation.engine.detailer import NO_FACE_REASON
from generation.engine.inpaint import feather_mask
from generation.models import Content, ContentStatus, IdentityStatus
from generation.parameters import GenerationOverrides
from personas.models import ReferenceImage, ReferenceRole
from personas.services import persona_create, reference_image_add
from tests.images import encode, halves
from tests.workers import make_persona, wait_finished, wait_for, wait_scored

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

SIDE = 64


def _pixels(name: str) -> np.ndarray:
    with default_storage.open(name, "rb") as file:
        return np.asarray(Image.open(io.BytesIO(file.read())).convert("RGB"))


def _astronaut_persona():
    persona = persona_create(
        name="Eileen",
        slug="eileen",
        width=SIDE,
        height=SIDE,
        steps=4,
        method="text",
        detailer_enabled=True,
    )
    reference = reference_image_add(
        persona=persona,
        file=SimpleUploadedFile(
            "astronaut.png", encode(Image.fromarray(data.astronaut()), "PNG")
        ),
        role=ReferenceRole.FACE,
        is_primary=True,
    )
    return persona, reference


def test_a_detailed_run_keeps_both_images_and_both_scores(start_worker, admin_client):
    start_worker("cpu")
    gpu = start_worker("detail")
    persona, reference = _astronaut_persona()
    wait_for(
        lambda: ReferenceImage.objects.filter(
            pk=reference.pk, face_analysed_at__isnull=False
        ).exists(),
        what="the reference's face analysis",
    )
    content = services.content_enqueue(
        persona=persona, prompt="full body", overrides=GenerationOverrides(seed=4)
    )
    assert content.request["detailer"]["ip_adapter"]["face_crop"] is True
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.worker_name == gpu.name

    # Both images are stored: the output after the pass and the one before.
    assert content.detailer_before_image and content.output_image
    before = _pixels(content.detailer_before_image.name)
    after = _pixels(content.output_image.name)
    assert before.shape == after.shape == (SIDE, SIDE, 3)
    # The detailer found no face in the tiny model's noise: unchanged, said so.
    detailer = content.snapshot["detailer"]
    assert detailer["reason"] == NO_FACE_REASON and detailer["faces"] == []
    assert np.array_equal(before, after)
    assert NO_FACE_REASON in content.notes
    assert content.timings["detailer"] > 0

    # Both are scored on the CPU queue against the astronaut's face.
    content = wait_scored(content)
    assert content.identity_status == IdentityStatus.NO_FACE
    assert content.identity_before_detailer_status == IdentityStatus.NO_FACE
    assert content.identity_before_detailer is None
    assert content.identity_detail["before_detailer"]["message"] == "no face found"
    assert content.identity_detail["face_references"] == [reference.pk]

    # The content page shows both images side by side, each with its score.
    page = admin_client.get(f"/gallery/content/{content.pk}/").content.decode()
    pair = page[page.index('id="detailer-compare"') :]
    pair = pair[: pair.index("</div>")]
    assert f"/media/{content.detailer_before_image.name}" in pair
    assert f"/media/{content.output_image.name}" in pair
    assert '<span id="identity-before-detailer">No face found</span>' in pair
    assert "No face found" in pair[pair.index('id="identity-after-detailer"') :]

    # Regenerate exactly replays the generation and the pass to the same pixels.
    replay = wait_finished(services.content_regenerate_exactly(content=content))
    assert replay.status == ContentStatus.SUCCEEDED, replay.error_detail
    assert f"Pixel-identical to #{content.pk}." in replay.notes
    assert np.array_equal(_pixels(replay.output_image.name), after)
    assert np.array_equal(_pixels(replay.detailer_before_image.name), before)

    # Deleting the content removes both of its images.
    names = [content.output_image.name, content.detailer_before_image.name]
    services.content_delete(content=content)
    assert not any(default_storage.exists(name) for name in names)


def test_an_inpaint_child_redraws_only_the_mask_and_replays_exactly(start_worker):
    start_worker("cpu")
    start_worker("inpaint")
    parent = wait_finished(
        services.content_enqueue(
            persona=make_persona(),
            prompt="a portrait",
            overrides=GenerationOverrides(method="text", seed=9),
        )
    )
    assert parent.status == ContentStatus.SUCCEEDED, parent.error_detail
    mask = Image.new("L", (SIDE, SIDE), 0)
    ImageDraw.Draw(mask).ellipse((20, 12, 44, 36), fill=255)
    child = services.content_inpaint(
        content=parent,
        mask=SimpleUploadedFile("mask.png", encode(mask.convert("RGB"), "PNG")),
        prompt="a red hat",
        strength=0.9,
    )
    child = wait_finished(child)
    assert child.status == ContentStatus.SUCCEEDED, child.error_detail
    assert child.inpainted_from == parent
    assert child.snapshot["kind"] == "inpaint"
    assert child.method_used == ""

    original = _pixels(parent.output_image.name)
    inpainted = _pixels(child.output_image.name)
    outside = np.asarray(feather_mask(mask, child.request["mask_blur"])) == 0
    assert np.array_equal(inpainted[outside], original[outside])
    assert not np.array_equal(inpainted, original)
    # Reviewed like every other: scored, pending review.
    child = wait_scored(child)
    assert child.identity_status != IdentityStatus.PENDING
    assert child.review_state == "pending"

    replay = wait_finished(services.content_regenerate_exactly(content=child))
    assert replay.status == ContentStatus.SUCCEEDED, replay.error_detail
    assert replay.inpainted_from == parent
    assert f"Pixel-identical to #{child.pk}." in replay.notes
    assert np.array_equal(_pixels(replay.output_image.name), inpainted)

    # Deleting the child removes its output and its mask; the parent keeps its.
    names = [child.output_image.name, child.inpaint_mask.name]
    services.content_delete(content=child)
    assert not any(default_storage.exists(name) for name in names)
    assert default_storage.exists(parent.output_image.name)
    assert Content.objects.filter(pk=replay.pk, inpainted_from=parent).exists()


def test_a_replay_of_an_inpaint_on_another_mask_is_refused_by_the_worker(
    start_worker,
):
    worker = start_worker("inpaint")
    parent = wait_finished(
        services.content_enqueue(
            persona=make_persona(),
            prompt="a portrait",
            overrides=GenerationOverrides(method="text", seed=2),
        )
    )
    mask = Image.new("RGB", (SIDE, SIDE), 0)
    mask.paste((255, 255, 255), (8, 8, 30, 30))
    child = wait_finished(
        services.content_inpaint(
            content=parent,
            mask=SimpleUploadedFile("mask.png", encode(mask, "PNG")),
            prompt="x",
            strength=1.0,
        )
    )
    assert child.status == ContentStatus.SUCCEEDED, child.error_detail
    worker.stop()  # nobody runs the replay until its mask is changed
    replay = services.content_regenerate_exactly(content=child)
    with default_storage.open(replay.inpaint_mask.name, "wb") as file:
        file.write(encode(halves((SIDE, SIDE)), "PNG"))
    start_worker("inpaint")
    replay = wait_finished(replay)
    assert replay.status == ContentStatus.FAILED
    assert replay.error_message == (
        "The inpainted mask differs from the one that produced this output; it "
        "cannot be regenerated exactly."
    )
    assert not replay.output_image
