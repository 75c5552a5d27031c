"""Faults while generations run: killed and stopped workers, Redis restarted and
flushed, PostgreSQL restarted, storage that cannot write, a model that cannot
load, and the device running out of memory.

Every test queues several rows, injects its fault with real processes (a real
``studio_worker``, a real ``redis-server``, a real database server) and then
lets the studio recover on its own: no test calls the reconciler itself, a
worker does (at start, or periodically). Every test asserts the mechanism: every
row ends retried-and-succeeded or failed with a reason a person can read, none is
lost or stuck, and the row the fault hit was recovered by the path meant for it
(the reconciler's abandon rule, a hand-back, a lost job enqueued again, a retry)
with the attempts and reason expected. How long recovery took is a figure, not an
assertion (a loaded machine is slower): the target (issue 9) is under a minute
once a worker is available, and the report shows each time against it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.core.files.storage import default_storage
from django.db import connection

from generation import services
from generation.models import ACTIVE_STATUSES, Content, ContentStatus
from personas.models import Persona
from studio.redis_embedded import EmbeddedRedis
from tests.faulty_workers import OUT_OF_MEMORY_ATTEMPTS_ENV
from tests.reliability.conftest import stored_files
from tests.reliability.faulty_storage import FAILING_FOLDERS_ENV
from tests.reliability.orphans import orphaned_files
from tests.reliability.orphans import stored_files as stored_file_names
from tests.workers import (
    WorkerFactory,
    WorkerProcess,
    make_persona,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.django_db(transaction=True)]

RECOVERY_TARGET_SECONDS = 60
"""The recovery target, reported beside each measured time (never asserted)."""
# Enough denoising steps that a run can be caught in the middle (about a second
# or two here), few enough that a retried run finishes quickly. Only the row the
# fault hits is slow; the others queued with it are fast.
SLOW_STEPS = 100
ROWS = 4


def queue_rows(persona: Persona, count: int = ROWS) -> list[Content]:
    """``count`` generations of ``persona``, through the service the admin uses."""
    batch = services.content_enqueue_batch(persona=persona, prompt="fault", count=count)
    return list(batch.contents.order_by("id"))


def queue_slow_then_fast(slow: Persona, fast: Persona) -> list[Content]:
    """A slow generation (the one the fault hits), then ``ROWS - 1`` fast ones
    queued behind it."""
    first = services.content_enqueue(persona=slow, prompt="fault")
    return [first, *queue_rows(fast, count=ROWS - 1)]


def running(contents: list[Content]) -> Content:
    """Wait until one of ``contents`` is running and has reported a step."""
    return wait_for(
        lambda: Content.objects.filter(
            pk__in=[content.pk for content in contents],
            status=ContentStatus.RUNNING,
            progress_step__gt=0,
        ).first(),
        what="a row to run",
    )


def finish_all(contents: list[Content], *, timeout: float = 240) -> tuple[float, list]:
    """Wait until no row of ``contents`` is active; return the seconds it took
    (from now: call it once a worker is available) and the rows, fresh."""
    started = time.monotonic()
    ids = [content.pk for content in contents]
    wait_for(
        lambda: (
            not Content.objects.filter(pk__in=ids, status__in=ACTIVE_STATUSES).exists()
        ),
        timeout=timeout,
        what=f"rows {ids} to finish",
    )
    return time.monotonic() - started, list(Content.objects.filter(pk__in=ids))


def queued_now(contents: list[Content]) -> set[int]:
    return set(
        Content.objects.filter(
            pk__in=[content.pk for content in contents], status=ContentStatus.QUEUED
        ).values_list("pk", flat=True)
    )


def reconciled(worker: WorkerProcess, repair: str) -> set[int]:
    """The rows ``worker``'s reconcile runs reported as ``repair`` ("lost jobs
    enqueued again", "abandoned runs retried" or "failed"), from its log."""
    return {
        int(row)
        for ids in re.findall(rf"\d+ {repair} \(([^)]*)\)", worker.log())
        for row in re.findall(r"#(\d+)", ids)
    }


def ended_correctly(row: Content) -> bool:
    """Succeeded with its output stored, or failed with a message and a code."""
    if row.status == ContentStatus.SUCCEEDED:
        return bool(row.output_image) and default_storage.exists(row.output_image.name)
    return (
        row.status == ContentStatus.FAILED
        and bool(row.error_code)
        and len(row.error_message) > 20
    )


@pytest.fixture(autouse=True)
def no_orphans_after_the_fault(request, studio_settings, figures) -> Iterator[None]:
    """After every fault: no file in the workers' media folder that no row points
    to (the folder is shared by the session: what was there before is ignored)."""
    before = stored_file_names()
    yield
    orphans = orphaned_files(ignoring=before)
    figures.record(
        group="faults",
        item=f"orphaned files after {request.node.name}",
        outcome=f"{len(orphans)} orphaned",
        orphans=len(orphans),
    )
    assert orphans == [], f"files no row points to: {orphans}"


def record(figures, fault: str, rows: list[Content], recovery: float, **more) -> None:
    statuses = {status: 0 for status in ContentStatus.values}
    for row in rows:
        statuses[row.status] += 1
    figures.record(
        group="faults",
        item=fault,
        outcome=", ".join(
            f"{count} {status}" for status, count in statuses.items() if count
        ),
        rows=len(rows),
        ended_correctly=sum(ended_correctly(row) for row in rows),
        lost_or_stuck=sum(row.status in ACTIVE_STATUSES for row in rows),
        recovery_seconds=round(recovery, 2),
        recovery_target_seconds=RECOVERY_TARGET_SECONDS,
        **more,
    )


@pytest.fixture
def slow_persona(studio_settings) -> Persona:
    return make_persona(slug=f"slow-{uuid.uuid4().hex[:6]}", steps=SLOW_STEPS)


# --- Worker processes -----------------------------------------------------------


def test_worker_killed_mid_job_loses_nothing(
    studio_settings, start_worker, slow_persona, persona_factory, figures
):
    killed = start_worker("sigkill")
    contents = queue_slow_then_fast(slow_persona, persona_factory())
    victim = running(contents)

    killed.kill()
    replacement = start_worker("sigkill")
    # The new worker's reconcile at start (before it took any job) applied the
    # abandon rule to the killed worker's row, and only to it.
    assert reconciled(replacement, "abandoned runs retried") == {victim.pk}
    victim.refresh_from_db()
    assert f"The worker running it ({killed.name}) stopped" in victim.error_message, (
        victim.error_message
    )
    assert "queued again after attempt 1" in victim.error_message
    recovery, rows = finish_all(contents)

    assert all(row.status == ContentStatus.SUCCEEDED for row in rows), [
        (row.pk, row.status, row.error_message) for row in rows
    ]
    assert {row.pk: row.attempts for row in rows} == {
        row.pk: 2 if row.pk == victim.pk else 1 for row in rows
    }
    record(
        figures,
        "worker SIGKILL mid-job",
        rows,
        recovery,
        recovered_by="abandon rule at the next worker's start",
    )


def test_worker_stopped_mid_job_hands_its_job_back(
    studio_settings, start_worker, slow_persona, persona_factory, figures
):
    stopping = start_worker("sigterm")
    contents = queue_slow_then_fast(slow_persona, persona_factory())
    victim = running(contents)

    signalled = time.monotonic()
    assert stopping.stop() == 0
    shutdown = time.monotonic() - signalled
    victim.refresh_from_db()
    assert victim.status == ContentStatus.QUEUED
    assert victim.attempts == 0  # handing back is not the generation's fault
    assert victim.error_message == (
        "Handed back by a worker that was stopping; queued again."
    )
    replacement = start_worker("sigterm")
    # Handed back, not abandoned: nothing was left for the reconciler.
    assert reconciled(replacement, "abandoned runs retried") == set()
    recovery, rows = finish_all(contents)

    assert all(row.status == ContentStatus.SUCCEEDED for row in rows)
    assert all(row.attempts == 1 for row in rows), [row.attempts for row in rows]
    record(
        figures,
        "worker SIGTERM mid-job",
        rows,
        recovery,
        recovered_by="hand-back at the next denoising step",
        shutdown_seconds=round(shutdown, 2),
    )


# --- Redis ------------------------------------------------------------------------


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "private-redis").start()
    yield server
    server.stop()


@pytest.fixture
def private_workers(
    studio_settings, start_worker, private_redis, tmp_path
) -> Iterator[WorkerFactory]:
    """Workers (and this process's queues) on a Redis of this test's own, which
    the test may stop, flush and start."""
    studio_settings.REDIS_URL = private_redis.url
    factory = WorkerFactory(
        studio_settings,
        {
            **start_worker.base_env,
            "REDIS_URL": private_redis.url,
            "STUDIO_RECONCILE_INTERVAL_SECONDS": "2",
        },
        tmp_path,
        redis.Redis.from_url(private_redis.url),
    )
    yield factory
    factory.stop_all()


def test_redis_restarted_and_flushed_with_jobs_queued_and_running(
    private_workers, private_redis, slow_persona, persona_factory, figures
):
    worker = private_workers("redis-restart")
    contents = queue_slow_then_fast(slow_persona, persona_factory())
    running(contents)

    waiting = queued_now(contents)
    private_redis.process.send_signal(signal.SIGKILL)  # no save, no goodbye
    private_redis.process.wait()
    private_redis.process = None
    time.sleep(1)
    private_redis.start()
    back = time.monotonic()
    assert private_redis.is_up()
    # Queued before the kill and still queued now: their jobs are gone with Redis
    # (which came back empty; the worker and the scoring may already have written
    # keys of their own again).
    waiting &= queued_now(contents)
    fresh = redis.Redis.from_url(private_redis.url)
    lost = Content.objects.filter(pk__in=waiting).values_list("rq_job_id", flat=True)
    assert not any(fresh.exists(f"rq:job:{job_id}") for job_id in lost)

    try:
        _, rows = finish_all(contents)
    except AssertionError:
        raise AssertionError(worker.log()[:12000]) from None
    recovery = time.monotonic() - back

    assert worker.process.poll() is None, "the worker did not survive:\n" + worker.log()
    assert all(row.status == ContentStatus.SUCCEEDED for row in rows), [
        (row.pk, row.status, row.error_message) for row in rows
    ]
    # Only the worker's periodic reconcile could bring back the rows whose jobs
    # Redis lost while they waited: it enqueued each of them again.
    assert waiting and waiting <= reconciled(worker, "lost jobs enqueued again")
    assert all(row.attempts == 1 for row in rows if row.pk in waiting)
    record(
        figures,
        "Redis killed and restarted empty (jobs queued and running)",
        rows,
        recovery,
        recovered_by="periodic reconcile: lost jobs enqueued again",
    )


# --- PostgreSQL -----------------------------------------------------------------


@pytest.mark.exclusive
def test_postgresql_restarted_while_a_job_runs(
    studio_settings, start_worker, slow_persona, figures
):
    if connection.vendor != "postgresql":
        pytest.skip(
            "needs PostgreSQL (DATABASE_URL): CI runs it, SQLite cannot restart"
        )
    cluster = os.environ.get("STUDIO_TEST_PG_CLUSTER", "15 main").split()
    # The row whose run the restart broke is repaired by the worker's periodic
    # reconcile (60 s by default).
    start_worker("postgres", STUDIO_RECONCILE_INTERVAL_SECONDS="5")
    contents = queue_rows(slow_persona, count=2)
    victim = running(contents)

    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart"], check=True
    )
    connection.close()
    back = time.monotonic()
    _, rows = finish_all(contents)
    recovery = time.monotonic() - back

    assert all(row.status == ContentStatus.SUCCEEDED for row in rows), [
        (row.pk, row.status, row.error_message) for row in rows
    ]
    victim_row = next(row for row in rows if row.pk == victim.pk)
    assert victim_row.finished_at is not None
    # The broken run was retried (by the job's transient-error rule or the
    # periodic reconcile's abandon rule): a second attempt, no third.
    assert victim_row.attempts == 2
    assert all(row.attempts == 1 for row in rows if row.pk != victim.pk)
    record(
        figures,
        "PostgreSQL restarted while a job runs",
        rows,
        recovery,
        recovered_by="transient-error retry or periodic reconcile",
    )


# --- Storage, model and device ----------------------------------------------------


def test_a_storage_write_that_fails_fails_the_row_and_leaves_no_file(
    studio_settings, start_worker, persona_factory, figures
):
    persona = persona_factory()
    faulty = start_worker(
        "storage",
        DJANGO_SETTINGS_MODULE="tests.reliability.faulty_storage_settings",
        **{FAILING_FOLDERS_ENV: json.dumps(["thumbnails/generated/"])},
    )
    before = set(stored_files())
    contents = queue_rows(persona, count=3)

    failed_after, rows = finish_all(contents)

    for row in rows:
        assert row.status == ContentStatus.FAILED, (row.pk, row.status)
        assert "No space left on device" in row.error_message, row.error_message
        assert not row.output_image
    leftovers = set(stored_files()) - before
    assert not leftovers, f"partial results left in storage: {sorted(leftovers)}"
    assert faulty.process.poll() is None, "a failed write must not kill the worker"
    # Recovery: storage writes again, staff retry the rows.
    faulty.stop()
    start_worker("storage")
    for row in rows:
        services.content_retry(content=row)
    recovery, retried = finish_all(contents)
    assert all(row.status == ContentStatus.SUCCEEDED for row in retried), [
        (row.pk, row.status, row.error_message) for row in retried
    ]
    record(
        figures,
        "storage write fails (ENOSPC on every thumbnail), then retried",
        rows,
        recovery,
        seconds_to_fail=round(failed_after, 2),
        succeeded_after_retry=len(retried),
        error=rows[0].error_message,
    )


@pytest.fixture
def corrupt_model_dir(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose UNet weights are cut in half."""
    corrupt = tmp_path / "corrupt-model"
    shutil.copytree(tiny_model_dir, corrupt)
    weights = next((corrupt / "sd15" / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return corrupt


def test_a_model_that_fails_to_load_fails_each_row_with_a_reason(
    studio_settings, start_worker, persona_factory, corrupt_model_dir, figures
):
    persona = persona_factory()
    broken = start_worker("model", STUDIO_TINY_MODEL_DIR=str(corrupt_model_dir))
    contents = queue_rows(persona, count=3)

    failed_after, rows = finish_all(contents)

    for row in rows:
        assert row.status == ContentStatus.FAILED, (row.pk, row.status)
        assert row.error_code and row.error_message, row.pk
        assert "Traceback" not in row.error_message
    assert broken.process.poll() is None, "a bad model must not kill the worker"
    broken.stop()
    start_worker("model")
    for row in rows:
        services.content_retry(content=row)
    recovery, retried = finish_all(contents)
    assert all(row.status == ContentStatus.SUCCEEDED for row in retried)
    record(
        figures,
        "model fails to load (UNet weights truncated), then retried",
        rows,
        recovery,
        seconds_to_fail=round(failed_after, 2),
        error=rows[0].error_message[:160],
    )


@pytest.mark.parametrize(
    "oom_attempts, expected",
    [(1, ContentStatus.SUCCEEDED), (99, ContentStatus.FAILED)],
    ids=["first attempt", "every attempt"],
)
def test_cuda_out_of_memory_is_retried_then_given_up(
    studio_settings, start_worker, persona_factory, oom_attempts, expected, figures
):
    persona = persona_factory()
    start_worker(
        f"oom-{oom_attempts}",
        worker_class="tests.faulty_workers.OutOfMemoryWorker",
        STUDIO_MAX_ATTEMPTS="3",
        **{OUT_OF_MEMORY_ATTEMPTS_ENV: str(oom_attempts)},
    )
    studio_settings.STUDIO_MAX_ATTEMPTS = 3
    contents = queue_rows(persona, count=3)

    seconds, rows = finish_all(contents)

    for row in rows:
        assert row.status == expected, (row.pk, row.status, row.error_message)
        if expected == ContentStatus.FAILED:
            assert row.attempts == 3
            assert row.error_message.startswith("Gave up after 3 attempts")
        else:
            assert row.attempts == 2
    record(
        figures,
        "CUDA out of memory on "
        + ("the first attempt" if oom_attempts == 1 else "every attempt"),
        rows,
        seconds,
    )


@pytest.fixture
def persona_factory(studio_settings):
    """Personas with two-step runs (a fast job), a new one per call."""

    def make() -> Persona:
        return make_persona(slug=f"fast-{uuid.uuid4().hex[:6]}", steps=2)

    return make
