"""Services: rows first, jobs on commit, and the rules a person can trip over.

These run against the real Redis but start no worker: they check what lands in
the database and in the queue.
"""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from rq.job import Job

from generation import services
from generation.models import BatchKind, ContentStatus, ReviewState
from generation.parameters import GenerationOverrides
from generation.reconcile import reconcile
from personas.models import SeedPolicy
from personas.services import persona_create
from tests.workers import make_persona

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(redis_connection, studio_settings):
    redis_connection.flushall()
    return redis_connection


def test_enqueue_creates_the_row_first_and_the_job_on_commit(
    persona_with_reference, connection, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        content = services.content_enqueue(
            persona=persona_with_reference,
            prompt="on a beach",
            overrides=GenerationOverrides(method="img2img", strength=0.4, seed=11),
        )
        assert not Job.exists(content.rq_job_id, connection=connection)
    assert len(callbacks) == 1
    job = Job.fetch(content.rq_job_id, connection=connection)
    assert job.args == (content.pk,)
    assert job.origin == "gpu"
    assert content.status == ContentStatus.QUEUED
    assert content.request["prompt"] == "a red and blue test card, on a beach"
    assert content.request["method"] == "img2img"
    assert content.request["strength"] == 0.4
    assert content.seed == content.request["seed"] == 11
    assert content.before_reference == persona_with_reference.references.get()
    assert list(content.references.all()) == [persona_with_reference.references.get()]


def test_the_text_method_gives_the_engine_no_reference_but_keeps_the_before(
    persona_with_reference, connection
):
    content = services.content_enqueue(
        persona=persona_with_reference,
        prompt="x",
        overrides=GenerationOverrides(method="text"),
    )
    assert content.request["references"] == []
    assert content.before_reference == persona_with_reference.references.get()


def test_a_row_whose_enqueue_failed_is_enqueued_by_reconcile(
    persona_with_reference,
    connection,
    studio_settings,
    django_capture_on_commit_callbacks,
):
    live_queues = studio_settings.RQ_QUEUES
    studio_settings.RQ_QUEUES = {
        "gpu": {"URL": "unix:///nonexistent/redis.sock", "DEFAULT_TIMEOUT": 60}
    }
    with django_capture_on_commit_callbacks(execute=True):
        content = services.content_enqueue(
            persona=persona_with_reference, prompt="redis is down"
        )
    content.refresh_from_db()
    assert content.status == ContentStatus.QUEUED

    studio_settings.RQ_QUEUES = live_queues
    with django_capture_on_commit_callbacks(execute=True):
        report = reconcile()
    assert report.requeued == [content.pk]
    content.refresh_from_db()
    assert Job.exists(content.rq_job_id, connection=connection)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"strength": 1.5}, "strength"),
        ({"steps": 0}, "steps"),
        ({"width": 100}, "width"),
        ({"method": "magic"}, "method"),
    ],
)
def test_out_of_range_overrides_are_refused_with_a_message(
    persona_with_reference, connection, overrides, field
):
    with pytest.raises(ValidationError) as error:
        services.content_enqueue(
            persona=persona_with_reference,
            prompt="x",
            overrides=GenerationOverrides(**overrides),
        )
    assert field in error.value.message_dict


def test_a_method_that_needs_a_reference_is_refused_without_one(
    studio_settings, connection
):
    bare = persona_create(name="Bare", slug="bare")
    with pytest.raises(ValidationError) as error:
        services.content_enqueue(
            persona=bare, prompt="x", overrides=GenerationOverrides(method="img2img")
        )
    assert error.value.code == "needs_reference"
    assert "gallery" in error.value.messages[0]


def test_controlnet_without_a_unit_is_refused(persona_with_reference, connection):
    with pytest.raises(ValidationError) as error:
        services.content_enqueue(
            persona=persona_with_reference,
            prompt="x",
            overrides=GenerationOverrides(method="hybrid"),
        )
    assert error.value.code == "needs_control_unit"


def test_a_batch_with_a_fixed_seed_counts_up_from_it(studio_settings, connection):
    persona = make_persona(slug="fixed", seed_policy=SeedPolicy.FIXED, seed=41)
    batch = services.content_enqueue_batch(persona=persona, prompt="x", count=3)
    contents = list(batch.contents.order_by("id"))
    assert [content.seed for content in contents] == [41, 42, 43]
    assert batch.kind == BatchKind.BATCH


def test_a_batch_count_is_bounded(persona_with_reference, connection):
    with pytest.raises(ValidationError) as error:
        services.content_enqueue_batch(
            persona=persona_with_reference, prompt="x", count=0
        )
    assert "count" in error.value.message_dict


def test_cancel_a_queued_row_cancels_it_and_its_job(
    persona_with_reference, connection, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        content = services.content_enqueue(persona=persona_with_reference, prompt="x")
        content = services.content_cancel(content=content)
    assert content.status == ContentStatus.CANCELLED
    job = Job.fetch(content.rq_job_id, connection=connection)
    assert job.get_status() == "canceled"

    with pytest.raises(ValidationError) as error:
        services.content_cancel(content=content)
    assert error.value.code == "not_active"


def test_retry_queues_a_cancelled_row_under_a_new_job(
    persona_with_reference, connection, django_capture_on_commit_callbacks
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    content = services.content_cancel(content=content)
    old_job = content.rq_job_id
    with django_capture_on_commit_callbacks(execute=True):
        content = services.content_retry(content=content)
    assert content.status == ContentStatus.QUEUED
    assert content.rq_job_id != old_job
    assert content.error_message == ""
    assert Job.exists(content.rq_job_id, connection=connection)

    with pytest.raises(ValidationError):
        services.content_retry(content=content)


def test_only_succeeded_content_can_be_reviewed_or_replayed(
    persona_with_reference, connection, admin_user
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    with pytest.raises(ValidationError) as error:
        services.content_review(
            content=content, state=ReviewState.APPROVED, user=admin_user
        )
    assert error.value.code == "not_reviewable"
    with pytest.raises(ValidationError) as error:
        services.content_regenerate_exactly(content=content)
    assert error.value.code == "no_snapshot"


def test_regenerate_keeps_the_request_and_changes_the_seed(
    persona_with_reference, connection
):
    original = services.content_enqueue(
        persona=persona_with_reference,
        prompt="x",
        overrides=GenerationOverrides(seed=5),
    )
    copy = services.content_regenerate(content=original)
    assert copy.regenerated_from == original
    assert copy.seed != original.seed
    assert {**copy.request, "seed": 5} == original.request


def test_a_job_that_is_not_the_rows_current_one_cannot_claim_it(
    persona_with_reference, connection
):
    content = services.content_enqueue(persona=persona_with_reference, prompt="x")
    assert not services.content_claim(
        content_id=content.pk, job_id="some-other-job", worker_name="w"
    )
    assert services.content_claim(
        content_id=content.pk, job_id=content.rq_job_id, worker_name="w"
    )
    # The same job delivered twice runs once.
    assert not services.content_claim(
        content_id=content.pk, job_id=content.rq_job_id, worker_name="w"
    )


def test_use_this_value_checks_the_persona_as_every_persona_write_does(
    persona_with_reference,
):
    """A grid's values were checked when it was queued; the persona's own
    checks still apply when one is written (a fixed seed policy needs a seed)."""
    from generation.engine.vocabulary import GridParameter
    from generation.grids import GridAxis

    grid = services.content_grid(
        persona=persona_with_reference,
        prompt="x",
        axes=[GridAxis(parameter=GridParameter.STRENGTH, values=(0.35,))],
    )
    services.persona_use_grid_value(batch=grid, axis_index=0, value_index=0)
    persona_with_reference.refresh_from_db()
    assert persona_with_reference.img2img_strength == 0.35
    grid.axes[0]["values"] = [1.4]  # as if edited behind the studio's back
    with pytest.raises(ValidationError):
        services.persona_use_grid_value(batch=grid, axis_index=0, value_index=0)
