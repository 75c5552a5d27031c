"""The two retries of the action table: "Retry as it was" replays the frozen
request; "Retry with the persona's current settings" rebuilds it from the
persona now. Both from the gallery's content page, with history."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from generation import services
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides
from personas.models import Persona
from personas.services import persona_create, persona_update, reference_image_add
from tests.images import encode, halves

VIEW = "generation.view_content"
GENERATE = "generation.generate_content"


@pytest.fixture
def dora(db, settings) -> Persona:
    settings.STUDIO_MODELS = {}
    gallery_persona = persona_create(
        name="Dora", appearance="a card", method="img2img", width=64, height=64
    )
    reference_image_add(
        persona=gallery_persona,
        file=SimpleUploadedFile("ref.png", encode(halves((64, 64)), "PNG")),
        is_primary=True,
    )
    return gallery_persona


@pytest.fixture
def failed(dora) -> Content:
    content = services.content_enqueue(
        persona=dora,
        prompt="a portrait",
        negative_prompt="blurry",
        overrides=GenerationOverrides(steps=12, seed=5),
    )
    assert services.content_fail(content=content, code="x", message="it failed")
    content.refresh_from_db()
    return content


@pytest.fixture
def staff(make_user) -> Client:
    client = Client()
    client.force_login(make_user(VIEW, GENERATE))
    return client


def act(client: Client, content: Content, slug: str):
    return client.post(
        reverse("gallery:content-action", args=[content.pk, slug]), follow=True
    )


def test_the_content_page_offers_both_retries_by_name(failed, staff):
    page = staff.get(reverse("gallery:content", args=[failed.pk])).content.decode()
    assert "Retry as it was" in page
    assert "Retry with the persona&#x27;s current settings" in page


def test_retry_as_it_was_replays_the_frozen_request(dora, failed, staff):
    persona_update(persona=dora, data={"steps": 20, "guidance_scale": 3.0})
    response = act(staff, failed, "retry")
    failed.refresh_from_db()
    assert failed.status == ContentStatus.QUEUED
    assert (failed.request["steps"], failed.request["guidance_scale"]) == (12, 7.5)
    assert "as it was" in response.content.decode()
    assert LogEntry.objects.get().change_message == "Queued again (retry)."


def test_retry_with_current_settings_rebuilds_the_request(dora, failed, staff):
    persona_update(persona=dora, data={"steps": 20, "guidance_scale": 3.0})
    act(staff, failed, "retry-with-current")
    failed.refresh_from_db()
    assert failed.status == ContentStatus.QUEUED
    assert failed.attempts == 0 and failed.error_message == ""
    request = failed.request
    assert (request["steps"], request["guidance_scale"]) == (20, 3.0)
    # what the run was asked for stays: prompt, negative prompt, method, seed
    assert request["prompt"].endswith("a portrait")
    assert request["negative_prompt"].endswith("blurry")
    assert request["method"] == "img2img" and failed.seed == 5 == request["seed"]
    assert LogEntry.objects.get().change_message == (
        "Queued again with the persona's current settings (retry)."
    )


def test_retry_with_current_settings_sure_to_fail_is_refused(dora, failed, staff):
    persona_update(persona=dora, data={"steps": 4, "img2img_strength": 0.1})
    response = act(staff, failed, "retry-with-current")
    assert "raise the steps to 10 or raise the strength to 0.25" in (
        response.content.decode()
    )
    failed.refresh_from_db()
    assert failed.status == ContentStatus.FAILED
    assert failed.request["steps"] == 12
    assert not LogEntry.objects.exists()


def test_only_failed_or_cancelled_contents_are_retried(dora, staff):
    queued = services.content_enqueue(persona=dora, prompt="a portrait")
    response = act(staff, queued, "retry-with-current")
    assert "Only failed or cancelled generations can be retried" in (
        response.content.decode()
    )
