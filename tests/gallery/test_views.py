"""The gallery's pages with the Django test client: who may see and do what,
CSRF, the JSON progress endpoint, and what each page shows."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.test import Client
from django.urls import reverse

from generation import services
from generation.engine.vocabulary import GridParameter
from generation.grids import GridAxis
from generation.models import Content, ContentStatus, ReviewState

VIEW = "generation.view_content"
REVIEW = "generation.review_content"
GENERATE = "generation.generate_content"
CHANGE_PERSONA = "personas.change_persona"


def _client(user, **options) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def _pages(gallery_persona, content, grid) -> list[str]:
    return [
        reverse("gallery:index"),
        reverse("gallery:persona", args=[gallery_persona.slug]),
        reverse("gallery:content", args=[content.pk]),
        reverse("gallery:content-card", args=[content.pk]),
        reverse("gallery:grid", args=[grid.pk]),
        reverse("gallery:progress") + f"?ids={content.pk}",
    ]


# --- Who may see ------------------------------------------------------------------


def test_anonymous_and_non_staff_go_to_the_admin_login(
    client, gallery_persona, make_content, grid, make_user
):
    pages = _pages(gallery_persona, make_content(), grid)
    for viewer in (client, _client(make_user(VIEW, REVIEW, is_staff=False))):
        for page in pages:
            response = viewer.get(page)
            assert response.status_code == 302, page
            assert response["Location"].startswith(reverse("admin:login")), page


def test_staff_without_the_view_permission_is_refused(
    gallery_persona, make_content, grid, make_user
):
    viewer = _client(make_user())
    for page in _pages(gallery_persona, make_content(), grid):
        assert viewer.get(page).status_code == 403, page


def test_staff_with_the_view_permission_sees_every_page(
    gallery_persona, make_content, grid, make_user
):
    viewer = _client(make_user(VIEW))
    for page in _pages(gallery_persona, make_content(), grid):
        assert viewer.get(page).status_code == 200, page


def test_pages_look_like_the_admin_and_say_the_tiny_model_makes_noise(
    gallery_persona, make_content, make_user
):
    content = make_content()
    viewer = _client(make_user(VIEW))
    for page in (
        reverse("gallery:index"),
        reverse("gallery:persona", args=[gallery_persona.slug]),
        reverse("gallery:content", args=[content.pk]),
    ):
        html = viewer.get(page).content.decode()
        assert "admin/css/base.css" in html and "admin/css/dark_mode.css" in html
        assert "random weights: images are noise" in html
        assert 'id="user-tools"' in html


# --- Who may act --------------------------------------------------------------------


def test_staff_without_review_permission_gets_no_review_buttons_and_a_403(
    make_content, make_user
):
    content = make_content()
    viewer = _client(make_user(VIEW))
    page = viewer.get(reverse("gallery:content", args=[content.pk])).content.decode()
    assert 'data-shortcut="a"' not in page and 'data-shortcut="r"' not in page
    for action in ("approve", "reject"):
        response = viewer.post(
            reverse("gallery:content-action", args=[content.pk, action])
        )
        assert response.status_code == 403
    content.refresh_from_db()
    assert content.review_state == ReviewState.PENDING


def test_reviewer_approves_and_rejects_with_a_note(make_content, make_user):
    content = make_content()
    reviewer = make_user(VIEW, REVIEW)
    viewer = _client(reviewer)
    page_url = reverse("gallery:content", args=[content.pk])
    assert 'data-shortcut="a"' in viewer.get(page_url).content.decode()

    response = viewer.post(
        reverse("gallery:content-action", args=[content.pk, "approve"]),
        {"next": page_url + "?sort=score"},
    )
    assert response.status_code == 302
    assert response["Location"] == page_url + "?sort=score"
    content.refresh_from_db()
    assert content.review_state == ReviewState.APPROVED
    assert content.reviewed_by == reviewer

    viewer.post(
        reverse("gallery:content-action", args=[content.pk, "reject"]),
        {"note": "  the eyes drift  "},
    )
    content.refresh_from_db()
    assert content.review_state == ReviewState.REJECTED
    assert content.review_note == "the eyes drift"


def test_a_gallery_action_leaves_the_same_history_entry_as_the_admin_action(
    make_content, make_user
):
    content = make_content()
    reviewer = make_user(VIEW, REVIEW)
    _client(reviewer).post(
        reverse("gallery:content-action", args=[content.pk, "approve"])
    )
    entry = LogEntry.objects.get(object_id=str(content.pk))
    assert entry.user == reviewer
    assert entry.action_flag == CHANGE
    assert entry.get_edited_object() == content
    assert entry.get_change_message() == "Approved."


def test_an_action_never_redirects_off_site(make_content, make_user):
    content = make_content()
    viewer = _client(make_user(VIEW, REVIEW))
    response = viewer.post(
        reverse("gallery:content-action", args=[content.pk, "approve"]),
        {"next": "https://evil.example/"},
    )
    assert response["Location"] == reverse("gallery:content", args=[content.pk])


def test_reviewing_an_unfinished_content_is_refused_with_a_message(
    make_content, make_user
):
    content = make_content(ContentStatus.RUNNING)
    viewer = _client(make_user(VIEW, REVIEW))
    response = viewer.post(
        reverse("gallery:content-action", args=[content.pk, "approve"]), follow=True
    )
    assert "Only generations that succeeded can be reviewed" in (
        response.content.decode()
    )
    content.refresh_from_db()
    assert content.review_state == ReviewState.PENDING


def test_regenerate_needs_the_generate_permission_and_opens_the_new_content(
    make_content, make_user
):
    content = make_content()
    url = reverse("gallery:content-action", args=[content.pk, "regenerate"])
    assert _client(make_user(VIEW, REVIEW)).post(url).status_code == 403
    assert not content.regenerations.exists()

    response = _client(make_user(VIEW, GENERATE)).post(url)
    regeneration = content.regenerations.get()
    assert response["Location"] == reverse("gallery:content", args=[regeneration.pk])
    assert regeneration.status == ContentStatus.QUEUED
    assert regeneration.replay_snapshot is None


def test_regenerate_exactly_replays_the_snapshot_and_shows_the_lineage(
    make_content, make_user
):
    content = make_content()
    viewer = _client(make_user(VIEW, GENERATE))
    viewer.post(
        reverse("gallery:content-action", args=[content.pk, "regenerate-exactly"])
    )
    replay = content.regenerations.get()
    assert replay.seed == content.seed
    assert replay.replay_snapshot == content.snapshot

    original_page = viewer.get(reverse("gallery:content", args=[content.pk]))
    assert f'href="/gallery/content/{replay.pk}/"' in original_page.content.decode()
    replay_page = viewer.get(reverse("gallery:content", args=[replay.pk]))
    assert f'Regenerates <a href="/gallery/content/{content.pk}/"' in (
        replay_page.content.decode()
    )


def test_regenerate_exactly_of_a_failed_content_is_refused_with_a_message(
    make_content, make_user
):
    content = make_content(ContentStatus.FAILED)
    viewer = _client(make_user(VIEW, GENERATE))
    response = viewer.post(
        reverse("gallery:content-action", args=[content.pk, "regenerate-exactly"]),
        follow=True,
    )
    assert "Only a generation that succeeded has a snapshot" in (
        response.content.decode()
    )
    assert not content.regenerations.exists()


def test_an_unknown_action_is_a_404_and_a_get_is_refused(make_content, make_user):
    content = make_content()
    viewer = _client(make_user(VIEW, REVIEW, GENERATE))
    assert (
        viewer.post(
            reverse("gallery:content-action", args=[content.pk, "delete"])
        ).status_code
        == 404
    )
    assert (
        viewer.get(
            reverse("gallery:content-action", args=[content.pk, "approve"])
        ).status_code
        == 405
    )


def test_csrf_is_enforced_on_every_post(make_content, grid, make_user):
    content = make_content()
    viewer = _client(make_user(VIEW, REVIEW, CHANGE_PERSONA), enforce_csrf_checks=True)
    posts = [
        (reverse("gallery:content-action", args=[content.pk, "approve"]), {}),
        (
            reverse("gallery:sweep-use-strength", args=[grid.pk]),
            {"content": grid.contents.first().pk},
        ),
        (reverse("gallery:grid-use-value", args=[grid.pk]), {"axis": 0, "value": 0}),
    ]
    for url, data in posts:
        assert viewer.post(url, data).status_code == 403, url
    content.refresh_from_db()
    assert content.review_state == ReviewState.PENDING

    viewer.get(reverse("gallery:content", args=[content.pk]))
    token = viewer.cookies["csrftoken"].value
    response = viewer.post(posts[0][0], {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    content.refresh_from_db()
    assert content.review_state == ReviewState.APPROVED


# --- Progress ---------------------------------------------------------------------


def test_progress_endpoint_reports_status_step_total_and_percent(
    make_content, make_user
):
    running = make_content(ContentStatus.RUNNING)
    done = make_content()
    viewer = _client(make_user(VIEW))
    response = viewer.get(
        reverse("gallery:progress") + f"?ids={running.pk},{done.pk},999999"
    )
    assert response.status_code == 200
    assert response.json() == {
        "contents": {
            str(running.pk): {
                "status": "running",
                "phase": "waiting",
                "label": "Running",
                "step": 1,
                "total": 4,
                "percent": 25,
                "eta_seconds": None,
                "preview": None,
                "ended": False,
                "finished": False,
            },
            str(done.pk): {
                "status": "succeeded",
                "phase": "waiting",
                "label": "Succeeded",
                "step": 4,
                "total": 4,
                "percent": 100,
                "eta_seconds": None,
                "preview": None,
                "ended": True,
                "finished": True,
            },
        }
    }


def test_progress_endpoint_refuses_ids_that_are_not_numbers(make_user):
    response = _client(make_user(VIEW)).get(reverse("gallery:progress") + "?ids=1,x")
    assert response.status_code == 400
    assert "content ids" in response.json()["error"]


@pytest.mark.finding
@pytest.mark.parametrize(
    "ids", ["99999999999999999999999", "0", "-3", "1,9223372036854775808"]
)
def test_progress_endpoint_refuses_ids_out_of_range_with_a_400(make_user, ids):
    response = _client(make_user(VIEW)).get(reverse("gallery:progress") + f"?ids={ids}")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "content ids" in error
    assert "from 1 to 9223372036854775807" in error
    assert f"got {ids.split(',')[-1]}" in error


def test_active_content_is_shown_with_a_progress_bar_and_its_card_url(
    gallery_persona, make_content, make_user
):
    running = make_content(ContentStatus.RUNNING)
    viewer = _client(make_user(VIEW))
    page = viewer.get(
        reverse("gallery:persona", args=[gallery_persona.slug])
    ).content.decode()
    assert f'data-progress data-content-id="{running.pk}"' in page
    assert f'data-card-url="/gallery/content/{running.pk}/card/"' in page
    Content.objects.filter(pk=running.pk).update(status=ContentStatus.SUCCEEDED)
    card = viewer.get(reverse("gallery:content-card", args=[running.pk]))
    assert "data-progress" not in card.content.decode()
    assert f'id="content-{running.pk}"' in card.content.decode()


# --- Grids --------------------------------------------------------------------------


def test_the_grid_sheet_shows_the_reference_and_labelled_tiles_with_scores_and_method(
    grid, make_user
):
    Content.objects.filter(batch=grid).update(
        method_requested="auto", method_used="img2img", identity_similarity=0.42
    )
    page = _client(make_user(VIEW, CHANGE_PERSONA)).get(
        reverse("gallery:grid", args=[grid.pk])
    )
    html = page.content.decode()
    labels = [
        html.index(f"img2img strength {value}") for value in ("0.9", "0.3", "0.5")
    ]
    assert labels == sorted(labels)  # the X axis in the order it was given
    assert html.index("Reference") < labels[0]
    assert html.count('value="Use this value"') == 3
    assert html.count("img2img from the reference (asked Automatic)") == 3
    for content in grid.contents.all():
        assert f'id="grid-tile-{content.pk}"' in html
        assert f"{1.0 - content.request['strength']:.3f}" in html  # its score


def test_a_sheet_marks_the_value_the_persona_uses_and_offers_no_button_for_it(
    gallery_persona, grid, make_user
):
    gallery_persona.img2img_strength = 0.3
    gallery_persona.save()
    html = (
        _client(make_user(VIEW, CHANGE_PERSONA))
        .get(reverse("gallery:grid", args=[grid.pk]))
        .content.decode()
    )
    assert html.count('value="Use this value"') == 2
    assert "current</span>" in html


def test_a_grid_with_a_z_axis_has_one_labelled_table_per_z_value(
    gallery_persona, make_user
):
    grid = services.content_grid(
        persona=gallery_persona,
        prompt="a portrait",
        axes=[
            GridAxis(parameter=GridParameter.STRENGTH, values=(0.4, 0.8)),
            GridAxis(parameter=GridParameter.STEPS, values=(4,)),
            GridAxis(
                parameter=GridParameter.SCHEDULER,
                values=("DDIMScheduler", "PNDMScheduler"),
            ),
        ],
    )
    html = (
        _client(make_user(VIEW, CHANGE_PERSONA))
        .get(reverse("gallery:grid", args=[grid.pk]))
        .content.decode()
    )
    assert html.count("data-grid-table") == 2
    first, second = (html.index(f"scheduler {name}") for name in ("DDIM", "PNDM"))
    assert first < second
    tiles = [html.index(f'id="grid-tile-{pk}"') for pk, _ in grid.tiles]
    assert tiles[1] < second < tiles[2]  # the second Z value's tiles follow it
    # Each table repeats the strengths with their buttons; the steps value is
    # the persona's own (current: no button); each scheduler has its button.
    assert html.count('value="Use this value"') == 6
    assert html.count("current</span>") == 2


def test_the_old_sweep_address_leads_to_its_grid(grid, make_user):
    viewer = _client(make_user(VIEW))
    response = viewer.get(reverse("gallery:sweep", args=[grid.pk]))
    assert response.status_code == 301
    assert response["Location"] == reverse("gallery:grid", args=[grid.pk])


def test_the_old_use_this_strength_saves_it_on_the_persona(
    gallery_persona, grid, make_user
):
    chosen = next(c for c in grid.contents.all() if c.request["strength"] == 0.3)
    url = reverse("gallery:sweep-use-strength", args=[grid.pk])
    viewer_without = _client(make_user(VIEW))
    assert viewer_without.post(url, {"content": chosen.pk}).status_code == 403
    gallery_persona.refresh_from_db()
    assert gallery_persona.img2img_strength == 0.7

    response = _client(make_user(VIEW, CHANGE_PERSONA)).post(
        url, {"content": chosen.pk}, follow=True
    )
    gallery_persona.refresh_from_db()
    assert gallery_persona.img2img_strength == 0.3
    assert "now uses img2img strength 0.3" in response.content.decode()
    (entry,) = LogEntry.objects.filter(object_id=str(gallery_persona.pk))
    assert entry.action_flag == CHANGE
    assert entry.get_edited_object() == gallery_persona
    assert entry.get_change_message() == (
        f"Changed img2img strength to 0.3 (a value of the X axis of grid #{grid.pk})."
    )


def test_the_old_use_this_strength_refuses_a_content_of_another_batch(
    gallery_persona, grid, make_content, make_user
):
    stranger = make_content(strength=0.25)
    response = _client(make_user(VIEW, CHANGE_PERSONA)).post(
        reverse("gallery:sweep-use-strength", args=[grid.pk]),
        {"content": stranger.pk},
        follow=True,
    )
    assert "Choose one of this grid" in response.content.decode()
    gallery_persona.refresh_from_db()
    assert gallery_persona.img2img_strength == 0.7


@pytest.mark.parametrize("name", ["grid", "sweep"])
def test_a_batch_that_is_not_a_grid_has_no_contact_sheet(
    gallery_persona, make_user, name
):
    batch = services.content_enqueue_batch(persona=gallery_persona, prompt="x", count=2)
    response = _client(make_user(VIEW)).get(reverse(f"gallery:{name}", args=[batch.pk]))
    assert response.status_code == 404


def test_the_grid_page_queues_a_grid_and_opens_its_sheet(gallery_persona, make_user):
    url = reverse("gallery:grid-new", args=[gallery_persona.slug])
    assert _client(make_user(VIEW)).get(url).status_code == 403
    maker = _client(make_user(VIEW, GENERATE))
    form = maker.get(url).content.decode()
    assert 'name="x_parameter"' in form and 'name="z_values"' in form
    response = maker.post(
        url,
        {
            "prompt": "a portrait",
            "x_parameter": "strength",
            "x_values": "0.4, 0.8",
            "y_parameter": "guidance_scale",
            "y_values": "4, 8",
        },
    )
    grid = gallery_persona.batches.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("gallery:grid", args=[grid.pk])
    assert grid.tile_count == 4


def test_the_grid_page_shows_a_refusal_and_keeps_the_form(gallery_persona, make_user):
    response = _client(make_user(VIEW, GENERATE)).post(
        reverse("gallery:grid-new", args=[gallery_persona.slug]),
        {
            "prompt": "a portrait",
            "x_parameter": "strength",
            "x_values": "0.02",
            "y_parameter": "steps",
            "y_values": "12",
        },
    )
    html = response.content.decode()
    assert response.status_code == 200
    assert "The tile img2img strength 0.02, steps 12 is sure to fail" in html
    assert 'value="0.02"' in html
    assert not Content.objects.exists()


@pytest.mark.parametrize("missing", ["content", "content-card"])
def test_a_missing_content_is_a_404(make_user, missing, db):
    response = _client(make_user(VIEW)).get(reverse(f"gallery:{missing}", args=[1]))
    assert response.status_code == 404
