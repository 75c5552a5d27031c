"""Writes of an output's scores: its identity and its consistency score.

Scoring never holds a GPU worker (DESIGN.md decision 11): when the GPU job
stores an output, ``content_queue_scoring`` marks the row ``pending``
("scoring…") under a new scoring job id and enqueues
``generation.scoring_jobs.content_score`` on the CPU queue
(``STUDIO_CPU_QUEUE``) once that commits. The scoring job stores the scores
with ``content_store_scores`` (conditional on its job id, so a stale or
duplicate job is a no-op), flags the output for review below the persona's
identity threshold, and, for a best-of-N batch whose outputs are all scored,
marks those not kept. A lost scoring job is re-enqueued by the reconciler
(``reconcile_scoring``), a failing one retried up to ``STUDIO_MAX_ATTEMPTS``.

A training run's validation samples are scored the same way
(``training_samples_queue_scoring``, ``generation.scoring_jobs.
training_sample_score``): the GPU job that trains stores the images and goes
on training; the run page's identity chart fills in as the scores land.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models, transaction
from django.db.models import F
from django.utils import timezone

from generation.engine.identity import (
    IdentityScore,
    below_threshold,
    best_by_identity,
)
from generation.engine.identity import (
    IdentityStatus as EngineIdentityStatus,
)
from generation.models import (
    ACTIVE_STATUSES,
    Batch,
    Content,
    ContentStatus,
    IdentityStatus,
    TrainingSample,
)
from personas.face_analysis import references_queue_unanalysed
from personas.models import ReferenceImage

logger = logging.getLogger(__name__)

SCORE_JOB = "generation.scoring_jobs.content_score"
SAMPLE_SCORE_JOB = "generation.scoring_jobs.training_sample_score"
SCORE_JOB_TIMEOUT = 600

_IDENTITY_FIELDS = {
    "identity_similarity": None,
    "identity_distance": None,
    "identity_same_person": None,
    "identity_nearest_reference": None,
    "identity_nearest_distance": None,
    "identity_detail": {},
    "consistency_score": None,
    "score_detail": {},
    "flagged_for_review": False,
    "identity_before_detailer_status": "",
    "identity_before_detailer": None,
}


def content_queue_scoring(*, content: Content) -> None:
    """Set ``content`` pending under a new scoring job id, its old scores
    cleared, and enqueue that job on commit (the caller saves the row in the
    same transaction)."""
    for name, value in _IDENTITY_FIELDS.items():
        setattr(content, name, value)
    _queue_scoring(content, SCORE_JOB, "score content")


def content_claim_scoring(*, content_id: int, job_id: str) -> Content | None:
    """The row to score, if it is still pending for the job ``job_id`` (its
    scoring attempts counted); None for a stale or duplicate job."""
    if not _pending(Content, content_id, job_id).update(
        score_attempts=F("score_attempts") + 1
    ):
        return None
    return Content.objects.select_related("persona", "before_reference").get(
        pk=content_id
    )


@dataclass(frozen=True)
class Scores:
    """What the scoring job measured on one output."""

    identity: IdentityScore
    nearest_reference: ReferenceImage | None
    analysis: dict[str, Any]
    references: list[int]
    consistency: dict[str, Any] | None
    timings: dict[str, float] = field(default_factory=dict)
    before_detailer: IdentityScore | None = None
    """The identity of the output before the face detailer's pass, if any."""


def content_store_scores(*, content: Content, job_id: str, scores: Scores) -> bool:
    """Store the scores of a pending row; False when the row no longer waits for
    this job. Flags the output for review when its identity is below the
    persona's threshold or it shows no face (not when the persona has no face
    reference to compare with: nothing was measured), then applies best of N."""
    identity = scores.identity
    flagged = identity.status is not EngineIdentityStatus.NO_IDENTITY and (
        below_threshold(identity, content.persona.identity_threshold)
    )
    with transaction.atomic():
        row = _pending(Content, content.pk, job_id).select_for_update().first()
        if row is None:
            return False
        row.identity_status = identity.status.value
        row.identity_similarity = identity.similarity
        row.identity_distance = identity.distance
        row.identity_same_person = identity.same_person
        row.identity_nearest_reference = scores.nearest_reference
        row.identity_nearest_distance = identity.nearest_distance
        row.identity_detail = {
            **identity.to_dict(),
            "message": identity.message,
            "threshold": content.persona.identity_threshold,
            "face_references": scores.references,
            "analysis": scores.analysis,
            "timings": scores.timings,
        }
        before_detailer = scores.before_detailer
        if before_detailer is not None:
            row.identity_before_detailer_status = before_detailer.status.value
            row.identity_before_detailer = before_detailer.similarity
            row.identity_detail["before_detailer"] = {
                **before_detailer.to_dict(),
                "message": before_detailer.message,
            }
        row.consistency_score = (
            None if scores.consistency is None else scores.consistency["score"]
        )
        row.score_detail = scores.consistency or {}
        row.flagged_for_review = flagged
        row.timings = {**row.timings, "scoring": scores.timings.get("total")}
        row.save()
    if row.batch_id is not None:
        batch_apply_best_of(batch_id=row.batch_id)
    return True


def content_fail_scoring(
    *, content: Content, job_id: str, message: str, detail: str = ""
) -> bool:
    """The scoring of a pending row could not be done: say why."""
    return _fail_scoring(Content, content.pk, job_id, message, detail)


# --- Training samples ---------------------------------------------------------------


def training_samples_queue_scoring(*, samples: list[TrainingSample]) -> None:
    """Set new validation samples pending under scoring job ids, and enqueue
    their jobs on the CPU queue on commit (the caller saves the rows in the
    same transaction)."""
    for sample in samples:
        _queue_sample(sample)


def training_sample_claim_scoring(
    *, sample_id: int, job_id: str
) -> TrainingSample | None:
    """The sample to score, if still pending for ``job_id``; else None."""
    if not _pending(TrainingSample, sample_id, job_id).update(
        score_attempts=F("score_attempts") + 1
    ):
        return None
    return TrainingSample.objects.select_related("run__persona").get(pk=sample_id)


def training_sample_store_score(
    *,
    sample: TrainingSample,
    job_id: str,
    identity: IdentityScore,
    references: list[int],
    analysis: dict[str, Any],
) -> bool:
    """Store a pending sample's identity score; False when it no longer waits
    for this job (its run was deleted, say)."""
    return bool(
        _pending(TrainingSample, sample.pk, job_id).update(
            identity_status=identity.status.value,
            identity_similarity=identity.similarity,
            identity_distance=identity.distance,
            identity_detail={
                **identity.to_dict(),
                "message": identity.message,
                "face_references": references,
                "analysis": analysis,
            },
        )
    )


def training_sample_fail_scoring(
    *, sample: TrainingSample, job_id: str, message: str, detail: str = ""
) -> bool:
    return _fail_scoring(TrainingSample, sample.pk, job_id, message, detail)


@transaction.atomic
def content_rescore(*, content: Content) -> Content:
    """Score a succeeded output again (its scoring failed, or the persona's face
    references changed); the scores are cleared until the new ones land."""
    row = Content.objects.select_for_update().get(pk=content.pk)
    if row.status != ContentStatus.SUCCEEDED:
        raise ValidationError(
            "Only a generation that succeeded has an output to score; content "
            "#%(id)s is %(status)s.",
            code="not_scorable",
            params={"id": row.pk, "status": row.get_status_display()},
        )
    row.score_attempts = 0
    content_queue_scoring(content=row)
    row.save()
    return row


def batch_apply_best_of(*, batch_id: int) -> bool:
    """Best K of N: once every output of a best-of batch is finished and scored,
    mark those not among the ``keep_best`` of highest identity "not kept"
    (``identity.best_by_identity``: outputs without a face rank last). Done once
    per batch; False while outputs are still running or scoring."""
    with transaction.atomic():
        batch = Batch.objects.select_for_update().filter(pk=batch_id).first()
        if batch is None or not batch.keep_best or batch.best_of_applied_at:
            return False
        contents = list(batch.contents.order_by("id"))
        if any(
            content.status in ACTIVE_STATUSES
            or content.identity_status == IdentityStatus.PENDING
            for content in contents
        ):
            return False
        succeeded = [
            content
            for content in contents
            if content.status == ContentStatus.SUCCEEDED
        ]
        if succeeded:
            selection = best_by_identity(
                [
                    content.identity_similarity
                    if content.identity_status == IdentityStatus.SCORED
                    else None
                    for content in succeeded
                ],
                min(batch.keep_best, len(succeeded)),
            )
            marked = [succeeded[index].pk for index in selection.marked]
            Content.objects.filter(batch=batch).update(not_kept=False)
            Content.objects.filter(pk__in=marked).update(not_kept=True)
        batch.best_of_applied_at = timezone.now()
        batch.save(update_fields=["best_of_applied_at"])
    return True


# --- Reconciliation ----------------------------------------------------------------


@dataclass
class ScoringRepairs:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    # Training samples (sample ids).
    samples_requeued: list[int] = field(default_factory=list)
    samples_failed: list[int] = field(default_factory=list)


def reconcile_scoring(connection: Any) -> ScoringRepairs:
    """Every pending row (an output, a training sample) whose scoring job is
    lost (Redis restarted or flushed, its CPU worker killed) or failed in RQ is
    enqueued again under a new job id, until ``STUDIO_MAX_ATTEMPTS`` scoring
    attempts; then it fails with a reason. Best-of batches finished without a
    last score are settled too, and references not analysed yet get their
    analysis job."""
    repairs = ScoringRepairs()
    for model, queue, requeued, failed in (
        (Content, _queue_content, repairs.requeued, repairs.failed),
        (
            TrainingSample,
            _queue_sample,
            repairs.samples_requeued,
            repairs.samples_failed,
        ),
    ):
        _reconcile_pending(model, queue, connection, requeued, failed)
    # References whose analysis job was lost (or never enqueued) too.
    references_queue_unanalysed()
    unsettled = Batch.objects.filter(
        keep_best__isnull=False, best_of_applied_at__isnull=True
    ).values_list("pk", flat=True)
    for batch_id in unsettled:
        batch_apply_best_of(batch_id=batch_id)
    return repairs


def _reconcile_pending(
    model: type[models.Model],
    queue: Callable[[Any], list[str]],
    connection: Any,
    requeued: list[int],
    failed: list[int],
) -> None:
    from rq.job import JobStatus

    from generation.reconcile import _executing, _fetch_job, _in_queue

    pending = model.objects.filter(identity_status=IdentityStatus.PENDING).only(
        "pk", "score_job_id", "score_attempts"
    )
    for row in pending:
        job = _fetch_job(row.score_job_id, connection)
        status = None if job is None else job.get_status(refresh=False)
        if status in (JobStatus.SCHEDULED, JobStatus.DEFERRED):
            continue
        if status == JobStatus.QUEUED and _in_queue(job, connection):
            continue
        if status == JobStatus.STARTED and _executing(job, connection):
            continue
        if row.score_attempts >= settings.STUDIO_MAX_ATTEMPTS:
            if _fail_scoring(
                model,
                row.pk,
                row.score_job_id,
                f"Scoring gave up after {row.score_attempts} attempts (its job "
                "was lost or failed each time); rescore it when the CPU worker "
                "is healthy.",
            ):
                failed.append(row.pk)
            continue
        if _requeue_scoring(model, row, queue):
            requeued.append(row.pk)


# --- Internals ------------------------------------------------------------------


def _pending(model: type[models.Model], pk: int, job_id: str) -> models.QuerySet:
    """The row ``pk`` if it still waits for the scoring job ``job_id``."""
    return model.objects.filter(
        pk=pk, identity_status=IdentityStatus.PENDING, score_job_id=job_id
    )


def _fail_scoring(
    model: type[models.Model], pk: int, job_id: str, message: str, detail: str = ""
) -> bool:
    return bool(
        _pending(model, pk, job_id).update(
            identity_status=IdentityStatus.FAILED,
            identity_detail={"error": message, "detail": detail},
        )
    )


def _queue_scoring(row: Content | TrainingSample, function: str, what: str) -> None:
    """Set ``row`` pending under a new scoring job id and enqueue ``function``
    on the CPU queue once the transaction commits (``row`` is saved by then,
    so its id is known)."""
    row.identity_status = IdentityStatus.PENDING
    row.score_job_id = job_id = uuid.uuid4().hex

    def enqueue() -> None:
        # A failure (Redis down) is logged by on_commit(robust=True) and leaves
        # the row pending for the reconciler.
        from generation.queues import get_queue

        get_queue(settings.STUDIO_CPU_QUEUE).enqueue(
            function,
            args=(row.pk,),
            job_id=job_id,
            job_timeout=SCORE_JOB_TIMEOUT,
            description=f"{what} #{row.pk}",
        )

    transaction.on_commit(enqueue, robust=True)


def _queue_content(content: Content) -> list[str]:
    content_queue_scoring(content=content)
    return ["identity_status", "score_job_id", *_IDENTITY_FIELDS]


_SAMPLE_SCORE_FIELDS = {
    "identity_similarity": None,
    "identity_distance": None,
    "identity_detail": {},
}


def _queue_sample(sample: TrainingSample) -> list[str]:
    for name, value in _SAMPLE_SCORE_FIELDS.items():
        setattr(sample, name, value)
    _queue_scoring(sample, SAMPLE_SCORE_JOB, "score training sample")
    return ["identity_status", "score_job_id", *_SAMPLE_SCORE_FIELDS]


@transaction.atomic
def _requeue_scoring(
    model: type[models.Model],
    row: models.Model,
    queue: Callable[[Any], list[str]],
) -> bool:
    row = _pending(model, row.pk, row.score_job_id).select_for_update().first()
    if row is None:
        return False
    row.save(update_fields=queue(row))
    return True
