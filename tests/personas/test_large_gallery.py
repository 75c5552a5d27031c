"""A persona with a gallery of thousands: its admin page shows one page of the
gallery, saves whatever the size, and stays small; the whole gallery is the
reference list, page by page.

The 5,000 rows are made with ``bulk_create``, all pointing at one small stored
image (the upload path is tested elsewhere); the change form is the one the
admin renders, posted back as a browser would.
"""

from __future__ import annotations

import html

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from personas.admin import GALLERY_PAGE_SIZE
from personas.models import ControlNetUnit, ControlType, Persona, ReferenceImage
from personas.services import persona_create, reference_image_add
from tests import images
from tests.reliability.admin_forms import change_form_data, inline

# ``large_gallery``: tests/reliability/report.py runs these too, for the figure
# of the largest gallery saved.
pytestmark = [pytest.mark.django_db, pytest.mark.large_gallery]

GALLERY_SIZE = 5_000
PAGE_BYTES_LIMIT = 300_000
"""The change page of a persona with 5,000 references weighed 13.6 MB."""
PAGE_QUERIES_LIMIT = 40


@pytest.fixture
def large_persona(db) -> Persona:
    """A persona with a primary image and 4,999 more rows on the same file, and
    a ControlNet unit (whose reference is chosen among all of them)."""
    bare_persona = persona_create(name="Crowd", slug="crowd", width=512, height=512)
    primary = reference_image_add(
        persona=bare_persona,
        file=SimpleUploadedFile("primary.png", images.png((64, 64))),
        is_primary=True,
    )
    ReferenceImage.objects.bulk_create(
        ReferenceImage(
            persona=bare_persona,
            image=primary.image.name,
            thumbnail=primary.thumbnail.name,
            width=primary.width,
            height=primary.height,
            sha256=f"{index:064x}",
            caption=f"image {index}",
            order=index,
        )
        for index in range(1, GALLERY_SIZE)
    )
    ControlNetUnit.objects.create(
        persona=bare_persona, control_type=ControlType.CANNY.value, reference=primary
    )
    return bare_persona


def change_url(bare_persona: Persona) -> str:
    return reverse("admin:personas_persona_change", args=[bare_persona.pk])


def test_the_change_page_of_a_large_gallery_shows_one_page_and_stays_small(
    admin_client, large_persona, django_assert_max_num_queries
):
    with django_assert_max_num_queries(PAGE_QUERIES_LIMIT):
        response = admin_client.get(change_url(large_persona))

    assert response.status_code == 200
    assert len(response.content) < PAGE_BYTES_LIMIT
    gallery = inline(response, ReferenceImage).formset
    shown = [form.instance for form in gallery.initial_forms]
    assert len(shown) == GALLERY_PAGE_SIZE
    assert shown[0].is_primary
    # The newest after the primary.
    assert [ref.caption for ref in shown[1:3]] == ["image 4999", "image 4998"]
    page = html.unescape(response.content.decode())
    assert f"Showing {GALLERY_PAGE_SIZE} of {GALLERY_SIZE} images" in page
    full_list = (
        reverse("admin:personas_referenceimage_changelist")
        + f"?persona__id__exact={large_persona.pk}"
    )
    assert full_list in page
    # The ControlNet unit picks its reference by id, looked up in this gallery.
    assert f"?_to_field=id&persona__id__exact={large_persona.pk}" in page


def test_a_persona_with_5000_references_is_saved_through_its_change_form(
    admin_client, large_persona, django_assert_max_num_queries, figures
):
    import time

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    started = time.perf_counter()
    response = admin_client.get(change_url(large_persona))
    page_seconds = time.perf_counter() - started
    data = change_form_data(response)
    data["description"] = "saved with 5,000 references"
    shown = inline(response, ReferenceImage).formset.initial_forms
    edited = shown[1].instance
    data[f"{shown[1].prefix}-caption"] = "edited on the first page"

    with (
        django_assert_max_num_queries(PAGE_QUERIES_LIMIT * 2),
        CaptureQueriesContext(connection) as queries,
    ):
        started = time.perf_counter()
        saved = admin_client.post(change_url(large_persona), data)
        save_seconds = time.perf_counter() - started

    assert saved.status_code == 302, saved.context and saved.context.get("errors")
    large_persona.refresh_from_db()
    assert large_persona.description == "saved with 5,000 references"
    assert large_persona.references.count() == GALLERY_SIZE
    assert ReferenceImage.objects.get(pk=edited.pk).caption == (
        "edited on the first page"
    )
    assert large_persona.references.get(is_primary=True) == shown[0].instance
    # A figure for docs/reliability.md (times are measured, never asserted).
    figures.record(
        group="largest gallery saved",
        item=f"{GALLERY_SIZE:,} references",
        outcome=f"saved (HTTP {saved.status_code})",
        references=large_persona.references.count(),
        fields_posted=len(data),
        page_kb=round(len(response.content) / 1024, 1),
        page_seconds=round(page_seconds, 3),
        save_queries=len(queries),
        save_seconds=round(save_seconds, 3),
    )


def test_the_whole_gallery_is_the_reference_list_page_by_page(
    admin_client, large_persona, django_assert_max_num_queries
):
    url = (
        reverse("admin:personas_referenceimage_changelist")
        + f"?persona__id__exact={large_persona.pk}"
    )
    with django_assert_max_num_queries(PAGE_QUERIES_LIMIT):
        response = admin_client.get(url)

    assert response.status_code == 200
    changelist = response.context["cl"]
    assert changelist.result_count == GALLERY_SIZE
    assert len(changelist.result_list) == changelist.list_per_page
    actions = dict(response.context["action_form"].fields["action"].choices)
    assert "delete_selected" in actions
    # The filter names the persona, with "All" to leave it.
    assert f"?persona__id__exact={large_persona.pk}" in response.content.decode()
    assert ">Crowd</a>" in response.content.decode()


def test_set_role_changes_the_whole_selected_gallery_from_the_list(
    admin_client, large_persona
):
    from django.contrib.admin.models import LogEntry

    url = (
        reverse("admin:personas_referenceimage_changelist")
        + f"?persona__id__exact={large_persona.pk}"
    )
    page = admin_client.get(url)
    one_page = [ref.pk for ref in page.context["cl"].result_list]
    chosen = {"action": "set_role", "select_across": "1", "index": "0"}

    asked = admin_client.post(url, {**chosen, "_selected_action": one_page})
    assert asked.status_code == 200
    assert f"For {GALLERY_SIZE} images" in asked.content.decode()
    # The page re-posts "all of them", not 5,000 ids.
    assert asked.content.decode().count('name="_selected_action"') == len(one_page)

    done = admin_client.post(
        url,
        {**chosen, "_selected_action": one_page, "post": "yes", "role": "face"},
    )

    assert done.status_code == 302
    assert large_persona.references.exclude(role="face").count() == 0
    assert LogEntry.objects.count() == GALLERY_SIZE
