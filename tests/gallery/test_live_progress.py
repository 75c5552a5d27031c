"""Live progress as the worker publishes it: the phase in words, the step with
an ETA, and the live preview in Redis (served to staff, gone when the job ends,
with an expiry for a job whose worker died)."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse
from PIL import Image

from generation import previews, services
from generation.models import Content, ContentStatus, ProgressPhase

VIEW = "generation.view_content"


@pytest.fixture
def viewer(make_user) -> Client:
    client = Client()
    client.force_login(make_user(VIEW))
    return client


def _progress(viewer: Client, content: Content) -> dict:
    response = viewer.get(reverse("gallery:progress") + f"?ids={content.pk}")
    assert response.status_code == 200
    return response.json()["contents"][str(content.pk)]


def test_each_phase_is_said_in_words(make_content, viewer, studio_settings):
    content = make_content(ContentStatus.QUEUED)
    assert _progress(viewer, content)["label"] == "Waiting in the queue"
    Content.objects.filter(pk=content.pk).update(status=ContentStatus.RUNNING)
    for phase, label in [
        (ProgressPhase.PREPARING, "Preparing inputs"),
        (ProgressPhase.LOADING, "Loading the model"),
        (ProgressPhase.SAVING, "Saving"),
    ]:
        services.content_report_phase(content=content, phase=phase)
        row = _progress(viewer, content)
        assert (row["phase"], row["label"]) == (phase, label)


def test_a_step_report_carries_the_eta_and_the_label_says_it(
    make_content, viewer, studio_settings
):
    content = make_content(ContentStatus.RUNNING)
    services.content_report_progress(
        content=content, step=5, total=20, eta_seconds=74.4
    )
    row = _progress(viewer, content)
    assert row["phase"] == "denoising"
    assert row["eta_seconds"] == pytest.approx(74.4)
    assert row["label"] == "Step 5 of 20 · about 1 min 14 s left"
    # The card renders the same words as the endpoint.
    card = viewer.get(reverse("gallery:content-card", args=[content.pk]))
    assert "Step 5 of 20 · about 1 min 14 s left" in card.content.decode()


def test_a_published_preview_is_served_until_the_job_removes_it(
    make_content, viewer, studio_settings, redis_connection
):
    content = make_content(ContentStatus.RUNNING)
    previews.preview_publish(
        connection=redis_connection,
        job_id=content.rq_job_id,
        step=6,
        image=Image.new("RGB", (8, 8), (250, 10, 10)),
    )
    key = previews.preview_key(content.rq_job_id)
    assert 0 < redis_connection.ttl(key) <= studio_settings.STUDIO_PREVIEW_TTL_SECONDS
    row = _progress(viewer, content)
    url = reverse("gallery:content-preview", args=[content.pk])
    assert row["preview"] == f"{url}?step=6"

    response = viewer.get(row["preview"])
    assert response.status_code == 200
    assert response["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("JPEG", (8, 8))
    red, green, _ = image.getpixel((4, 4))
    assert red > 200 and green < 60

    previews.preview_discard(connection=redis_connection, job_id=content.rq_job_id)
    assert _progress(viewer, content)["preview"] is None
    assert viewer.get(url).status_code == 404
    assert not redis_connection.exists(key)


def test_a_finished_content_serves_no_preview(
    make_content, viewer, studio_settings, redis_connection
):
    content = make_content()
    previews.preview_publish(
        connection=redis_connection,
        job_id=content.rq_job_id,
        step=2,
        image=Image.new("RGB", (8, 8)),
    )
    try:
        assert _progress(viewer, content)["preview"] is None
        url = reverse("gallery:content-preview", args=[content.pk])
        assert viewer.get(url).status_code == 404
    finally:
        previews.preview_discard(
            connection=redis_connection, job_id=content.rq_job_id
        )


def test_the_preview_needs_the_view_permission(make_content, make_user):
    content = make_content(ContentStatus.RUNNING)
    client = Client()
    client.force_login(make_user())
    url = reverse("gallery:content-preview", args=[content.pk])
    assert client.get(url).status_code in (302, 403)
