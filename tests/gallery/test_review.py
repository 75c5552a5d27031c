"""Review on the gallery: failed and cancelled contents are in no review state,
the content page lists the parameters the run used, approving moves to the next
pending output, any two outputs go on the compare slider, and an exact
regeneration says it is pixel-identical (a real worker on the tiny model)."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from generation import services
from generation.models import Content, ContentStatus
from personas.models import Persona
from personas.services import persona_create, reference_image_add
from tests.gallery.conftest import finish
from tests.images import encode, halves
from tests.workers import wait_finished

VIEW = "generation.view_content"
REVIEW = "generation.review_content"
GENERATE = "generation.generate_content"


def new_persona(slug: str = "eve", **fields) -> Persona:
    gallery_persona = persona_create(
        name=slug.title(),
        slug=slug,
        appearance="a card",
        width=64,
        height=64,
        steps=4,
        **fields,
    )
    reference_image_add(
        persona=gallery_persona,
        file=SimpleUploadedFile("ref.png", encode(halves((64, 64)), "PNG")),
        is_primary=True,
    )
    return gallery_persona


@pytest.fixture
def eve(db, settings) -> Persona:
    settings.STUDIO_MODELS = {}
    return new_persona(method="auto")


@pytest.fixture
def reviewer(make_user) -> Client:
    client = Client()
    client.force_login(make_user(VIEW, REVIEW, GENERATE))
    return client


def queued(gallery_persona: Persona) -> Content:
    return services.content_enqueue(persona=gallery_persona, prompt="a portrait")


def test_failed_and_cancelled_contents_are_not_pending_review(eve, reviewer):
    failed = queued(eve)
    services.content_fail(content=failed, code="x", message="broke")
    cancelled = services.content_cancel(content=queued(eve))
    done = finish(queued(eve))
    for content in (failed, cancelled):
        page = reviewer.get(reverse("gallery:content", args=[content.pk]))
        text = page.content.decode()
        assert "Pending review" not in text
        assert "only a succeeded generation is reviewed" in text
    listing = reviewer.get(
        reverse("gallery:persona", args=[eve.slug]), {"review_state": "pending"}
    )
    assert [content.pk for content in listing.context["page"].contents] == [done.pk]
    assert listing.context["persona"].pending_count == 1


def test_the_admin_review_column_and_filter_leave_out_unfinished_runs(
    eve, admin_client
):
    failed = queued(eve)
    services.content_fail(content=failed, code="x", message="broke")
    done = finish(queued(eve))
    response = admin_client.get(
        reverse("admin:generation_content_changelist"), {"review_state": "pending"}
    )
    shown = [row.pk for row in response.context["cl"].result_list]
    assert shown == [done.pk]
    model_admin = admin.site.get_model_admin(Content)
    assert model_admin.review_display(failed) == "–"
    assert model_admin.review_display(done) == "Pending review"


def test_the_content_page_lists_the_parameters_used_not_the_ones_asked(eve, reviewer):
    content = finish(queued(eve))
    used = {**content.request, "strength": 0.7, "ip_adapter": None}
    content.snapshot = {
        "request": used,
        "base_method": "text",
        "method": "text",
        "ip_adapter": None,
        "lora": None,
        "pipeline_class": "StableDiffusionPipeline",
    }
    content.method_used = "text"
    content.save()
    assert content.request["ip_adapter"] is not None  # auto was handed one
    page = reviewer.get(reverse("gallery:content", args=[content.pk]))
    labels = [label for label, _ in page.context["parameters"]]
    assert "img2img strength" not in labels
    assert "IP-Adapter scale" not in labels
    assert "Steps" in labels
    still_queued = reviewer.get(reverse("gallery:content", args=[queued(eve).pk]))
    assert "Steps (asked)" in [label for label, _ in still_queued.context["parameters"]]


def test_approving_moves_to_the_next_pending_output(eve, reviewer):
    older, newer = finish(queued(eve)), finish(queued(eve))
    page = reviewer.get(reverse("gallery:content", args=[newer.pk]))
    response = reviewer.post(
        reverse("gallery:content-action", args=[newer.pk, "approve"]),
        {"next": page.context["review_next"]},
    )
    assert response["Location"] == reverse("gallery:content", args=[older.pk])
    newer.refresh_from_db()
    assert newer.review_state == "approved"
    # the last pending one stays on its page
    page = reviewer.get(reverse("gallery:content", args=[older.pk]))
    assert page.context["review_next"] == reverse("gallery:content", args=[older.pk])


def test_any_two_outputs_go_on_the_compare_slider(eve, reviewer):
    first, second = finish(queued(eve)), finish(queued(eve))
    response = reviewer.get(
        reverse("gallery:content", args=[second.pk]), {"compare": first.pk}
    )
    assert response.context["compare_chosen"] == first
    page = response.content.decode()
    source = reverse("studio-media", args=[first.output_image.name])
    assert f'src="{source}" alt="Left: output #{first.pk}" data-compare-before' in page
    assert f'data-compare-source="{source}">Output #{first.pk}' in page
    unknown = reviewer.get(
        reverse("gallery:content", args=[second.pk]), {"compare": "999999"}
    )
    assert unknown.context["compare_chosen"] is None


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_an_exact_regeneration_says_it_is_pixel_identical(
    studio_settings, start_worker, make_user
):
    start_worker("gpu")
    gallery_persona = new_persona(slug="pix", method="text")
    first = wait_finished(queued(gallery_persona))
    assert first.status == ContentStatus.SUCCEEDED, first.error_detail
    exact = wait_finished(services.content_regenerate_exactly(content=first))
    assert exact.status == ContentStatus.SUCCEEDED, exact.error_detail
    assert f"Pixel-identical to #{first.pk}." in exact.notes
    client = Client()
    client.force_login(make_user(VIEW))
    page = client.get(reverse("gallery:content", args=[exact.pk]))
    assert f"Pixel-identical to #{first.pk}." in page.content.decode()
