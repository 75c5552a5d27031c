"""The staff's queue page (gallery:queue) on a real Redis: each queued content
with its position in RQ's order, move to the front, bulk cancel through the
action table, several queues, and what each worker runs and has warm."""

from __future__ import annotations

import pytest
from django.contrib.admin.models import LogEntry
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from django.urls import reverse

from generation import services
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides
from generation.queues import get_queue
from personas.models import Persona
from personas.services import persona_create, reference_image_add
from tests.images import encode, halves
from tests.workers import use_queue, wait_for

VIEW = "generation.view_content"
GENERATE = "generation.generate_content"

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queues(studio_settings, redis_connection):
    """Two queues on the test's Redis, emptied first: "q-main" (the default)
    and "q-other", where the route sends the "other" model."""
    use_queue(studio_settings, "q-main")
    studio_settings.RQ_QUEUES = {
        name: {"URL": studio_settings.REDIS_URL, "DEFAULT_TIMEOUT": 600}
        for name in ("q-main", "q-other")
    }
    for name in ("q-main", "q-other"):
        get_queue(name).empty()
    return studio_settings


@pytest.fixture
def fay(queues) -> Persona:
    gallery_persona = persona_create(
        name="Fay", appearance="a card", method="text", width=64, height=64, steps=4
    )
    reference_image_add(
        persona=gallery_persona,
        file=SimpleUploadedFile("ref.png", encode(halves((64, 64)), "PNG")),
        is_primary=True,
    )
    return gallery_persona


@pytest.fixture
def staff(make_user) -> Client:
    client = Client()
    client.force_login(make_user(VIEW, GENERATE))
    return client


def queue_three(gallery_persona: Persona) -> list[Content]:
    return [
        services.content_enqueue(persona=gallery_persona, prompt=f"portrait {number}")
        for number in range(3)
    ]


def positions(client: Client, queue: str = "q-main") -> dict[int, int | None]:
    page = client.get(reverse("gallery:queue"))
    assert page.status_code == 200
    (view,) = [view for view in page.context["queues"] if view.name == queue]
    return {row.content.pk: row.position for row in view.rows}


def test_each_queued_content_has_its_position_in_rqs_order(fay, staff):
    first, second, third = queue_three(fay)
    assert positions(staff) == {first.pk: 1, second.pk: 2, third.pk: 3}
    assert get_queue("q-main").get_job_ids()[0] == first.rq_job_id


def test_move_to_the_front_puts_the_job_first_in_the_queue(fay, staff):
    first, second, third = queue_three(fay)
    response = staff.post(
        reverse("gallery:queue"),
        {"action": "move-to-front", "content": third.pk},
        follow=True,
    )
    assert "Moved" in response.content.decode()
    assert get_queue("q-main").get_job_ids() == [
        third.rq_job_id,
        first.rq_job_id,
        second.rq_job_id,
    ]
    assert positions(staff) == {third.pk: 1, first.pk: 2, second.pk: 3}
    assert LogEntry.objects.get().change_message == "Moved to the front of its queue."


def test_bulk_cancel_goes_through_the_action_table(fay, staff):
    first, second, third = queue_three(fay)
    staff.post(
        reverse("gallery:queue"), {"action": "cancel", "content": [first.pk, third.pk]}
    )
    statuses = dict(Content.objects.values_list("pk", "status"))
    assert statuses[first.pk] == statuses[third.pk] == ContentStatus.CANCELLED
    assert statuses[second.pk] == ContentStatus.QUEUED
    assert LogEntry.objects.count() == 2
    wait_for(
        lambda: get_queue("q-main").get_job_ids() == [second.rq_job_id],
        timeout=5,
        what="the cancelled jobs to leave the queue",
    )
    assert positions(staff) == {second.pk: 1}


def test_each_queue_has_its_own_positions(fay, queues, staff):
    main = services.content_enqueue(persona=fay, prompt="main")
    queues.STUDIO_QUEUE_ROUTES = {fay.base_model: "q-other"}
    other = services.content_enqueue(persona=fay, prompt="other")
    assert other.queue_name == "q-other"
    assert positions(staff, "q-main") == {main.pk: 1}
    assert positions(staff, "q-other") == {other.pk: 1}


def test_a_delayed_content_has_no_position_and_cannot_move(fay, staff):
    content = services.content_enqueue(persona=fay, prompt="later")
    get_queue("q-main").remove(content.rq_job_id)  # as a retry waiting its backoff
    assert positions(staff) == {content.pk: None}
    response = staff.post(
        reverse("gallery:queue"),
        {"action": "move-to-front", "content": content.pk},
        follow=True,
    )
    assert "is not waiting in the q-main queue" in response.content.decode()


def test_acting_needs_the_generate_permission(fay, make_user):
    (content, *_) = queue_three(fay)
    viewer = Client()
    viewer.force_login(make_user(VIEW))
    assert viewer.get(reverse("gallery:queue")).status_code == 200
    response = viewer.post(
        reverse("gallery:queue"), {"action": "cancel", "content": content.pk}
    )
    assert response.status_code == 403
    content.refresh_from_db()
    assert content.status == ContentStatus.QUEUED


def test_the_admin_header_links_to_the_queue_page(fay, admin_client):
    page = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{reverse("gallery:queue")}"' in page


@pytest.mark.e2e
def test_each_worker_shows_what_it_runs_and_its_warm_models(fay, start_worker, staff):
    start_worker("q-main")
    fast = services.content_enqueue(
        persona=fay, prompt="warm up", overrides=GenerationOverrides(steps=2)
    )
    wait_for(
        lambda: Content.objects.filter(pk=fast.pk, status="succeeded").exists(),
        what="the first run",
    )
    slow = services.content_enqueue(
        persona=fay, prompt="slow", overrides=GenerationOverrides(steps=150)
    )

    def worker_running_slow():
        page = staff.get(reverse("gallery:queue"))
        (view,) = [view for view in page.context["queues"] if view.name == "q-main"]
        return next(
            (
                worker
                for worker in view.workers
                if worker.current_content is not None
                and worker.current_content.pk == slow.pk
            ),
            None,
        )

    worker = wait_for(worker_running_slow, what="the worker to run the slow job")
    assert worker.warm_models == [fay.base_model]
    assert worker.state == "busy"
    services.content_cancel(content=slow)
