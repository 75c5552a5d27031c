"""End to end: a real redis-server, real worker processes, the tiny model.

Rows are created through the admin or the services in this process; workers
(``manage.py studio_worker``) run the jobs in theirs. Faults are real: a worker
killed with SIGKILL or stopped with SIGTERM, Redis flushed, and a real
out-of-memory error raised at a denoising step (by the engine of a test worker
class, ``tests.faulty_workers.OutOfMemoryWorker``).
"""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage
from django.core.management import call_command
from PIL import Image
from rq.job import Job

from generation import services
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides
from generation.reconcile import reconcile
from personas.models import ControlNetUnit
from tests.faulty_workers import OUT_OF_MEMORY_ATTEMPTS_ENV
from tests.workers import make_persona, wait_finished, wait_for, wait_scored

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

# Many steps: a run to watch, cancel or kill at an early step (about a second on
# an idle machine) that still completes fast when retried.
SLOW = {"steps": 100}
OUT_OF_MEMORY_WORKER = "tests.faulty_workers.OutOfMemoryWorker"


def _pixels(content: Content) -> bytes:
    with default_storage.open(content.output_image.name, "rb") as file:
        return Image.open(io.BytesIO(file.read())).convert("RGB").tobytes()


def _running_with_progress(content: Content) -> Content:
    """Wait until ``content`` runs and has reported a step; return it fresh."""
    return wait_for(
        lambda: Content.objects.filter(
            pk=content.pk, status=ContentStatus.RUNNING, progress_step__gt=0
        ).first(),
        what=f"content #{content.pk} to report progress",
    )


def test_generate_action_reaches_succeeded_with_files_score_and_a_warm_registry(
    admin_client, persona_with_reference, start_worker
):
    start_worker("cpu")  # scores on STUDIO_CPU_QUEUE, off the GPU worker
    start_worker("generate")
    response = admin_client.post(
        "/admin/personas/persona/",
        {
            "action": "generate",
            "_selected_action": [persona_with_reference.pk],
            "post": "yes",
            "prompt": "a portrait",
            "negative_prompt": "",
            "count": "2",
            "method": "img2img",
            "strength": "0.75",
            "seed": "7",
        },
    )
    assert response.status_code == 302
    first, second = Content.objects.filter(persona=persona_with_reference).order_by(
        "id"
    )
    assert [first.seed, second.seed] == [7, 8]
    assert first.batch_id == second.batch_id is not None

    for content in (first, second):
        content = wait_finished(content)
        assert content.status == ContentStatus.SUCCEEDED, content.error_detail
        for file in (
            content.output_image,
            content.output_thumbnail,
            content.before_thumbnail,
        ):
            assert default_storage.exists(file.name)
        with default_storage.open(content.output_image.name, "rb") as file:
            assert Image.open(file).size == (64, 64)
        content = wait_scored(content)
        assert 0.0 <= content.consistency_score <= 1.0
        assert content.score_detail["ssim"] is not None
        assert content.method_used == "img2img"
        assert content.snapshot["request"]["seed"] == content.seed
        assert content.snapshot["request"]["strength"] == 0.75
        assert content.progress_step == content.progress_total > 0
        assert content.attempts == 1
        assert content.timings["queue_wait"] >= 0
        assert content.timings["inference"] > 0
    first.refresh_from_db()
    second.refresh_from_db()
    # The second job found the model loaded by the first: nothing loaded again.
    assert first.timings["registry_hit"] is False
    assert second.timings["registry_hit"] is True
    assert second.timings["registry"]["loads"] == 1

    page = admin_client.get(f"/admin/generation/content/{first.pk}/change/")
    body = page.content.decode()
    for file in (first.before_reference.image, first.output_image):
        assert f"/media/{file.name}" in body
    assert "pipeline_class" in body and "StableDiffusionImg2ImgPipeline" in body
    admin_client.post(
        "/admin/generation/content/",
        {"action": "approve", "_selected_action": [first.pk]},
    )
    first.refresh_from_db()
    assert first.review_state == "approved"

    exact = wait_finished(services.content_regenerate_exactly(content=first))
    assert exact.status == ContentStatus.SUCCEEDED, exact.error_detail
    assert exact.regenerated_from_id == first.pk
    assert exact.snapshot["outputs"] == first.snapshot["outputs"]
    assert _pixels(exact) == _pixels(first)

    varied = wait_finished(services.content_regenerate(content=first))
    assert varied.status == ContentStatus.SUCCEEDED, varied.error_detail
    assert varied.seed != first.seed
    assert varied.snapshot["outputs"] != first.snapshot["outputs"]

    names = [varied.output_image.name, varied.output_thumbnail.name]
    admin_client.post(
        "/admin/generation/content/",
        {"action": "delete_selected", "_selected_action": [varied.pk], "post": "yes"},
    )
    assert not Content.objects.filter(pk=varied.pk).exists()
    assert not any(default_storage.exists(name) for name in names)


def test_progress_is_seen_while_running_and_cancel_stops_the_run(
    studio_settings, shared_worker, redis_connection
):
    persona = make_persona(slug="slow", **SLOW)
    content = services.content_enqueue(
        persona=persona, prompt="slow", overrides=GenerationOverrides(method="text")
    )

    running = _running_with_progress(content)
    assert 0 < running.progress_step < running.progress_total
    job = Job.fetch(running.rq_job_id, connection=redis_connection)
    assert 0 < job.meta["progress"]["step"] < SLOW["steps"]
    # A live run is left alone by the reconciler.
    assert reconcile().repaired == 0

    services.content_cancel(content=running)
    cancelled = wait_finished(content)
    assert cancelled.status == ContentStatus.CANCELLED
    assert cancelled.progress_step < SLOW["steps"]
    assert not cancelled.output_image


def test_a_transient_out_of_memory_error_is_retried_and_succeeds(
    persona_with_reference, start_worker
):
    start_worker(
        "oom", worker_class=OUT_OF_MEMORY_WORKER, **{OUT_OF_MEMORY_ATTEMPTS_ENV: "1"}
    )
    content = services.content_enqueue(
        persona=persona_with_reference, prompt="retry me"
    )

    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.attempts == 2
    assert content.timings["attempt"] == 2
    # The engine's recovery ran: the registry now slices attention and tiles.
    footprint = content.timings["registry"]["footprint"]
    assert footprint["attention_slicing"] and footprint["vae_tiling"]


def test_a_transient_error_on_every_attempt_fails_with_a_message(
    persona_with_reference, start_worker, settings
):
    start_worker(
        "oom-always",
        worker_class=OUT_OF_MEMORY_WORKER,
        STUDIO_MAX_ATTEMPTS="2",
        **{OUT_OF_MEMORY_ATTEMPTS_ENV: "99"},
    )
    content = services.content_enqueue(
        persona=persona_with_reference, prompt="never fits"
    )

    content = wait_finished(content)
    assert content.status == ContentStatus.FAILED
    assert content.attempts == 2
    assert content.error_code == "out_of_memory"
    assert content.error_message.startswith("Gave up after 2 attempts")
    assert "ran out of memory" in content.error_message
    assert "Traceback" in content.error_detail


def test_worker_killed_mid_job_then_reconcile_retries_and_it_completes(
    studio_settings, start_worker
):
    killed = start_worker("kill")
    persona = make_persona(slug="slow", **SLOW)
    content = services.content_enqueue(persona=persona, prompt="doomed run")
    _running_with_progress(content)

    killed.kill()
    report = reconcile()
    assert report.retried == [content.pk]
    content.refresh_from_db()
    assert content.status == ContentStatus.QUEUED
    assert killed.name in content.error_message
    assert "stopped" in content.error_message

    start_worker("kill")
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.attempts == 2


def test_worker_killed_on_the_last_attempt_then_reconcile_fails_with_a_reason(
    studio_settings, start_worker
):
    studio_settings.STUDIO_MAX_ATTEMPTS = 1
    killed = start_worker("kill-last")
    persona = make_persona(slug="slow", **SLOW)
    content = services.content_enqueue(persona=persona, prompt="doomed run")
    _running_with_progress(content)

    killed.kill()
    report = reconcile()
    assert report.failed == [content.pk]
    content.refresh_from_db()
    assert content.status == ContentStatus.FAILED
    assert content.error_code == "worker_lost"
    assert "gave up" in content.error_message


def test_sigterm_hands_the_running_job_back_and_another_worker_completes_it(
    studio_settings, start_worker
):
    stopping = start_worker("handback")
    persona = make_persona(slug="slow", **SLOW)
    content = services.content_enqueue(persona=persona, prompt="hand me back")
    _running_with_progress(content)

    assert stopping.stop() == 0
    content.refresh_from_db()
    assert content.status == ContentStatus.QUEUED
    assert content.attempts == 0
    assert "Handed back" in content.error_message

    start_worker("handback")
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.attempts == 1


def test_redis_flushed_while_rows_are_queued_then_reconcile_completes_every_one(
    studio_settings, start_worker, persona_with_reference, redis_connection
):
    from tests.workers import use_queue

    use_queue(studio_settings, "flush")
    batch = services.content_enqueue_batch(
        persona=persona_with_reference, prompt="lost", count=3
    )
    contents = list(batch.contents.order_by("id"))
    assert all(
        Job.exists(content.rq_job_id, connection=redis_connection)
        for content in contents
    )

    redis_connection.flushall()
    report = reconcile()
    assert sorted(report.requeued) == [content.pk for content in contents]
    assert reconcile().repaired == 0

    start_worker("flush")
    for content in contents:
        content = wait_finished(content)
        assert content.status == ContentStatus.SUCCEEDED, content.error_detail


def test_studio_generate_waits_and_prints_final_statuses(
    persona_with_reference, shared_worker, capsys
):
    call_command(
        "studio_generate",
        "--persona",
        persona_with_reference.slug,
        "--prompt",
        "from the shell",
        "--count",
        "2",
        "--wait",
        "--timeout",
        "120",
    )
    lines = capsys.readouterr().out.splitlines()
    ids = list(Content.objects.order_by("id").values_list("id", flat=True))
    assert lines == [
        *(f"content #{content_id} queued" for content_id in ids),
        *(f"content #{content_id} succeeded" for content_id in ids),
    ]


def test_a_controlnet_output_keeps_its_control_image_and_missing_weights_are_refused(
    persona_with_reference, shared_worker
):
    unit = ControlNetUnit.objects.create(
        persona=persona_with_reference, control_type="canny"
    )
    content = services.content_enqueue(
        persona=persona_with_reference,
        prompt="edges",
        overrides=GenerationOverrides(method="controlnet"),
    )
    content = wait_finished(content)
    assert content.status == ContentStatus.SUCCEEDED, content.error_detail
    assert content.method_used == "controlnet"
    (control,) = content.control_images.all()
    assert control.control_type == "canny"
    assert default_storage.exists(control.image.name)

    # A segmentation unit with no segmentation model configured: sure to fail,
    # so refused before anything is queued, with the engine's message.
    unit.control_type = "seg"
    unit.save()
    with pytest.raises(ValidationError) as refused:
        services.content_enqueue(
            persona=persona_with_reference,
            prompt="labels",
            overrides=GenerationOverrides(method="controlnet"),
        )
    assert "segmentation model" in " ".join(refused.value.messages)
    assert not Content.objects.filter(prompt="labels").exists()


def test_a_run_past_the_job_timeout_fails_with_a_message(studio_settings, start_worker):
    start_worker("timeout")
    studio_settings.STUDIO_JOB_TIMEOUT = 1
    persona = make_persona(slug="long", width=128, height=128, steps=150)
    content = wait_finished(services.content_enqueue(persona=persona, prompt="x"))
    assert content.status == ContentStatus.FAILED
    assert content.error_code == "timeout"
    assert "time limit (1 s" in content.error_message
