"""The gallery's page cache: a page is served again from the cache while
nothing it shows changes, is rendered afresh after any write to what it shows
(a save, a ``QuerySet.update()``, a delete), and is never served to another
person, another browser, or after a permission changes."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from generation.gallery import page_cache
from generation.gallery.selectors import content_card
from generation.gallery.templatetags.gallery_cache import card_fingerprint
from generation.models import Content, ContentStatus, ReviewState
from tests.workers import use_queue

pytestmark = pytest.mark.django_db

# X-Gallery-Cache: served from the cache, rendered and kept, rendered only.
HIT, MISS, SKIP = "hit", "miss", "skip"


@pytest.fixture(autouse=True)
def page_cache_on(settings, redis_server):
    """The cache on, its version in this session's Redis, nothing kept yet."""
    settings.REDIS_URL = redis_server.url
    use_queue(settings, "gpu")
    settings.STUDIO_GALLERY_PAGE_CACHE_SECONDS = 300
    cache.clear()
    page_cache.gallery_changed()
    yield
    cache.clear()


def browser(user, *, csrf: str = "a" * 32) -> Client:
    """A logged-in browser with a CSRF cookie (as after its first page)."""
    client = Client()
    client.force_login(user)
    client.cookies["csrftoken"] = csrf
    return client


def cached(response) -> str:
    assert response.status_code == 200
    return response["X-Gallery-Cache"]


@pytest.fixture
def pages(make_content, gallery_persona) -> dict[str, str]:
    content = make_content()
    make_content(status=ContentStatus.RUNNING)
    return {
        "index": reverse("gallery:index"),
        "grid": reverse("gallery:persona", args=[gallery_persona.slug]),
        "content": reverse("gallery:content", args=[content.pk]),
    }


@pytest.mark.parametrize("page", ["index", "grid", "content"])
def test_a_page_asked_again_is_served_from_the_cache_with_two_queries(
    pages, page, admin_user, django_assert_max_num_queries
):
    client = browser(admin_user)
    first = client.get(pages[page])
    assert cached(first) == MISS

    # The session and the user; nothing of the page itself.
    with django_assert_max_num_queries(2):
        again = client.get(pages[page])

    assert cached(again) == HIT
    assert again.content == first.content


def test_a_review_renders_the_pages_that_show_it_again(pages, admin_user, make_content):
    client = browser(admin_user)
    content = Content.objects.filter(status=ContentStatus.SUCCEEDED).get()
    for url in pages.values():
        client.get(url)

    approve = reverse("gallery:content-action", args=[content.pk, "approve"])
    assert client.post(approve, {"next": pages["grid"]}).status_code == 302

    # The page after the POST shows its message: rendered, not kept.
    assert cached(client.get(pages["grid"])) == SKIP
    shown = {name: client.get(url) for name, url in pages.items()}

    assert {name: cached(page) for name, page in shown.items()} == dict.fromkeys(
        pages, MISS
    )
    content.refresh_from_db()
    assert content.review_state == ReviewState.APPROVED
    for name in ("index", "grid"):
        assert "gallery-review-approved" in shown[name].content.decode()


def test_a_queryset_update_from_elsewhere_retires_the_kept_pages(pages, admin_user):
    """A worker's progress report is an ``UPDATE`` with no save() and no signal."""
    client = browser(admin_user)
    assert cached(client.get(pages["grid"])) == MISS
    assert cached(client.get(pages["grid"])) == HIT
    running = Content.objects.get(status=ContentStatus.RUNNING)

    Content.objects.filter(pk=running.pk).update(progress_step=3, progress_total=4)

    response = client.get(pages["grid"])
    assert cached(response) == MISS
    assert 'aria-valuenow="75"' in response.content.decode()


def test_a_deleted_content_leaves_the_pages(pages, admin_user):
    client = browser(admin_user)
    running = Content.objects.get(status=ContentStatus.RUNNING)
    assert f'id="content-{running.pk}"' in client.get(pages["grid"]).content.decode()

    running.delete()

    response = client.get(pages["grid"])
    assert cached(response) == MISS
    assert f'id="content-{running.pk}"' not in response.content.decode()


def test_a_page_kept_for_one_person_is_never_served_to_another(
    pages, admin_user, make_user
):
    viewer = make_user("generation.view_content")
    admin_page = browser(admin_user).get(pages["grid"])
    assert "data-approve-url" in admin_page.content.decode()

    # The same CSRF cookie value and the same URL: still another person.
    response = browser(viewer).get(pages["grid"])

    assert cached(response) == MISS
    assert "data-approve-url" not in response.content.decode()
    assert viewer.username in response.content.decode()


def test_a_permission_given_changes_the_page_at_once(pages, make_user):
    user = make_user("generation.view_content")
    client = browser(user)
    assert "data-approve-url" not in client.get(pages["grid"]).content.decode()

    user.user_permissions.add(
        Permission.objects.get(
            content_type__app_label="generation", codename="review_content"
        )
    )

    response = client.get(pages["grid"])
    assert cached(response) == MISS
    assert "data-approve-url" in response.content.decode()


def test_another_browser_of_the_same_person_gets_its_own_page(pages, admin_user):
    """The content page's forms carry a token of the browser's CSRF secret."""
    assert cached(browser(admin_user, csrf="a" * 32).get(pages["content"])) == MISS

    other = browser(admin_user, csrf="b" * 32)
    response = other.get(pages["content"])

    assert cached(response) == MISS
    token = response.content.decode().split('name="csrfmiddlewaretoken" value="')[1]
    form = {"csrfmiddlewaretoken": token.split('"')[0], "next": pages["content"]}
    content_id = int(pages["content"].rstrip("/").rsplit("/", 1)[1])
    other.handler.enforce_csrf_checks = True
    approve = reverse("gallery:content-action", args=[content_id, "approve"])
    assert other.post(approve, form).status_code == 302


def test_a_browser_without_a_csrf_cookie_is_not_served_from_the_cache(
    pages, admin_user
):
    client = Client()
    client.force_login(admin_user)

    first = client.get(pages["index"])

    assert cached(first) == SKIP
    assert "csrftoken" in first.cookies


def test_a_page_with_a_message_is_neither_kept_nor_served(pages, admin_user):
    client = browser(admin_user)
    grid = pages["grid"]
    warned = client.get(f"{grid}?after=not-a-cursor")
    assert "That page link was not valid" in warned.content.decode()

    again = client.get(f"{grid}?after=not-a-cursor")

    assert cached(warned) == cached(again) == MISS
    assert "That page link was not valid" in again.content.decode()


def test_pages_render_without_caching_when_redis_is_down(settings, pages, admin_user):
    settings.RQ_QUEUES = {
        name: {"URL": "unix:///nonexistent/redis.sock?db=0"}
        for name in settings.RQ_QUEUES
    }
    client = browser(admin_user)

    assert cached(client.get(pages["grid"])) == SKIP
    assert cached(client.get(pages["grid"])) == SKIP


def test_the_cache_off_serves_every_page_rendered(settings, pages, admin_user):
    settings.STUDIO_GALLERY_PAGE_CACHE_SECONDS = 0
    client = browser(admin_user)

    assert cached(client.get(pages["index"])) == SKIP
    assert cached(client.get(pages["index"])) == SKIP


def test_a_cards_fingerprint_follows_what_it_shows(make_content):
    content = make_content()
    before = card_fingerprint(content_card(content_id=content.pk))
    assert card_fingerprint(content_card(content_id=content.pk)) == before

    Content.objects.filter(pk=content.pk).update(consistency_score=0.25)

    assert card_fingerprint(content_card(content_id=content.pk)) != before


def test_a_content_regenerated_many_times_lists_the_first_ones_and_says_more(
    settings, make_content, admin_user, django_assert_max_num_queries
):
    from generation.gallery.selectors import LINEAGE_SHOWN

    settings.STUDIO_GALLERY_PAGE_CACHE_SECONDS = 0
    original = make_content()
    regenerations = [make_content() for _ in range(LINEAGE_SHOWN + 2)]
    Content.objects.filter(pk__in=[row.pk for row in regenerations]).update(
        regenerated_from=original
    )

    client = browser(admin_user)

    with django_assert_max_num_queries(14):
        page = client.get(reverse("gallery:content", args=[original.pk]))

    lineage = page.content.decode().split("Regenerated by", 1)[1].split("</td>")[0]
    assert lineage.count('href="/gallery/content/') == LINEAGE_SHOWN
    assert f"and more (the first {LINEAGE_SHOWN} shown)" in lineage
    assert f"/gallery/content/{regenerations[0].pk}/" in lineage
    assert f"/gallery/content/{regenerations[-1].pk}/" not in lineage
