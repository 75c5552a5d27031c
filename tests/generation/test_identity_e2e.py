"""End to end: identity through the real workers. A GPU-queue worker generates on
the tiny model, a CPU-queue worker (``studio_worker --queues <STUDIO_CPU_QUEUE>``)
analyses the reference and scores the outputs. The tiny model's images are
noise, so the honest result is "no face found"; the identity path itself is
proved on real photos in test_identity.py."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image
from rq.job import Job
from skimage import data

from generation import services
from generation.models import ContentStatus, IdentityStatus
from generation.parameters import GenerationOverrides
from personas.models import ReferenceImage, ReferenceRole
from personas.services import persona_create, reference_image_add
from tests.images import encode
from tests.workers import wait_finished, wait_for, wait_scored

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_the_cpu_worker_analyses_the_reference_and_scores_outputs_no_face_found(
    studio_settings, start_worker, redis_connection
):
    cpu = start_worker("cpu")
    gpu = start_worker("generate")
    persona = persona_create(
        name="Eileen", slug="eileen", width=64, height=64, steps=4
    )
    reference = reference_image_add(
        persona=persona,
        file=SimpleUploadedFile(
            "astronaut.png", encode(Image.fromarray(data.astronaut()), "PNG")
        ),
        role=ReferenceRole.FACE,
        is_primary=True,
    )
    # Analysed by the CPU worker after the upload committed.
    wait_for(
        lambda: ReferenceImage.objects.filter(
            pk=reference.pk, face_analysed_at__isnull=False
        ).exists(),
        what="the reference's face analysis",
    )
    reference.refresh_from_db()
    assert reference.face_count >= 1 and len(reference.face_embedding) == 128

    batch = services.content_enqueue_batch(
        persona=persona,
        prompt="a portrait",
        count=2,
        keep_best=1,
        overrides=GenerationOverrides(method="img2img", seed=11),
    )
    first, second = batch.contents.order_by("id")
    for content in (first, second):
        assert wait_finished(content).status == ContentStatus.SUCCEEDED
    first, second = wait_scored(first), wait_scored(second)

    for content in (first, second):
        assert content.identity_status == IdentityStatus.NO_FACE, (
            content.identity_detail
        )
        assert content.identity_similarity is None
        assert content.identity_same_person is None
        assert content.identity_detail["message"] == "no face found"
        assert content.identity_detail["face_references"] == [reference.pk]
        assert content.flagged_for_review is True
        assert 0.0 <= content.consistency_score <= 1.0
        assert content.score_detail["ssim"] is not None
        # Scored by the CPU worker; the GPU job's own timings have no scoring.
        job = Job.fetch(content.score_job_id, connection=redis_connection)
        assert job.worker_name == cpu.name
        assert content.worker_name == gpu.name
        assert "score" not in content.timings and content.timings["scoring"] > 0
    # Best 1 of 2: with no face in either, the earlier is kept.
    batch.refresh_from_db()
    assert batch.best_of_applied_at is not None
    first.refresh_from_db()
    second.refresh_from_db()
    assert [first.not_kept, second.not_kept] == [False, True]
