"""The RQ job that runs one generation: ``content_generate(content_id)``.

It claims its row (a row that is not queued for this very job is left alone, so
the job is idempotent), builds the engine request from the row (images read
through the storage API), runs the process's warm engine (``generation.runtime``)
with its phase (preparing, loading, denoising, saving) and progress reported
(throttled, to the row and to ``job.meta``; an ETA from the step rate), a live
preview of the latents every few steps (``generation.previews``, removed when
the job ends) and cancellation checked every step, then stores the output,
thumbnails, control images, snapshot and timings through the services; the
scores follow on the CPU queue (``generation.scoring_jobs``).

Failures: a transient one (out of memory, a lost Redis or database connection)
queues the row again after ``STUDIO_RETRY_BACKOFF_SECONDS`` until
``STUDIO_MAX_ATTEMPTS`` attempts; a permanent one (``EngineError``: bad
parameters, a missing model or file) fails at once with ``str(error)`` as the
message for a person and the traceback as the technical detail.
"""

from __future__ import annotations

import json
import logging
import time
import traceback

import redis.exceptions
from django.conf import settings
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError, close_old_connections
from PIL import Image
from rq import get_current_job
from rq.job import Job
from rq.timeouts import JobTimeoutException

from generation import previews, runtime, services
from generation.engine.errors import EngineError, GenerationCancelled
from generation.models import Content, ProgressPhase
from generation.parameters import open_stored_image, request_from_row
from generation.selectors import content_should_stop

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    OperationalError,
    DatabaseInterfaceError,
)
"""Errors of the transport, not of the generation: a later attempt may pass.
(``EngineError`` subclasses say so themselves with ``permanent = False``.)"""
CLAIM_PATIENCE_SECONDS = 60


def content_generate(content_id: int) -> str:
    """Run the generation of row ``content_id``; return what became of it."""
    job = get_current_job()
    if not _claim(content_id, job):
        logger.info(
            "Content #%s is not queued for job %s: nothing to do", content_id, job.id
        )
        return "skipped"
    try:
        return _run_claimed(content_id, job)
    finally:
        # However the run ended, its live preview goes with it.
        previews.preview_discard(connection=job.connection, job_id=job.id)


def _run_claimed(content_id: int, job: Job) -> str:
    content = Content.objects.select_related("before_reference").get(pk=content_id)
    steps = _StepReporter(content, job)
    try:
        return _generate(content, steps)
    except GenerationCancelled:
        if steps.handed_back:
            services.content_requeue(
                content=content,
                reason="Handed back by a worker that was stopping; queued again.",
                refund_attempt=True,
            )
            return "handed back"
        # False when the row was not cancelled but taken from this job.
        cancelled = services.content_mark_cancelled(content=content)
        return "cancelled" if cancelled else "superseded"
    except Exception as error:
        if isinstance(error, TRANSIENT_ERRORS) or (
            isinstance(error, EngineError) and not error.permanent
        ):
            return _retry_or_fail(content, error)
        if isinstance(error, EngineError):
            services.content_fail(
                content=content,
                code=error.code,
                message=str(error),
                detail=traceback.format_exc(),
            )
        elif isinstance(error, OSError):
            services.content_fail(
                content=content,
                code="storage_failed",
                message="A file could not be read or written "
                f"({error.strerror or error}): check the media storage (free "
                "space, permissions, credentials), then retry.",
                detail=traceback.format_exc(),
            )
        elif isinstance(error, JobTimeoutException):
            services.content_fail(
                content=content,
                code="timeout",
                message=f"The generation ran past its time limit ({job.timeout} s, "
                "STUDIO_JOB_TIMEOUT); lower the steps or the size, or raise the "
                "limit.",
                detail=traceback.format_exc(),
            )
        else:
            logger.exception("Content #%s failed unexpectedly", content.pk)
            services.content_fail(
                content=content,
                code="unexpected",
                message="The generation failed unexpectedly. The technical detail "
                "below says why; retry it, or report it if it fails again.",
                detail=traceback.format_exc(),
            )
        return "failed"


def _claim(content_id: int, job: Job) -> bool:
    """Claim the row for this job, waiting out a database that is restarting.

    A job that fails before its claim leaves its row queued behind a failed job,
    which the reconciler can only fail; so the claim waits up to
    ``CLAIM_PATIENCE_SECONDS`` for the database, and drops a connection that a
    database restart broke (Django checks it only when asked).
    """
    deadline = time.monotonic() + CLAIM_PATIENCE_SECONDS
    while True:
        close_old_connections()
        try:
            return services.content_claim(
                content_id=content_id, job_id=job.id, worker_name=job.worker_name or ""
            )
        except (OperationalError, DatabaseInterfaceError):
            if time.monotonic() > deadline:
                raise
            logger.warning("Content #%s: database unavailable, waiting", content_id)
            time.sleep(1)


def _generate(content: Content, steps: _StepReporter) -> str:
    started = time.perf_counter()
    request, inputs = request_from_row(
        content.request, replay_snapshot=content.replay_snapshot, inputs=content.inputs
    )
    engine = runtime.engine()
    result = engine.generate(
        request,
        on_step=steps.on_step,
        should_cancel=steps.should_cancel,
        on_phase=steps.on_phase,
        on_preview=steps.on_preview,
    )
    steps.on_phase(ProgressPhase.SAVING)
    # Scores are measured by the CPU queue's scoring job once the output is
    # stored (generation.score_services): the GPU never waits for them.
    before = _before_image(content)
    timings = {
        "queue_wait": max(
            0.0, (content.started_at - content.enqueued_at).total_seconds()
        ),
        "load": result.timings.load,
        "preprocess": result.timings.preprocess,
        "inference": result.timings.inference,
        "engine_total": result.timings.total,
        "job_total": time.perf_counter() - started,
        "attempt": content.attempts,
        "registry_hit": result.registry_hit,
        # Round-tripped so that whatever the registry reports fits a JSONField.
        "registry": json.loads(json.dumps(engine.registry.stats(), default=str)),
    }
    stored = services.content_store_result(
        content=content,
        result=result,
        before_image=before,
        inputs=inputs,
        timings=timings,
    )
    return "succeeded" if stored else "superseded"


def _before_image(content: Content) -> Image.Image | None:
    """The reference the output is shown beside, if any left."""
    reference = content.before_reference
    if reference is None:
        return None
    try:
        return open_stored_image(reference.image.name)
    except EngineError:
        logger.warning("Content #%s: its before reference is gone", content.pk)
        return None


def _retry_or_fail(content: Content, error: Exception) -> str:
    # A lost database connection must not be reused for the bookkeeping below.
    close_old_connections()
    attempt = Content.objects.values_list("attempts", flat=True).get(pk=content.pk)
    content.attempts = attempt
    message = str(error) or type(error).__name__
    if attempt >= settings.STUDIO_MAX_ATTEMPTS:
        services.content_fail(
            content=content,
            code=getattr(error, "code", "transient"),
            message=f"Gave up after {attempt} attempts. The last one failed with: "
            f"{message}",
            detail=traceback.format_exc(),
        )
        return "failed"
    delay = services.retry_delay_seconds(attempt)
    services.content_requeue(
        content=content,
        reason=f"Attempt {attempt} failed with a transient error ({message}); "
        f"retrying in {delay:g} s.",
        delay_seconds=delay,
    )
    return "retrying"


class _StepReporter:
    """The engine's callbacks: phases, throttled progress with an ETA, live
    previews, cancellation checks."""

    def __init__(self, content: Content, job: Job) -> None:
        self.content = content
        self.job = job
        self.interval = float(settings.STUDIO_PROGRESS_INTERVAL_SECONDS)
        self.last_report = float("-inf")
        self.handed_back = False
        # The first step seen and when: the step rate is measured from there
        # (the first step also pays for warm-up, so it is not counted).
        self.rate_origin: tuple[int, float] | None = None

    def on_phase(self, phase: str) -> None:
        if phase == ProgressPhase.DENOISING:
            return  # said by the first step's report, with its numbers
        services.content_report_phase(content=self.content, phase=phase)

    def on_step(self, step: int, total: int) -> None:
        now = time.monotonic()
        if self.rate_origin is None:
            self.rate_origin = (step, now)
        if step < total and now - self.last_report < self.interval:
            return
        self.last_report = now
        services.content_report_progress(
            content=self.content,
            step=step,
            total=total,
            eta_seconds=self._eta(step, total, now),
        )
        self.job.meta["progress"] = {"step": step, "total": total}
        try:
            self.job.save_meta()
        except redis.exceptions.RedisError:
            # The row has the progress; Redis only mirrors it, and losing Redis
            # for a moment is no reason to stop a generation.
            logger.warning(
                "Content #%s: progress not mirrored to Redis", self.content.pk
            )

    def _eta(self, step: int, total: int, now: float) -> float | None:
        """Seconds of denoising left at the rate measured so far."""
        first_step, first_time = self.rate_origin
        if step <= first_step:
            return None
        return (now - first_time) / (step - first_step) * (total - step)

    def on_preview(self, step: int, total: int, image: Image.Image) -> None:
        previews.preview_publish(
            connection=self.job.connection, job_id=self.job.id, step=step, image=image
        )

    def should_cancel(self) -> bool:
        if runtime.handback_requested():
            self.handed_back = True
            return True
        return content_should_stop(content=self.content)
