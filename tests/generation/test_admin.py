"""The generation admin: persona actions with their intermediate pages, the
content and batch admins, permissions, and the changelist's query count.

Generations are queued on the real Redis; no worker runs here (the end-to-end
tests cover what happens next).
"""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext
from rq.job import Job

from generation import services
from generation.models import Batch, BatchKind, Content, ContentStatus

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
    assert {"generate", "strength_sweep", "regenerate_latest"}.isdisjoint(
        _actions(client, PERSONAS)
    )
    assert {"regenerate", "cancel", "approve"}.isdisjoint(_actions(client, CONTENTS))

    _grant(staff, "generate_content")
    assert {"generate", "strength_sweep", "regenerate_latest"} <= _actions(
        client, PERSONAS
    )
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
    assert "admin/generation/persona_action_form.html" in [
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


def test_strength_sweep_queues_one_row_per_strength_and_its_contact_sheet(
    admin_client, persona_with_reference, studio_settings
):
    response = admin_client.post(
        PERSONAS,
        {
            "action": "strength_sweep",
            "_selected_action": [persona_with_reference.pk],
            "post": "yes",
            "prompt": "sweep",
            "strengths": "0.3, 0.5, 0.7, 0.9",
            "seed": "3",
        },
    )
    assert response.status_code == 302
    batch = Batch.objects.get()
    assert batch.kind == BatchKind.SWEEP
    assert sorted(c.request["strength"] for c in batch.contents.all()) == [
        0.3,
        0.5,
        0.7,
        0.9,
    ]
    page = admin_client.get(f"/admin/generation/batch/{batch.pk}/change/")
    assert page.status_code == 200
    for strength in ("0.3", "0.5", "0.7", "0.9"):
        assert f"strength {strength}" in page.content.decode()


def test_use_this_strength_saves_it_on_the_persona(
    admin_client, persona_with_reference, studio_settings
):
    batch = services.content_strength_sweep(
        persona=persona_with_reference, prompt="sweep", strengths=[0.3, 0.6]
    )
    chosen = batch.contents.get(request__strength=0.6)
    response = admin_client.post(
        f"/admin/generation/batch/{batch.pk}/use-strength/{chosen.pk}/"
    )
    assert response.status_code == 302
    persona_with_reference.refresh_from_db()
    assert persona_with_reference.img2img_strength == 0.6
    assert (
        admin_client.get(
            f"/admin/generation/batch/{batch.pk}/use-strength/{chosen.pk}/"
        ).status_code
        == 405
    )


def test_regenerate_latest_needs_a_generation_first(
    admin_client, persona_with_reference, studio_settings
):
    response = admin_client.post(
        PERSONAS,
        {
            "action": "regenerate_latest",
            "_selected_action": [persona_with_reference.pk],
        },
        follow=True,
    )
    assert any(
        "no generation yet" in str(message) for message in response.context["messages"]
    )
    original = services.content_enqueue(persona=persona_with_reference, prompt="x")
    admin_client.post(
        PERSONAS,
        {
            "action": "regenerate_latest",
            "_selected_action": [persona_with_reference.pk],
        },
    )
    assert Content.objects.get(regenerated_from=original).seed != original.seed


def test_cancel_and_retry_actions(
    admin_client, persona_with_reference, studio_settings
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    admin_client.post(CONTENTS, {"action": "cancel", "_selected_action": [content.pk]})
    content.refresh_from_db()
    assert content.status == ContentStatus.CANCELLED
    admin_client.post(CONTENTS, {"action": "retry", "_selected_action": [content.pk]})
    content.refresh_from_db()
    assert content.status == ContentStatus.QUEUED


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
