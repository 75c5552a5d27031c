"""No orphaned file: deleting a persona or a content removes every file it owns,
a store that fails half-way removes what it wrote, a retried attempt replaces
the files of the attempt before it, and ``studio_sweep_media`` finds the rest.

Generations run for real: the job on the tiny model, in this process, through
RQ's ``SimpleWorker`` on the real Redis (the kill test starts real workers).
"""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from generation import services
from generation.cleanup import content_attempt_files
from generation.models import Content, ContentStatus
from generation.parameters import GenerationOverrides
from generation.queues import get_queue
from personas.models import ControlNetUnit, ControlType, Persona
from personas.services import (
    control_unit_save,
    persona_create,
    persona_delete,
    persona_set_lora,
    reference_image_add,
)
from tests import images
from tests.deployment.conftest import (  # noqa: F401 - fixtures
    bucket_keys,
    s3_endpoint,
    s3_env,
    s3_storage,
)
from tests.generation.faulty_storages import FAILING_FOLDER_ENV, KILL_FOLDER_ENV
from tests.reliability.orphans import orphaned_files, stored_files
from tests.workers import use_queue, wait_for

pytestmark = [pytest.mark.finding, pytest.mark.django_db(transaction=True)]

QUEUE = "cleanup"


# --- Helpers -------------------------------------------------------------------


@pytest.fixture
def cleanup_settings(
    studio_settings, tiny_model_dir, media_root: Path, redis_connection
):
    """The studio's test settings on this test's own media folder and queue."""
    studio_settings.MEDIA_ROOT = media_root
    use_queue(studio_settings, QUEUE)
    get_queue(QUEUE).empty()
    return studio_settings


def small_persona(slug: str = "orphan", **fields: Any) -> Persona:
    """A persona with a primary reference and a canny ControlNet unit with a
    ready-made control image, for fast tiny-model runs."""
    persona = persona_create(
        name=slug.title(),
        slug=slug,
        appearance="a red and blue test card",
        width=64,
        height=64,
        steps=2,
        **fields,
    )
    reference_image_add(
        persona=persona,
        file=SimpleUploadedFile("ref.png", images.png((64, 64))),
        is_primary=True,
    )
    unit = ControlNetUnit(persona=persona, control_type=ControlType.CANNY.value)
    unit.control_image = SimpleUploadedFile("map.png", images.png((64, 64)))
    control_unit_save(unit=unit)
    return persona


def run_jobs() -> None:
    """Run every queued job in this process, as a worker would."""
    from rq import SimpleWorker

    queue = get_queue(QUEUE)
    SimpleWorker([queue], connection=queue.connection).work(burst=True)


def generate(persona: Persona, count: int) -> list[Content]:
    """``count`` finished ControlNet generations of ``persona``."""
    batch = services.content_enqueue_batch(
        persona=persona,
        prompt="a portrait",
        count=count,
        overrides=GenerationOverrides(method="controlnet"),
    )
    run_jobs()
    return list(batch.contents.order_by("id"))


def content_files(content: Content) -> set[str]:
    return {
        name
        for name in (
            content.output_image.name,
            content.output_thumbnail.name,
            content.before_thumbnail.name,
            *(control.image.name for control in content.control_images.all()),
        )
        if name
    }


# --- Deleting ------------------------------------------------------------------


def test_deleting_a_persona_with_succeeded_generations_leaves_no_file(
    cleanup_settings, media_root, admin_client
):
    persona = small_persona()
    contents = generate(persona, count=3)
    assert [row.status for row in contents] == [ContentStatus.SUCCEEDED] * 3
    # Output, two thumbnails and the control image the engine used, each.
    assert all(len(content_files(row)) == 4 for row in contents)
    assert len(stored_files(media_root)) == 3 * 4 + 3  # + reference, thumb, map

    response = admin_client.post(
        reverse("admin:personas_persona_delete", args=[persona.pk]), {"post": "yes"}
    )

    assert response.status_code == 302
    assert not Persona.objects.exists() and not Content.objects.exists()
    assert stored_files(media_root) == set()


def test_a_cascade_without_the_services_removes_the_files_too(
    cleanup_settings, media_root
):
    persona = small_persona()
    generate(persona, count=1)
    assert stored_files(media_root)

    Persona.objects.filter(pk=persona.pk).delete()

    assert stored_files(media_root) == set()


def test_deleting_a_content_removes_its_files_and_keeps_the_others(
    cleanup_settings, media_root, admin_client
):
    persona = small_persona()
    kept, deleted, deleted_in_bulk = generate(persona, count=3)
    before = stored_files(media_root)
    gone = content_files(deleted) | content_files(deleted_in_bulk)

    services.content_delete(content=deleted)
    response = admin_client.post(
        reverse("admin:generation_content_changelist"),
        {
            "action": "delete_selected",
            "_selected_action": [deleted_in_bulk.pk],
            "post": "yes",
        },
    )

    assert response.status_code == 302
    assert list(Content.objects.all()) == [kept]
    assert len(gone) == 8
    assert stored_files(media_root) == before - gone
    assert content_files(kept) <= stored_files(media_root)
    assert orphaned_files() == []


def test_a_deletion_that_rolls_back_keeps_the_files(cleanup_settings, media_root):
    from django.db import transaction

    persona = small_persona()
    (content,) = generate(persona, count=1)
    before = stored_files(media_root)

    with pytest.raises(RuntimeError), transaction.atomic():
        persona_delete(persona=persona)
        raise RuntimeError("changed my mind")

    assert stored_files(media_root) == before
    assert Content.objects.filter(pk=content.pk).exists()


def test_deleting_a_persona_removes_its_lora_weights_and_gallery(
    cleanup_settings, media_root
):
    persona = small_persona()
    persona_set_lora(
        persona=persona,
        file=SimpleUploadedFile("persona.safetensors", images.safetensors_lora()),
    )
    assert persona.lora_weights.name in stored_files(media_root)

    persona_delete(persona=persona)

    assert stored_files(media_root) == set()


# --- Failed and retried stores -------------------------------------------------


@pytest.mark.parametrize("end", ["cancel", "fail"])
def test_a_row_that_ends_without_a_result_removes_what_an_attempt_left(
    cleanup_settings, media_root, end
):
    from django.core.files.base import ContentFile

    persona = small_persona()
    (content,) = services.content_enqueue_batch(
        persona=persona,
        prompt="a portrait",
        count=1,
        overrides=GenerationOverrides(method="controlnet"),
    ).contents.all()
    before = stored_files(media_root)
    # What a worker killed while storing leaves under the row's names.
    left = [
        storage.save(name, ContentFile(b"half a PNG"))
        for storage, name in content_attempt_files(content)
    ]
    # Output, thumbnails (2), the image before the face detailer, one control.
    assert len(left) == 5 and set(left) <= stored_files(media_root)

    if end == "cancel":
        services.content_cancel(content=content)
    else:
        services.content_fail(content=content, code="worker_lost", message="gone")

    assert stored_files(media_root) == before


def test_a_store_that_fails_half_way_leaves_no_file(
    cleanup_settings, media_root, monkeypatch
):
    persona = small_persona()
    before = stored_files(media_root)
    cleanup_settings.STORAGES = {
        **cleanup_settings.STORAGES,
        "default": {"BACKEND": "tests.generation.faulty_storages.FullDiskStorage"},
    }
    # The output PNG is written, then the disk fills up on its thumbnail.
    monkeypatch.setenv(FAILING_FOLDER_ENV, "thumbnails/generated/")

    (content,) = generate(persona, count=1)

    assert content.status == ContentStatus.FAILED
    assert content.error_code == "storage_failed"
    assert "No space left on device" in content.error_message
    assert not content.output_image and not content.control_images.exists()
    assert stored_files(media_root) == before
    assert orphaned_files() == []


@pytest.mark.e2e
def test_a_retried_attempt_leaves_only_the_last_attempts_files(
    cleanup_settings, start_worker, media_root
):
    # The workers share this test's media folder.
    start_worker.base_env["MEDIA_ROOT"] = str(media_root)
    persona = small_persona()
    before = stored_files(media_root)
    # The first worker is killed when it starts writing the output's thumbnail,
    # after the output PNG: a kill -9 during the store step.
    doomed = start_worker(
        QUEUE,
        DJANGO_SETTINGS_MODULE="tests.generation.cleanup_storage_settings",
        **{KILL_FOLDER_ENV: "thumbnails/generated/"},
    )
    batch = services.content_enqueue_batch(
        persona=persona,
        prompt="a portrait",
        count=1,
        overrides=GenerationOverrides(method="controlnet"),
    )
    (content,) = batch.contents.all()
    doomed.process.wait(timeout=300)
    assert doomed.process.returncode == -signal.SIGKILL
    left_by_the_killed_attempt = stored_files(media_root) - before
    assert left_by_the_killed_attempt, "the killed attempt wrote nothing"

    # A worker's reconcile at start retries the abandoned row.
    start_worker(QUEUE)
    wait_for(
        lambda: Content.objects.filter(
            pk=content.pk, status=ContentStatus.SUCCEEDED
        ).exists(),
        timeout=240,
        what="the retried row to succeed",
    )

    content.refresh_from_db()
    assert content.attempts == 2
    assert stored_files(media_root) == before | content_files(content)
    assert orphaned_files() == []


# --- The sweep -----------------------------------------------------------------


def plant(media_root: Path, name: str, *, age_seconds: float = 0) -> str:
    """A file no row points to, last written ``age_seconds`` ago."""
    path = media_root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"left behind")
    if age_seconds:
        stamp = time.time() - age_seconds
        os.utime(path, (stamp, stamp))
    return name


def sweep(*arguments: str) -> list[str]:
    out = io.StringIO()
    call_command("studio_sweep_media", *arguments, stdout=out)
    return out.getvalue().splitlines()


def test_the_sweep_lists_then_deletes_orphans_and_keeps_referenced_and_young_files(
    cleanup_settings, media_root
):
    persona = small_persona()
    referenced = stored_files(media_root)
    two_hours_ago = time.time() - 7200
    for name in referenced:  # old too: kept because a row points to them
        os.utime(media_root / name, (two_hours_ago, two_hours_ago))
    orphans = [
        plant(media_root, f"references/{persona.pk}/lost.png", age_seconds=7200),
        plant(media_root, "generated/9/9-2026.png", age_seconds=7200),
        plant(media_root, "thumbnails/generated/9/9-2026.webp", age_seconds=7200),
    ]
    young = plant(media_root, "generated/9/uploading.png")
    outside = plant(media_root, "backups/studio.sql", age_seconds=7200)

    listed = sweep()

    assert sorted(listed[: len(orphans)]) == sorted(orphans)
    assert "3 orphaned" in listed[len(orphans)]
    assert "1 too young" in listed[len(orphans)]
    assert stored_files(media_root) == referenced | {*orphans, young, outside}

    limited = sweep("--delete", "--limit", "2")
    assert "limit reached" in limited[2]
    assert len(stored_files(media_root) & set(orphans)) == 1

    sweep("--delete")
    assert stored_files(media_root) == referenced | {young, outside}
    assert "0 orphaned" in sweep()[-1]

    # With no grace period the young file is an orphan too.
    listed = sweep("--older-than", "0")
    assert listed[0] == young and "1 orphaned" in listed[1]


def test_the_sweep_refuses_a_folder_outside_the_studios(cleanup_settings):
    with pytest.raises(CommandError, match="invalid choice"):
        sweep("--folder", "backups")


@pytest.mark.e2e
def test_the_sweep_works_on_s3_through_the_storage_api(
    s3_storage,  # noqa: F811
):
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    persona = small_persona()
    orphan = default_storage.save("generated/9/orphan.png", ContentFile(b"lost"))
    referenced = bucket_keys(s3_storage) - {orphan}
    assert len(referenced) == 3  # the reference, its thumbnail, the control map

    assert sweep("--older-than", "0")[0] == orphan
    sweep("--older-than", "0", "--delete")

    assert bucket_keys(s3_storage) == referenced
    assert persona.references.get().image.name in referenced
