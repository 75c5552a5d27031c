"""The RQ job that runs one generation: ``content_generate(content_id)``.

It claims its row (a row that is not queued for this very job is left alone, so
the job is idempotent), builds the engine request from the row (images read
through the storage API), runs the process's warm engine (``generation.runtime``)
with its phase (preparing, loading, denoising, saving) and progress reported
(throttled, to the row and to ``job.meta``; an ETA from the step rate), a live
preview of the latents every few steps (``generation.previews``, removed when
the job ends) and cancellation checked every step, then, when the row's request
has a face detailer pass, runs it over the output (``engine.detail``), and
stores the output (and the one before the pass), thumbnails, control images,
snapshot and timings through the services; the scores follow on the CPU queue
(``generation.scoring_jobs``). An inpaint row (``Content.is_inpaint``) runs
``engine.inpaint`` on the output it names instead, and is stored the same way.

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
from dataclasses import replace
from typing import Any

import redis.exceptions
from django.conf import settings
from django.db import InterfaceError as DatabaseInterfaceError
from django.db import OperationalError, close_old_connections
from PIL import Image
from rq import get_current_job
from rq.job import Job

from generation import previews, runtime, services
from generation.engine.errors import EngineError, GenerationCancelled, InvalidRequest
from generation.engine.requests import GenerationResult, InpaintRequest, InpaintResult
from generation.models import Content, ProgressPhase
from generation.parameters import (
    DETAILER_KEY,
    detailer_from_row,
    inpaint_from_row,
    request_from_row,
)
from generation.queued_rows import ran_past_time_limit, retry_delay_seconds
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
        timed_out = ran_past_time_limit(error)
        if not timed_out and (
            isinstance(error, TRANSIENT_ERRORS)
            or (isinstance(error, EngineError) and not error.permanent)
        ):
            return _retry_or_fail(content, error)
        if timed_out:
            services.content_fail(
                content=content,
                code="timeout",
                message=f"The generation ran past its time limit ({job.timeout} s, "
                "STUDIO_JOB_TIMEOUT); lower the steps or the size, or raise the "
                "limit.",
                detail=traceback.format_exc(),
            )
        elif isinstance(error, EngineError):
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
    if content.is_inpaint:
        return _inpaint(content, steps)
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
    detailer_before = None
    detailer_seconds = None
    if content.request.get(DETAILER_KEY):
        detailer_started = time.perf_counter()
        detailer_before = result.images[0]
        result = _detailed(engine, content, request, result, steps)
        detailer_seconds = time.perf_counter() - detailer_started
    steps.on_phase(ProgressPhase.SAVING)
    # Scores are measured by the CPU queue's scoring job once the output is
    # stored (generation.score_services): the GPU never waits for them.
    timings = _timings(content, result, engine, started)
    if detailer_seconds is not None:
        timings["detailer"] = detailer_seconds
    stored = services.content_store_result(
        content=content,
        result=result,
        inputs=inputs,
        timings=timings,
        detailer_before=detailer_before,
    )
    return "succeeded" if stored else "superseded"


def _detailed(
    engine: Any,
    content: Content,
    request: Any,
    result: GenerationResult,
    steps: _StepReporter,
) -> GenerationResult:
    """``result`` with its output through the face detailer's pass (the row's
    ``request['detailer']``): the detailed image, the pass's snapshot under
    ``snapshot['detailer']`` (with its output's hash) and its notes."""
    from generation.engine.snapshot import image_sha256

    detailed = engine.detail(
        detailer_from_row(content.request, image=result.images[0], generation=request),
        should_cancel=steps.should_cancel,
    )
    notes = [*result.notes]
    notes += [note for note in detailed.notes if note not in notes]
    notes.append(
        detailed.reason
        or f"Face detailer: {len(detailed.faces)} face(s) redrawn; the output "
        "before the pass is kept beside it."
    )
    snapshot = {
        **result.snapshot,
        DETAILER_KEY: {
            **detailed.snapshot,
            "outputs": [image_sha256(detailed.image)],
        },
    }
    return replace(
        result,
        images=[detailed.image, *result.images[1:]],
        snapshot=snapshot,
        notes=notes,
    )


def _inpaint(content: Content, steps: _StepReporter) -> str:
    """Run an inpaint row: its request read from storage (and, to replay a
    snapshot, checked against the snapshot's image and mask), the output
    stored as any generation's."""
    started = time.perf_counter()
    request = inpaint_from_row(content.request)
    if content.replay_snapshot is not None:
        _check_replay(request, content.replay_snapshot)
    engine = runtime.engine()
    result = engine.inpaint(
        request, on_step=steps.on_step, should_cancel=steps.should_cancel
    )
    stored = services.content_store_result(
        content=content,
        result=result,
        inputs=dict(content.inputs),
        timings=_timings(content, result, engine, started),
    )
    return "succeeded" if stored else "superseded"


def _check_replay(request: InpaintRequest, snapshot: dict[str, Any]) -> None:
    """Refuse to replay an inpaint snapshot on another image or mask."""
    from generation.engine.snapshot import image_sha256

    recorded = snapshot.get("inpaint") or {}
    for what, image, key in (
        ("image", request.image.convert("RGB"), "image_pixel_sha256"),
        ("mask", request.mask.convert("L"), "mask_pixel_sha256"),
    ):
        if image_sha256(image) != recorded.get(key):
            raise InvalidRequest(
                f"The inpainted {what} differs from the one that produced this "
                "output; it cannot be regenerated exactly."
            )


def _timings(
    content: Content,
    result: GenerationResult | InpaintResult,
    engine: Any,
    started: float,
) -> dict[str, Any]:
    return {
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
    delay = retry_delay_seconds(attempt)
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
