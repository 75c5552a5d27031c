"""Writes of LoRA training: start, cancel and retry a run; the job's and the
reconciler's bookkeeping; LoRA versions (DESIGN.md decisions 1 and 12).

A run is a row first: ``training_run_start`` checks the settings with the
engine's plan check (nothing sure to fail is queued), saves the row ``queued``
and enqueues its job when the transaction commits. Checkpoints, samples and the
result go through Django's storage API.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone
from PIL import Image

from generation.engine.errors import EngineError, GenerationCancelled
from generation.engine.training import (
    TrainingResult,
    TrainingSettings,
    ValidationSample,
    check_training_plan,
)
from generation.engine_settings import model_family
from generation.queued_rows import (
    RowJob,
    row_claim,
    row_finish_active,
    row_queue,
    row_requeue,
)
from generation.score_services import training_samples_queue_scoring
from generation.training_models import (
    TrainingRun,
    TrainingSample,
    TrainingStatus,
    training_file_name,
)
from personas.files import delete_quietly, written_files_removed_on_failure
from personas.models import (
    LoraSource,
    Persona,
    PersonaLoraVersion,
    ReferenceImage,
    ReferenceRole,
)
from personas.services import lora_version_add
from personas.uploads import UploadRejected

TRAINING_JOB = RowJob(
    function="generation.training_jobs.training_run_job",
    # A training job may run for hours; the worker's heartbeat keeps it alive,
    # and this bounds one that hangs (RQ kills it, the reconciler then sees it).
    timeout=48 * 3600,
    description="train LoRA, run",
)
DEFAULT_TRAINING_ROLES = (
    ReferenceRole.FACE,
    ReferenceRole.HALF_BODY,
    ReferenceRole.FULL_BODY,
)
DEFAULT_VALIDATION_SEEDS = (1, 2)


# --- Defaults for the start page -------------------------------------------------


def training_default_references(*, persona: Persona) -> list[ReferenceImage]:
    """The references a run uses unless staff choose others: the face, half-body
    and full-body ones."""
    return [
        reference
        for reference in persona.references.all()
        if reference.role in DEFAULT_TRAINING_ROLES
    ]


def training_caption(*, trigger_word: str, caption: str, appearance: str) -> str:
    """A training caption: trigger word, the image's caption, the base appearance."""
    parts = (trigger_word.strip(), caption.strip(), appearance.strip())
    return ", ".join(part for part in parts if part)


def training_default_trigger(*, persona: Persona) -> str:
    return f"{persona.slug.replace('-', '')}_person"


# --- Starting and acting on a run ------------------------------------------------


@transaction.atomic
def training_run_start(
    *,
    persona: Persona,
    references: Sequence[tuple[ReferenceImage, str]],
    trigger_word: str,
    settings: TrainingSettings,
    preset: str = "",
    validation_prompts: Sequence[str] = (),
    validation_seeds: Sequence[int] = DEFAULT_VALIDATION_SEEDS,
    user: AbstractBaseUser | None = None,
) -> TrainingRun:
    """Create a run (queued) on ``references`` with their full captions, and
    enqueue its job on commit. Settings that cannot work raise ValidationError
    with the engine's reason, before anything is saved."""
    trigger_word = trigger_word.strip()
    if not trigger_word or len(trigger_word) > 64 or "," in trigger_word:
        raise ValidationError(
            "Enter a trigger word (one short token without commas, up to 64 "
            "characters) that the LoRA will answer to.",
            code="trigger_word",
        )
    for reference, _ in references:
        if reference.persona_id != persona.pk:
            raise ValidationError(
                "Reference #%(id)s is not in this persona's gallery.",
                code="foreign_reference",
                params={"id": reference.pk},
            )
    prompts = list(validation_prompts) or [trigger_word]
    try:
        family = model_family(persona.base_model)
        check_training_plan(
            family=family,
            settings=settings,
            captions=[caption for _, caption in references],
            validation_prompts=prompts,
        )
    except EngineError as error:
        raise ValidationError(str(error), code="training_refused") from None
    run = TrainingRun(
        persona=persona,
        model=persona.base_model,
        family=family,
        preset=preset,
        hyperparameters=settings.to_dict(),
        trigger_word=trigger_word,
        inputs=[
            {"reference": ref.pk, "sha256": ref.sha256, "caption": caption}
            for ref, caption in references
        ],
        validation_prompts=prompts,
        validation_seeds=list(validation_seeds),
        progress_total=settings.steps,
        created_by=user,
    )
    run.full_clean()
    _queue_run(run, delay_seconds=0)
    run.save()
    return run


@transaction.atomic
def training_run_cancel(
    *, run: TrainingRun, user: AbstractBaseUser | None = None
) -> TrainingRun:
    """Cancel a run: a queued one at once, a running one before its next step."""
    run = TrainingRun.objects.select_for_update().get(pk=run.pk)
    if run.status == TrainingStatus.QUEUED:
        run.status = TrainingStatus.CANCELLED
        run.finished_at = timezone.now()
        run.error_code = "cancelled"
        run.error_message = "Cancelled before it started."
        run.save()
    elif run.status == TrainingStatus.RUNNING:
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
    else:
        raise ValidationError(
            "Training #%(id)s has already finished (%(status)s); there is nothing "
            "to cancel.",
            code="not_active",
            params={"id": run.pk, "status": run.get_status_display()},
        )
    return run


@transaction.atomic
def training_run_delete(*, run: TrainingRun) -> None:
    """Delete a finished run; its checkpoint and sample files go once that
    commits (``generation.cleanup``); its LoRA version stays: it belongs to the
    persona. An active run is cancelled first."""
    if run.is_active:
        raise ValidationError(
            "Training #%(id)s is still %(status)s: cancel it first.",
            code="active",
            params={"id": run.pk, "status": run.get_status_display()},
        )
    run.delete()


# --- The job's writes ------------------------------------------------------------


def training_run_claim(*, run_id: int, job_id: str, worker_name: str) -> bool:
    """Mark a queued run running for job ``job_id``; False when it is not queued
    for that job (idempotent jobs)."""
    return row_claim(TrainingRun, pk=run_id, job_id=job_id, worker_name=worker_name)


def training_run_report_progress(
    *,
    run: TrainingRun,
    step: int,
    total: int,
    losses: list[list[float]],
    eta_seconds: float | None,
    steps_per_second: float | None,
) -> None:
    """Progress and the loss history so far (the whole list: it is small)."""
    TrainingRun.objects.filter(pk=run.pk, rq_job_id=run.rq_job_id).update(
        progress_step=step,
        progress_total=total,
        loss_history=losses,
        eta_seconds=eta_seconds,
        steps_per_second=steps_per_second,
    )


def training_run_add_checkpoint(
    *, run: TrainingRun, step: int, folder: Path
) -> dict[str, object]:
    """Store a checkpoint folder's files; record their storage names. Files of a
    write that failed, or of a run that is no longer this job's (deleted,
    taken over), are removed again: no checkpoint file is left without its row.
    """
    files = {}
    storage = default_storage
    try:
        for path in sorted(Path(folder).iterdir()):
            name = training_file_name(run.pk, f"step-{step:06d}", path.name)
            # A file there now was left by an attempt killed while storing (the
            # names are the run's and the step's): this one replaces it.
            delete_quietly(storage, name)
            files[path.name] = name
            files[path.name] = storage.save(name, ContentFile(path.read_bytes()))
        entry = {"step": step, "files": files}
        recorded = TrainingRun.objects.filter(
            pk=run.pk, rq_job_id=run.rq_job_id
        ).update(checkpoints=[*run.checkpoints, entry])
        if not recorded:
            raise GenerationCancelled(
                f"Training #{run.pk} is no longer this job's; checkpoint dropped."
            )
    except BaseException:
        for name in files.values():
            delete_quietly(storage, name)
        raise
    run.checkpoints = [*run.checkpoints, entry]
    return entry


def training_run_last_checkpoint(*, run: TrainingRun, into: Path) -> Path | None:
    """Copy the run's last stored checkpoint into folder ``into``; None when it
    has none (or its files are gone)."""
    for entry in reversed(run.checkpoints):
        folder = Path(into) / f"step-{entry['step']:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        try:
            for filename, name in entry["files"].items():
                with default_storage.open(name, "rb") as stored:
                    (folder / filename).write_bytes(stored.read())
        except FileNotFoundError:
            continue
        return folder
    return None


def training_run_add_samples(
    *, run: TrainingRun, samples: Sequence[ValidationSample]
) -> list[TrainingSample]:
    """Store validation samples, each pending its identity score, which a job on
    the CPU queue computes (``score_services.training_samples_queue_scoring``):
    the GPU job goes on training meanwhile. A repeat of a step after a resume
    adds nothing (the first one stays). The images of a write that fails, or of
    a run that is no longer this job's, are removed again."""
    stored, created = [], []
    with written_files_removed_on_failure() as written, transaction.atomic():
        if not TrainingRun.objects.filter(
            pk=run.pk, rq_job_id=run.rq_job_id, status=TrainingStatus.RUNNING
        ).exists():
            raise GenerationCancelled(
                f"Training #{run.pk} is no longer this job's; samples dropped."
            )
        for sample in samples:
            row = TrainingSample.objects.filter(
                run=run, step=sample.step, prompt=sample.prompt, seed=sample.seed
            ).first()
            if row is None:
                row = TrainingSample(
                    run=run, step=sample.step, prompt=sample.prompt, seed=sample.seed
                )
                written.save(
                    row.image, "sample.png", ContentFile(_png(sample.image))
                )
                created.append(row)
            stored.append(row)
        training_samples_queue_scoring(samples=created)
        for row in created:
            row.save()
    return stored


@transaction.atomic
def training_run_succeed(
    *, run: TrainingRun, result: TrainingResult
) -> PersonaLoraVersion | None:
    """Check the LoRA with the studio's own upload checks, attach it to the
    persona as a new version (made active), and finish the run. None when the run
    no longer belongs to this job."""
    row = (
        TrainingRun.objects.select_for_update()
        .filter(pk=run.pk, rq_job_id=run.rq_job_id, status=TrainingStatus.RUNNING)
        .first()
    )
    if row is None:
        return None
    name = f"{row.persona.slug}-training-{row.pk}.safetensors"
    try:
        version = lora_version_add(
            persona=row.persona,
            file=ContentFile(result.lora, name=name),
            source=LoraSource.TRAINED,
            label=f"trained, run #{row.pk}, {row.trigger_word}",
            user=row.created_by,
        )
    except UploadRejected as error:
        _finish(
            row,
            TrainingStatus.FAILED,
            "lora_rejected",
            f"The trained LoRA failed the studio's LoRA checks: {error.messages[0]}",
        )
        return None
    row.lora_version = version
    row.snapshot = {**result.snapshot, "resumed_from": result.resumed_from}
    row.progress_step = result.steps
    row.loss_history = [[i + 1, loss] for i, loss in enumerate(result.losses)]
    row.eta_seconds = 0
    row.steps_per_second = result.steps_per_second
    _finish(row, TrainingStatus.SUCCEEDED, "", "")
    return version


def training_run_fail(
    *, run: TrainingRun, code: str, message: str, detail: str = ""
) -> bool:
    return row_finish_active(
        run, status=TrainingStatus.FAILED, code=code, message=message, detail=detail
    )


def training_run_mark_cancelled(*, run: TrainingRun) -> bool:
    return row_finish_active(
        run,
        status=TrainingStatus.CANCELLED,
        code="cancelled",
        message="Cancelled while running.",
    )


def training_run_requeue(
    *,
    run: TrainingRun,
    reason: str,
    delay_seconds: float = 0,
    refund_attempt: bool = False,
) -> bool:
    """Queue an active run again under a new job id; it resumes from its last
    checkpoint. False when the row changed since ``run`` was read."""
    return row_requeue(
        run,
        queue=lambda row: _queue_run(row, delay_seconds=delay_seconds),
        reason=reason,
        refund_attempt=refund_attempt,
    )


# --- Internals -------------------------------------------------------------------


def _queue_run(run: TrainingRun, *, delay_seconds: float) -> None:
    """Set ``run`` queued under a new job id; enqueue that job on commit (the
    caller saves the row in the same transaction)."""
    row_queue(run, TRAINING_JOB, model_key=run.model, delay_seconds=delay_seconds)


def _finish(row: TrainingRun, status: str, code: str, message: str) -> None:
    row.status = status
    row.error_code = code
    row.error_message = message
    row.finished_at = timezone.now()
    row.save()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
