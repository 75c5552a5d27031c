"""A row that is a job (DESIGN.md decisions 1 and 12): what a generation
(``Content``) and a LoRA training run (``TrainingRun``) share.

Both are created ``queued`` before their RQ job is enqueued, the job carries
only the row's id, claims the row for its own job id (idempotent), and the
reconciler repairs rows whose job Redis lost or whose worker died. One piece of
code serves both: the fields (``QueuedRow``), queueing under a new job id on
commit (``row_queue``), the claim (``row_claim``), a requeue conditional on
the row still being the one read (``row_requeue``), the end of an active row
(``row_finish_active``) and the reconciler's judgement of one row
(``row_reconcile``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from django.conf import settings
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone
from rq.timeouts import JobTimeoutException

from generation.queues import get_queue, queue_name_for_model


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


RUN_ACTIVE_STATUSES = (RunStatus.QUEUED, RunStatus.RUNNING)
RUN_FINISHED_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)


class QueuedRow(models.Model):
    """How a row runs as a job: status and progress, its RQ job, attempts, the
    error told to a person, who started it and when."""

    status = models.CharField(
        max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED
    )
    progress_step = models.PositiveIntegerField(default=0)
    progress_total = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    rq_job_id = models.CharField("RQ job id", max_length=64, blank=True)
    queue_name = models.CharField(max_length=64, blank=True)
    worker_name = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(
        blank=True, help_text="What went wrong, written for a person."
    )
    error_detail = models.TextField(
        blank=True, help_text="The technical detail (traceback) beside it."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    enqueued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True

    @property
    def is_active(self) -> bool:
        return self.status in RUN_ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return self.status in RUN_FINISHED_STATUSES


Row = TypeVar("Row", bound=QueuedRow)


@dataclass(frozen=True)
class RowJob:
    """What a row's RQ job is: its function, time limit and description."""

    function: str
    timeout: int
    description: str


def row_queue(
    row: QueuedRow, job: RowJob, *, model_key: str, delay_seconds: float
) -> None:
    """Set ``row`` queued under a new job id on the queue that serves
    ``model_key``, and enqueue that job when the transaction commits (the
    caller saves the row in the same transaction). A failed enqueue (Redis
    down) is logged and leaves the row queued for the reconciler."""
    row.status = RunStatus.QUEUED
    row.rq_job_id = job_id = uuid.uuid4().hex
    row.queue_name = queue_name = queue_name_for_model(model_key)
    row.worker_name = ""
    # When the job becomes due: "waiting in the queue" is counted from here.
    row.enqueued_at = timezone.now() + timedelta(seconds=delay_seconds)

    def enqueue_on_commit() -> None:
        # ``row`` is saved by now, so its id is known.
        queue = get_queue(queue_name)
        options = {
            "args": (row.pk,),
            "job_id": job_id,
            "job_timeout": job.timeout,
            "description": f"{job.description} #{row.pk}",
        }
        if delay_seconds > 0:
            queue.enqueue_in(timedelta(seconds=delay_seconds), job.function, **options)
        else:
            queue.enqueue(job.function, **options)

    transaction.on_commit(enqueue_on_commit, robust=True)


def row_claim(
    model: type[QueuedRow], *, pk: int, job_id: str, worker_name: str, **fields: Any
) -> bool:
    """Mark a queued row running for the job ``job_id`` (its attempt counted,
    ``fields`` set too); False when the row is not queued for that job
    (finished, cancelled, or queued again under another id)."""
    return bool(
        model.objects.filter(pk=pk, status=RunStatus.QUEUED, rq_job_id=job_id).update(
            status=RunStatus.RUNNING,
            worker_name=worker_name,
            attempts=F("attempts") + 1,
            started_at=timezone.now(),
            **fields,
        )
    )


@transaction.atomic
def row_requeue(
    row: Row,
    *,
    queue: Callable[[Row], None],
    reason: str,
    refund_attempt: bool = False,
) -> bool:
    """Queue an active row again with ``queue(row)`` (which sets it queued
    under a new job id), ``reason`` kept as its message; a worker handing its
    job back refunds the attempt. False when the row changed since ``row`` was
    read (someone else acted first)."""
    fresh = (
        type(row)
        .objects.select_for_update()
        .filter(pk=row.pk, status=row.status, rq_job_id=row.rq_job_id)
        .first()
    )
    if fresh is None or not fresh.is_active:
        return False
    if refund_attempt and fresh.attempts:
        fresh.attempts -= 1
    fresh.error_message = reason
    queue(fresh)
    fresh.save()
    return True


def row_finish_active(
    row: QueuedRow, *, status: str, code: str, message: str, detail: str = ""
) -> bool:
    """End an active row that still belongs to its job; False otherwise."""
    return bool(
        type(row)
        .objects.filter(
            pk=row.pk, status__in=RUN_ACTIVE_STATUSES, rq_job_id=row.rq_job_id
        )
        .update(
            status=status,
            error_code=code,
            error_message=message,
            error_detail=detail,
            finished_at=timezone.now(),
        )
    )


def ran_past_time_limit(error: BaseException) -> bool:
    """Whether ``error`` is, or was raised while handling, rq's job timeout.

    rq's timeout is an exception raised by a signal wherever the job happens to
    be; a loader that wraps what it caught (``OSError("Unable to load
    weights…")``, then the engine's ``ModelNotFound``) would otherwise report a
    run that was only too slow as a missing model.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, JobTimeoutException):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def retry_delay_seconds(attempt: int) -> float:
    """Backoff before attempt ``attempt + 1``: ``STUDIO_RETRY_BACKOFF_SECONDS`` by
    attempt, the last value repeating."""
    backoff = settings.STUDIO_RETRY_BACKOFF_SECONDS or [0]
    return float(backoff[min(max(attempt, 1), len(backoff)) - 1])


# --- Reconcile -------------------------------------------------------------------


@dataclass(frozen=True)
class RowRepairs:
    """How the reconciler repairs one kind of row: ``requeue(row, reason)`` and
    ``fail(row, code, message, detail)`` (each False when the row changed
    meanwhile); ``what`` names the work in messages ("running it")."""

    requeue: Callable[[Any, str], bool]
    fail: Callable[[Any, str, str, str], bool]
    what: str = "running it"
    lost: str = "Its job was lost from Redis (restarted or flushed); queued again."
    retry_note: str = ""
    gave_up_note: str = ""


def row_reconcile(row: QueuedRow, connection: Any, repairs: RowRepairs) -> str:
    """Judge an active row against its job in Redis and repair it: a lost job
    is enqueued again (``"requeued"``), a job RQ ended before it could start
    fails its row (``"failed"``), a running row whose worker is gone is queued
    again while ``STUDIO_MAX_ATTEMPTS`` allows (``"retried"``), else failed.
    ``""``: nothing to do (or the row changed meanwhile)."""
    from rq.job import JobStatus

    from generation.reconcile import _executing, _fetch_job, _in_queue

    job = _fetch_job(row.rq_job_id, connection)
    status = None if job is None else job.get_status(refresh=False)
    if row.status == RunStatus.QUEUED:
        if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            result = job.latest_result()
            reason = (result.exc_string or "").strip() if result else ""
            message = f"Its job ended in RQ as {status.value} before it could start."
            return "failed" if repairs.fail(row, "job_failed", message, reason) else ""
        if status == JobStatus.STARTED and _executing(
            job, connection, row.worker_name
        ):
            return ""
        if status in (JobStatus.SCHEDULED, JobStatus.DEFERRED):
            return ""
        if status == JobStatus.QUEUED and _in_queue(job, connection):
            return ""
        return "requeued" if repairs.requeue(row, repairs.lost) else ""
    if job is not None and _executing(job, connection, row.worker_name):
        return ""
    worker = row.worker_name or "unknown"
    if row.attempts < settings.STUDIO_MAX_ATTEMPTS:
        reason = (
            f"The worker {repairs.what} ({worker}) stopped (killed, crashed or "
            f"lost); queued again after attempt {row.attempts}{repairs.retry_note}."
        )
        return "retried" if repairs.requeue(row, reason) else ""
    message = (
        f"The worker {repairs.what} ({worker}) stopped (killed, crashed or lost) "
        f"on attempt {row.attempts} of {settings.STUDIO_MAX_ATTEMPTS}; gave up."
        f"{repairs.gave_up_note}"
    )
    return "failed" if repairs.fail(row, "worker_lost", message, "") else ""
