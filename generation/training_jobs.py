"""The RQ job that trains a persona LoRA: ``training_run_job(run_id)``, and the
reconciler's repair of training rows.

The job follows the generation job's rules (``generation.jobs``): it claims its
row (idempotent), runs the worker's warm engine's trainer with progress and the
loss history written to the row, cancellation checked before every step, a
worker that is stopping handing the run back; a checkpoint is stored every
``checkpoint_every`` steps, and a run that is claimed again (its worker was
killed, it was handed back, a transient error) resumes from its last stored
checkpoint. Validation samples are stored and scored for identity against the
persona's face references by a job on the CPU queue
(``generation.scoring_jobs.training_sample_score``), as outputs are, so the GPU
worker never waits for dlib. A worker runs one job at a time, so while it
trains it takes no generation; other workers do.
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
from pathlib import Path

import redis.exceptions
from django.conf import settings
from django.db import close_old_connections
from rq import get_current_job
from rq.job import Job

from generation import runtime
from generation import training_services as services
from generation.engine.errors import EngineError, GenerationCancelled
from generation.engine.training import (
    Trainer,
    TrainingImage,
    TrainingRequest,
    TrainingSettings,
    ValidationSample,
)
from generation.jobs import TRANSIENT_ERRORS
from generation.parameters import open_stored_image
from generation.queued_rows import (
    RowRepairs,
    ran_past_time_limit,
    retry_delay_seconds,
    row_reconcile,
)
from generation.training_models import (
    TRAINING_ACTIVE_STATUSES,
    TrainingRun,
    TrainingStatus,
)
from personas.models import ReferenceImage

logger = logging.getLogger(__name__)


def training_run_job(run_id: int) -> str:
    """Run (or resume) training run ``run_id``; return what became of it."""
    job = get_current_job()
    close_old_connections()
    if not services.training_run_claim(
        run_id=run_id, job_id=job.id, worker_name=job.worker_name or ""
    ):
        logger.info("Training #%s is not queued for job %s", run_id, job.id)
        return "skipped"
    run = TrainingRun.objects.select_related("persona").get(pk=run_id)
    reporter = _Reporter(run, job)
    try:
        return _train(run, reporter)
    except GenerationCancelled:
        if reporter.handed_back:
            services.training_run_requeue(
                run=run,
                reason="Handed back by a worker that was stopping; queued again "
                "to resume from its last checkpoint.",
                refund_attempt=True,
            )
            return "handed back"
        return (
            "cancelled"
            if services.training_run_mark_cancelled(run=run)
            else "superseded"
        )
    except Exception as error:
        return _fail(run, job, error)


def training_request_from_run(run: TrainingRun) -> TrainingRequest:
    """The engine request of a run: its references read through storage, their
    captions, its settings."""
    references = ReferenceImage.objects.in_bulk(
        [entry["reference"] for entry in run.inputs]
    )
    images = []
    for entry in run.inputs:
        reference = references.get(entry["reference"])
        if reference is None:
            raise _Refused(
                f"Reference #{entry['reference']} was removed from the gallery "
                "after the run was started; start a new run."
            )
        images.append(
            TrainingImage(open_stored_image(reference.image.name), entry["caption"])
        )
    return TrainingRequest(
        model=run.model,
        images=images,
        settings=TrainingSettings.from_dict(run.hyperparameters),
        family=run.family,
        validation_prompts=list(run.validation_prompts),
        validation_seeds=[int(seed) for seed in run.validation_seeds],
        output_name=f"{run.persona.slug}-training-{run.pk}",
        trigger_word=run.trigger_word,
    )


def _train(run: TrainingRun, reporter: _Reporter) -> str:
    request = training_request_from_run(run)
    trainer = Trainer(runtime.engine())
    trainer.check(request)
    with tempfile.TemporaryDirectory(prefix=f"training-{run.pk}-") as work:
        resume_from = services.training_run_last_checkpoint(
            run=run, into=Path(work) / "resume"
        )
        if resume_from is not None:
            reporter.resumed(resume_from)
        result = trainer.train(
            request,
            work_dir=Path(work) / "checkpoints",
            resume_from=resume_from,
            on_step=reporter.on_step,
            should_cancel=reporter.should_cancel,
            on_checkpoint=reporter.on_checkpoint,
            on_samples=reporter.on_samples,
        )
    version = services.training_run_succeed(run=run, result=result)
    return "succeeded" if version is not None else "superseded"


class _Refused(EngineError):
    code = "training_refused"


class _Reporter:
    """The trainer's callbacks: progress and losses to the row (throttled),
    checkpoints and samples to storage, cancellation checks."""

    def __init__(self, run: TrainingRun, job: Job) -> None:
        self.run = run
        self.job = job
        self.interval = float(settings.STUDIO_PROGRESS_INTERVAL_SECONDS)
        self.last_report = float("-inf")
        self.losses: list[list[float]] = []
        self.first_step = 0
        self.started = time.monotonic()
        self.handed_back = False

    def resumed(self, folder: Path) -> None:
        self.first_step = int(folder.name.removeprefix("step-"))
        # The history past the checkpoint is redone by this attempt.
        self.losses = [
            pair for pair in self.run.loss_history if pair[0] <= self.first_step
        ]

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.losses.append([step, loss])
        now = time.monotonic()
        if step < total and now - self.last_report < self.interval:
            return
        self.last_report = now
        done = step - self.first_step
        rate = done / (now - self.started) if now > self.started else None
        eta = (total - step) / rate if rate else None
        services.training_run_report_progress(
            run=self.run,
            step=step,
            total=total,
            losses=self.losses,
            eta_seconds=eta,
            steps_per_second=rate,
        )
        self.job.meta["progress"] = {"step": step, "total": total}
        try:
            self.job.save_meta()
        except redis.exceptions.RedisError:
            logger.warning("Training #%s: progress not mirrored to Redis", self.run.pk)

    def should_cancel(self) -> bool:
        if runtime.handback_requested():
            self.handed_back = True
            return True
        return (
            TrainingRun.objects.filter(pk=self.run.pk, cancel_requested=True).exists()
            or not TrainingRun.objects.filter(
                pk=self.run.pk,
                rq_job_id=self.run.rq_job_id,
                status=TrainingStatus.RUNNING,
            ).exists()
        )

    def on_checkpoint(self, step: int, folder: Path) -> None:
        services.training_run_add_checkpoint(run=self.run, step=step, folder=folder)
        services.training_run_report_progress(
            run=self.run,
            step=step,
            total=self.run.progress_total,
            losses=self.losses,
            eta_seconds=None,
            steps_per_second=None,
        )

    def on_samples(self, step: int, samples: list[ValidationSample]) -> None:
        # Scored for identity on the CPU queue, not here: the GPU trains on.
        services.training_run_add_samples(run=self.run, samples=samples)


def _fail(run: TrainingRun, job: Job, error: Exception) -> str:
    timed_out = ran_past_time_limit(error)
    if timed_out:
        code = "timeout"
        message = f"The training ran past its time limit ({job.timeout} s)."
    elif isinstance(error, TRANSIENT_ERRORS) or (
        isinstance(error, EngineError) and not error.permanent
    ):
        close_old_connections()
        attempts = TrainingRun.objects.values_list("attempts", flat=True).get(pk=run.pk)
        if attempts < settings.STUDIO_MAX_ATTEMPTS:
            delay = retry_delay_seconds(attempts)
            services.training_run_requeue(
                run=run,
                reason=f"Attempt {attempts} failed with a transient error "
                f"({error}); resuming from the last checkpoint in {delay:g} s.",
                delay_seconds=delay,
            )
            return "retrying"
        message = f"Gave up after {attempts} attempts. The last one failed: {error}"
        code = getattr(error, "code", "transient")
    elif isinstance(error, EngineError):
        code, message = error.code, str(error)
    elif isinstance(error, OSError):
        code = "storage_failed"
        message = (
            f"A file could not be read or written ({error.strerror or error}): "
            "check the media storage, then start the run again."
        )
    else:
        logger.exception("Training #%s failed unexpectedly", run.pk)
        code = "unexpected"
        message = (
            "The training failed unexpectedly. The technical detail says why; "
            "start it again, or report it if it fails again."
        )
    services.training_run_fail(
        run=run, code=code, message=message, detail=traceback.format_exc()
    )
    return "failed"


# --- Reconcile -------------------------------------------------------------------


TRAINING_REPAIRS = RowRepairs(
    requeue=lambda run, reason: services.training_run_requeue(run=run, reason=reason),
    fail=lambda run, code, message, detail: services.training_run_fail(
        run=run, code=code, message=message, detail=detail
    ),
    what="training it",
    retry_note=", to resume from its last checkpoint",
)


def reconcile_training_runs(connection, report) -> None:
    """The reconciler's pass over active training runs, judged as content rows
    are (``queued_rows.row_reconcile``): a lost job is enqueued again, an
    abandoned run resumes from its last checkpoint while attempts remain, else
    fails with a reason. Repaired run ids go to ``report.training``."""
    for run in TrainingRun.objects.filter(status__in=TRAINING_ACTIVE_STATUSES):
        report.checked += 1
        if row_reconcile(run, connection, TRAINING_REPAIRS):
            report.training.append(run.pk)
