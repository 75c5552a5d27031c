"""The generation admin: persona actions with their intermediate pages, the
content and batch admins, permissions, and the changelist's query count.

Generations are queued on the real Redis; no worker runs here (the end-to-end
tests cover what happens next).
"""

from __future__ import annotations

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rq.job import Job

from generation import services
from generation.engine.vocabulary import GridParameter
from generation.grids import GridAxis
from generation.models import Batch, BatchKind, Content, ContentStatus
from personas.models import Persona

pytestmark = pytest.mark.django_db

PERSONAS = "/admin/personas/persona/"
CONTENTS = "/admin/generation/content/"


@pytest.fixture
def staff(django_user_model, client):
    """A logged-in staff user with view permissions only; tests add more."""
    user = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(
            codename__in=["view_persona", "change_persona", "view_content"]
        )
    )
    client.force_login(user)
    return user


def _grant(user, *codenames: str) -> None:
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames))


def _history(obj) -> list[LogEntry]:
    """The admin history of ``obj``, newest first (as its history page lists)."""
    return list(
        LogEntry.objects.filter(object_id=str(obj.pk)).order_by("-action_time", "-id")
    )


def _actions(client, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200
    action_form = response.context["action_form"]
    if action_form is None:
        return set()
    return {name for name, _ in action_form.fields["action"].choices}


def test_generation_actions_are_hidden_without_the_permission(
    client, staff, persona_with_reference, studio_settings
):
    assert {"generate", "grid", "regenerate_latest"}.isdisjoint(
        _actions(client, PERSONAS)
    )
    assert {"regenerate", "cancel", "approve"}.isdisjoint(_actions(client, CONTENTS))

    _grant(staff, "generate_content")
    assert {"generate", "grid", "regenerate_latest"} <= _actions(client, PERSONAS)
    content_actions = _actions(client, CONTENTS)
    assert {"regenerate", "regenerate_exactly", "cancel", "retry"} <= content_actions
    assert {"approve", "reject"}.isdisjoint(content_actions)

    _grant(staff, "review_content")
    assert {"approve", "reject"} <= _actions(client, CONTENTS)


def test_generate_asks_on_an_intermediate_page_first(
    admin_client, persona_with_reference, studio_settings
):
    response = admin_client.post(
        PERSONAS,
        {"action": "generate", "_selected_action": [persona_with_reference.pk]},
    )
    assert response.status_code == 200
    assert "admin/generation/action_form.html" in [
        template.name for template in response.templates
    ]
    assert not Content.objects.exists()

    response = admin_client.post(
        PERSONAS,
        {
            "action": "generate",
            "_selected_action": [persona_with_reference.pk],
            "post": "yes",
            "prompt": "",
            "count": "30",
        },
    )
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"prompt", "count"}
    assert not Content.objects.exists()


def test_generate_confirmed_queues_the_rows_and_their_jobs(
    admin_client,
    persona_with_reference,
    studio_settings,
    redis_connection,
    django_capture_on_commit_callbacks,
):
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(
            PERSONAS,
            {
                "action": "generate",
                "_selected_action": [persona_with_reference.pk],
                "post": "yes",
                "prompt": "in the rain",
                "count": "3",
                "method": "img2img",
                "strength": "0.5",
                "seed": "",
            },
        )
    assert response.status_code == 302
    contents = list(Content.objects.all())
    assert len(contents) == 3
    assert {content.request["strength"] for content in contents} == {0.5}
    assert all(
        Job.exists(content.rq_job_id, connection=redis_connection)
        for content in contents
    )


def test_a_refused_generation_shows_the_reason_where_staff_acted(
    admin_client, studio_settings
):
    from personas.services import persona_create

    bare = persona_create(name="Bare", slug="bare")
    response = admin_client.post(
        PERSONAS,
        {
            "action": "generate",
            "_selected_action": [bare.pk],
            "post": "yes",
            "prompt": "x",
            "count": "1",
            "method": "img2img",
        },
        follow=True,
    )
    messages = [str(message) for message in response.context["messages"]]
    assert any("needs a reference image" in message for message in messages)
    assert not Content.objects.exists()


def _run_grid(client, persona, *, follow: bool = False, **fields: str):
    """Post the admin's "X/Y/Z grid…" page, confirmed, for ``persona``."""
    return client.post(
        PERSONAS,
        {
            "action": "grid",
            "_selected_action": [persona.pk],
            "post": "yes",
            "prompt": "grid",
            "x_parameter": "strength",
            **fields,
        },
        follow=follow,
    )


def test_the_grid_action_queues_one_row_per_tile_and_its_contact_sheet(
    admin_client, persona_with_reference, studio_settings
):
    response = _run_grid(
        admin_client,
        persona_with_reference,
        x_values="0.3, 0.5",
        y_parameter="steps",
        y_values="4, 6",
        seed="3",
    )
    assert response.status_code == 302
    batch = Batch.objects.get()
    assert batch.kind == BatchKind.GRID
    assert sorted(
        (c.request["strength"], c.request["steps"]) for c in batch.contents.all()
    ) == [(0.3, 4), (0.3, 6), (0.5, 4), (0.5, 6)]
    assert {c.seed for c in batch.contents.all()} == {3}
    page = admin_client.get(f"/admin/generation/batch/{batch.pk}/change/")
    assert page.status_code == 200
    sheet_url = reverse("gallery:grid", args=[batch.pk])
    assert f'href="{sheet_url}"' in page.content.decode()
    sheet = admin_client.get(sheet_url)
    assert sheet.status_code == 200
    for label in ("img2img strength 0.3", "img2img strength 0.5", "steps 4", "steps 6"):
        assert label in sheet.content.decode()


def test_the_grid_action_refuses_a_tile_sure_to_fail_and_queues_nothing(
    admin_client, persona_with_reference, studio_settings
):
    response = _run_grid(
        admin_client,
        persona_with_reference,
        follow=True,
        method="img2img",
        x_values="0.02, 0.5",
        y_parameter="steps",
        y_values="12",
    )
    messages = [str(message) for message in response.context["messages"]]
    assert any("img2img strength 0.02, steps 12 is sure to fail" in m for m in messages)
    assert not Batch.objects.exists()
    assert not Content.objects.exists()


def test_use_this_value_saves_it_on_the_persona_with_a_history_entry(
    admin_client, admin_user, persona_with_reference, studio_settings
):
    batch = services.content_grid(
        persona=persona_with_reference,
        prompt="grid",
        axes=[GridAxis(parameter=GridParameter.STRENGTH, values=(0.3, 0.6))],
    )
    url = reverse("gallery:grid-use-value", args=[batch.pk])
    response = admin_client.post(url, {"axis": 0, "value": 1})
    assert response.status_code == 302
    persona_with_reference.refresh_from_db()
    assert persona_with_reference.img2img_strength == 0.6
    assert admin_client.get(url).status_code == 405
    entry = LogEntry.objects.get(object_id=str(persona_with_reference.pk))
    assert entry.user == admin_user
    assert entry.action_flag == CHANGE
    assert entry.get_edited_object() == persona_with_reference
    assert "img2img strength to 0.6" in entry.get_change_message()
    assert f"grid #{batch.pk}" in entry.get_change_message()
    history = admin_client.get(
        reverse("admin:personas_persona_history", args=[persona_with_reference.pk])
    )
    assert "img2img strength to 0.6" in history.content.decode()


def test_regenerate_latest_needs_a_generation_first(
    admin_client, persona_with_reference, studio_settings
):
    confirmed = {
        "action": "regenerate_latest",
        "_selected_action": [persona_with_reference.pk],
        "post": "yes",
    }
    response = admin_client.post(PERSONAS, confirmed, follow=True)
    assert any(
        "no generation yet" in str(message) for message in response.context["messages"]
    )
    original = services.content_enqueue(persona=persona_with_reference, prompt="x")
    admin_client.post(PERSONAS, confirmed)
    assert Content.objects.get(regenerated_from=original).seed != original.seed


def test_cancel_and_retry_actions(
    admin_client, persona_with_reference, studio_settings
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    admin_client.post(CONTENTS, {"action": "cancel", "_selected_action": [content.pk]})
    content.refresh_from_db()
    assert content.status == ContentStatus.CANCELLED
    admin_client.post(
        CONTENTS,
        {"action": "retry", "_selected_action": [content.pk], "post": "yes"},
    )
    content.refresh_from_db()
    assert content.status == ContentStatus.QUEUED
    assert [entry.get_change_message() for entry in _history(content)] == [
        "Queued again (retry).",
        "Cancel requested.",
    ]


def test_content_pages_render_for_queued_rows(
    admin_client, persona_with_reference, studio_settings
):
    content = services.content_enqueue(
        persona=persona_with_reference, prompt="a queued one"
    )
    changelist = admin_client.get(CONTENTS)
    assert changelist.status_code == 200
    body = changelist.content.decode()
    assert "images are noise" in body
    assert "/admin/rq/" in body
    change = admin_client.get(f"{CONTENTS}{content.pk}/change/")
    assert change.status_code == 200
    assert "a queued one" in change.content.decode()


def test_the_changelist_runs_a_constant_number_of_queries(
    admin_client, persona_with_reference, studio_settings
):
    def queries() -> int:
        with CaptureQueriesContext(db_connection) as captured:
            assert admin_client.get(CONTENTS).status_code == 200
        return len(captured)

    services.content_enqueue_batch(persona=persona_with_reference, prompt="x", count=2)
    few = queries()
    for _ in range(3):
        services.content_enqueue_batch(
            persona=persona_with_reference, prompt="y", count=5
        )
    assert Content.objects.count() == 17
    assert queries() == few


def test_a_bulk_regenerate_asks_for_confirmation_before_it_queues_anything(
    admin_client, persona_with_reference, studio_settings
):
    first = services.content_enqueue(persona=persona_with_reference, prompt="one")
    second = services.content_enqueue(persona=persona_with_reference, prompt="two")
    selected = {"action": "regenerate", "_selected_action": [first.pk, second.pk]}

    response = admin_client.post(CONTENTS, selected)
    assert response.status_code == 200
    assert "admin/generation/action_form.html" in [
        template.name for template in response.templates
    ]
    page = response.content.decode()
    assert "queues work on the GPU workers for each of the 2 selected" in page
    assert 'name="post" value="yes"' in page
    assert Content.objects.count() == 2

    response = admin_client.post(CONTENTS, {**selected, "post": "yes"}, follow=True)
    assert Content.objects.filter(regenerated_from__in=[first, second]).count() == 2
    messages = [str(message) for message in response.context["messages"]]
    assert "Queued 2 regeneration(s) with new seeds." in messages
    for original in (first, second):
        regeneration = original.regenerations.get()
        (entry,) = _history(original)
        assert entry.get_change_message() == (
            f"Regenerated with a new seed as content #{regeneration.pk}."
        )


def test_review_actions_leave_history_entries(
    admin_client, persona_with_reference, studio_settings
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    Content.objects.filter(pk=content.pk).update(status=ContentStatus.SUCCEEDED)
    admin_client.post(CONTENTS, {"action": "approve", "_selected_action": [content.pk]})
    admin_client.post(CONTENTS, {"action": "reject", "_selected_action": [content.pk]})
    assert [entry.get_change_message() for entry in _history(content)] == [
        "Rejected.",
        "Approved.",
    ]
    history = admin_client.get(
        reverse("admin:generation_content_history", args=[content.pk])
    )
    assert "Approved." in history.content.decode()


def test_a_refused_action_leaves_no_history_entry(
    admin_client, persona_with_reference, studio_settings
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    response = admin_client.post(
        CONTENTS, {"action": "approve", "_selected_action": [content.pk]}, follow=True
    )
    assert any(
        "Only generations that succeeded can be reviewed" in str(message)
        for message in response.context["messages"]
    )
    assert not _history(content)


def test_generate_writes_the_history_of_each_persona(
    admin_client, persona_with_reference, studio_settings
):
    admin_client.post(
        PERSONAS,
        {
            "action": "generate",
            "_selected_action": [persona_with_reference.pk],
            "post": "yes",
            "prompt": "in the rain",
            "count": "2",
        },
    )
    batch = Batch.objects.get()
    (entry,) = _history(persona_with_reference)
    assert entry.get_change_message() == f"Queued {batch}."


def test_content_page_shows_reference_control_and_output_from_templates(
    admin_client, persona_with_reference, studio_settings
):
    from generation.models import ContentControlImage
    from tests.gallery.conftest import finish

    content = finish(
        services.content_enqueue(persona=persona_with_reference, prompt="x")
    )
    control = ContentControlImage(content=content, control_type="canny")
    control.image.save("control.png", content.output_image.file, save=True)

    page = admin_client.get(f"{CONTENTS}{content.pk}/change/").content.decode()
    assert "generation/admin.css" in page
    for file in (content.before_reference.image, control.image, content.output_image):
        assert f'src="{reverse("studio-media", args=[file.name])}"' in page
    assert "Canny edges control" in page
    assert f'href="{reverse("gallery:content", args=[content.pk])}"' in page
    assert 'style="' not in page.split('id="content-main"')[1].split("</form>")[0]

    listing = admin_client.get(CONTENTS).content.decode()
    assert f'src="{reverse("studio-media", args=[content.output_thumbnail.name])}"' in (
        listing
    )


def test_the_generation_admin_adds_its_actions_without_importing_the_persona_admin():
    import ast
    from pathlib import Path

    import generation.admin

    tree = ast.parse(Path(generation.admin.__file__).read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {name for name in imported if name.startswith("personas.admin")}
    from django.contrib import admin

    persona_admin = admin.site.get_model_admin(Persona)
    names = {getattr(action, "__name__", action) for action in persona_admin.actions}
    assert {"lock_appearance", "generate", "grid"} <= names


def test_the_admin_and_the_gallery_offer_exactly_the_entries_of_the_action_table():
    from django.contrib import admin

    from generation import actions
    from generation.gallery.views import CONTENT_ACTIONS

    for model, entries in (
        (Content, actions.CONTENT_ACTIONS),
        (Persona, actions.PERSONA_ACTIONS),
    ):
        model_admin = admin.site.get_model_admin(model)
        offered = {
            action.__name__: action
            for action in model_admin.actions
            if not isinstance(action, str)
        }
        for entry in entries:
            action = offered[entry.name]
            assert action.allowed_permissions == [entry.admin_permission]
            assert action.short_description == entry.description
            assert callable(
                getattr(model_admin, f"has_{entry.admin_permission}_permission")
            )
    assert {slug: entry.name for slug, entry in CONTENT_ACTIONS.items()} == {
        entry.slug: entry.name for entry in actions.CONTENT_ACTIONS
    }
