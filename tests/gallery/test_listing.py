"""The persona grid at scale: constant queries, seek pagination in both
directions and under every sort, filters, and j/k neighbours."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from generation.gallery.selectors import (
    LATEST_PER_PERSONA,
    GalleryFilters,
    GallerySort,
    content_neighbours,
    content_page,
    persona_contents,
)
from generation.models import Content, ContentStatus, ReviewState
from tests.gallery.conftest import finish
from tests.workers import make_persona

VIEW = "generation.view_content"


def _copies(content: Content, count: int, **fields: object) -> list[Content]:
    """``count`` more rows like ``content`` (same files), in one query."""
    original = Content.objects.get(pk=content.pk)
    concrete = Content._meta.concrete_fields
    columns = [field.attname for field in concrete if not field.primary_key]
    rows = []
    for index in range(count):
        row = Content(**{name: getattr(original, name) for name in columns})
        for name, value in fields.items():
            setattr(row, name, value(index) if callable(value) else value)
        rows.append(row)
    return Content.objects.bulk_create(rows)


def _queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as captured:
        assert client.get(url).status_code == 200
    return len(captured)


def test_persona_gallery_and_overview_run_the_same_queries_for_5_and_50_rows(
    gallery_persona, make_content, make_user
):
    client = Client()
    client.force_login(make_user(VIEW))
    finished = make_content()
    running = make_content(ContentStatus.RUNNING)
    _copies(finished, 2, review_state=ReviewState.APPROVED)
    _copies(running, 1)
    urls = [
        reverse("gallery:persona", args=[gallery_persona.slug]),
        reverse("gallery:persona", args=[gallery_persona.slug])
        + "?sort=score&method=img2img",
        reverse("gallery:index"),
    ]
    for url in urls:
        client.get(url)  # warm the session and permission caches
    with_5 = [_queries(client, url) for url in urls]
    _copies(finished, 30, review_state=ReviewState.REJECTED)
    _copies(running, 15)
    assert Content.objects.filter(persona=gallery_persona).count() == 50
    with_50 = [_queries(client, url) for url in urls]
    assert with_50 == with_5


def _walk(
    gallery_persona, filters: GalleryFilters, size: int
) -> tuple[list[int], list]:
    """Every id page by page forward, and the pages seen."""
    ids, pages, cursor = [], [], ""
    while True:
        page = content_page(
            persona=gallery_persona, filters=filters, after=cursor, size=size
        )
        pages.append(page)
        ids.extend(content.pk for content in page.contents)
        if not page.next_cursor:
            return ids, pages
        cursor = page.next_cursor


@pytest.mark.parametrize("sort", [GallerySort.NEWEST, GallerySort.SCORE])
def test_seek_pagination_visits_every_row_once_in_order_both_ways(
    gallery_persona, make_content, sort
):
    first = make_content()
    # Ties on the sort key (equal times, equal scores) and empty scores.
    same_time = timezone.now()
    _copies(
        first,
        40,
        created_at=lambda index: same_time - datetime.timedelta(seconds=index // 3),
        consistency_score=lambda index: None if index % 5 == 0 else (index % 4) / 4,
    )
    filters = GalleryFilters(sort=sort)
    expected = [
        row.pk for row in persona_contents(persona=gallery_persona, filters=filters)
    ]
    ids, pages = _walk(gallery_persona, filters, size=7)
    assert ids == expected
    assert len(pages) == 6 and all(page.total == 41 for page in pages)
    assert pages[0].previous_cursor is None

    # Back from the last page with the previous-page cursors.
    back = [pages[-1].contents]
    page = pages[-1]
    while page.previous_cursor:
        page = content_page(
            persona=gallery_persona,
            filters=filters,
            before=page.previous_cursor,
            size=7,
        )
        back.append(page.contents)
    assert [content.pk for contents in reversed(back) for content in contents] == (
        expected
    )


def test_score_sort_puts_the_best_first_and_unscored_last(
    gallery_persona, make_content
):
    low, high = make_content(score=0.2), make_content(score=0.9)
    unscored = make_content(score=None)
    page = content_page(
        persona=gallery_persona, filters=GalleryFilters(sort=GallerySort.SCORE)
    )
    assert [content.pk for content in page.contents] == [high.pk, low.pk, unscored.pk]


def test_filters_by_status_method_review_state_and_date(gallery_persona, make_content):
    approved = make_content(method="img2img")
    approved.review_state = ReviewState.APPROVED
    approved.save()
    text = make_content(method="text")
    failed = make_content(ContentStatus.FAILED)
    queued_img2img = make_content(ContentStatus.QUEUED, method="img2img")
    old = make_content()
    Content.objects.filter(pk=old.pk).update(
        created_at=timezone.now() - datetime.timedelta(days=10)
    )

    def ids(**filters: object) -> set[int]:
        found = persona_contents(
            persona=gallery_persona, filters=GalleryFilters(**filters)
        )
        return {content.pk for content in found}

    assert ids(status="failed") == {failed.pk}
    assert ids(review_state="approved") == {approved.pk}
    assert ids(method="text") == {text.pk}
    # A queued row counts under the method it asked for.
    assert queued_img2img.pk in ids(method="img2img")
    today = timezone.localdate()
    assert old.pk not in ids(date_from=today)
    assert ids(date_to=today - datetime.timedelta(days=5)) == {old.pk}


def test_grid_page_follows_its_next_link_and_keeps_the_filters(
    gallery_persona, make_content, make_user
):
    first = make_content()
    _copies(first, 60)
    client = Client()
    client.force_login(make_user(VIEW))
    url = reverse("gallery:persona", args=[gallery_persona.slug])
    page_1 = client.get(url + "?status=succeeded")
    assert page_1.context["page"].total == 61
    assert len(page_1.context["page"].contents) == 48
    next_cursor = page_1.context["page"].next_cursor
    assert f"?status=succeeded&amp;after={next_cursor}" in page_1.content.decode()
    page_2 = client.get(url + f"?status=succeeded&after={next_cursor}")
    assert len(page_2.context["page"].contents) == 13
    assert page_2.context["page"].previous_cursor


def test_a_tampered_cursor_shows_the_first_page_with_a_warning(
    gallery_persona, make_content, make_user
):
    make_content()
    client = Client()
    client.force_login(make_user(VIEW))
    url = reverse("gallery:persona", args=[gallery_persona.slug])
    for cursor in ("garbage", "WyJzY29yZSIsICJ4IiwgMV0"):  # the 2nd: a text score
        response = client.get(url + f"?after={cursor}")
        assert response.status_code == 200
        assert "That page link was not valid" in response.content.decode()
        assert len(response.context["page"].contents) == 1


def test_bad_filter_values_are_ignored_and_reported(
    gallery_persona, make_content, make_user
):
    make_content()
    client = Client()
    client.force_login(make_user(VIEW))
    response = client.get(
        reverse("gallery:persona", args=[gallery_persona.slug])
        + "?status=nonsense&sort=x"
    )
    assert response.status_code == 200
    assert "Some filters were not valid" in response.content.decode()
    assert response.context["page"].total == 1


def test_neighbours_follow_the_grid_order_under_its_filters(
    gallery_persona, make_content
):
    oldest, middle, newest = make_content(), make_content(), make_content()
    failed = make_content(ContentStatus.FAILED)
    assert content_neighbours(content=middle, filters=GalleryFilters()) == (
        newest,
        oldest,
    )
    assert content_neighbours(
        content=newest, filters=GalleryFilters(status="succeeded")
    ) == (None, middle)
    assert content_neighbours(content=newest, filters=GalleryFilters())[0] == failed


def test_ten_thousand_rows_page_fast_at_any_depth(gallery_persona, make_content):
    first = make_content()
    start = timezone.now()
    for _ in range(10):
        _copies(
            first,
            1000,
            created_at=lambda index: start - datetime.timedelta(seconds=index),
            consistency_score=lambda index: (index % 97) / 97,
        )
    finish(first)
    filters = GalleryFilters(sort=GallerySort.NEWEST)
    deep = content_page(persona=gallery_persona, filters=filters, size=48)
    for _ in range(3):
        deep = content_page(
            persona=gallery_persona, filters=filters, after=deep.next_cursor, size=48
        )
    with CaptureQueriesContext(connection) as captured:
        content_page(
            persona=gallery_persona, filters=filters, after=deep.next_cursor, size=48
        )
    assert len(captured) == 2  # a count and the page, whatever the depth
    assert "OFFSET" not in captured[-1]["sql"].upper()


def test_overview_shows_each_personas_latest_outputs_in_constant_queries(
    gallery_persona, make_content, make_user
):
    client = Client()
    client.force_login(make_user(VIEW))
    first = make_content()
    _copies(first, 9)
    client.get(reverse("gallery:index"))
    with_1 = _queries(client, reverse("gallery:index"))
    others = [make_persona(slug=f"persona-{index}") for index in range(4)]
    for other in others:
        _copies(first, 3, persona_id=other.pk)
    with_5 = _queries(client, reverse("gallery:index"))
    assert with_5 == with_1

    page = client.get(reverse("gallery:index")).context["page"]
    latest = {
        gallery_persona.slug: gallery_persona.latest_contents
        for gallery_persona in page.object_list
    }
    newest_of_ada = list(
        Content.objects.filter(persona=gallery_persona).order_by("-created_at", "-id")[
            :LATEST_PER_PERSONA
        ]
    )
    assert latest["ada"] == newest_of_ada
    for other in others:
        assert {content.persona_id for content in latest[other.slug]} == {other.pk}
        assert len(latest[other.slug]) == 3
    assert page.object_list[0].output_count == 10


def test_an_unknown_persona_is_a_404(make_user, db):
    client = Client()
    client.force_login(make_user(VIEW))
    assert client.get(reverse("gallery:persona", args=["nobody"])).status_code == 404
