"""Training runs: the row, its job in a real worker on the real Redis, resume
after a killed worker, cancel, and the LoRA version it attaches."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.core.files.storage import default_storage

from generation import training_services as services
from generation.engine.training import TrainingSettings
from generation.reconcile import reconcile
from generation.training_models import TrainingRun, TrainingStatus
from personas.models import LoraSource, Persona
from tests.workers import wait_for, wait_samples_scored

# A run on the tiny model: 64 pixels, a learning rate that moves the loss.
TINY_RUN = TrainingSettings(
    steps=20,
    rank=4,
    alpha=4.0,
    learning_rate=1e-2,
    resolution=64,
    batch_size=2,
    seed=1,
    checkpoint_every=10,
    sample_every=10,
    sample_steps=2,
)


def start(persona: Persona, settings: TrainingSettings = TINY_RUN) -> TrainingRun:
    references = services.training_default_references(persona=persona)
    return services.training_run_start(
        persona=persona,
        references=[
            (
                reference,
                services.training_caption(
                    trigger_word="ada_person",
                    caption=reference.caption,
                    appearance=persona.appearance,
                ),
            )
            for reference in references
        ],
        trigger_word="ada_person",
        settings=settings,
        validation_prompts=["ada_person smiling"],
        validation_seeds=[1],
    )


def wait_status(run: TrainingRun, *statuses: str, timeout: float = 300) -> TrainingRun:
    return wait_for(
        lambda: TrainingRun.objects.filter(pk=run.pk, status__in=statuses).first(),
        timeout=timeout,
        what=f"training #{run.pk} to be {'/'.join(statuses)}",
    )


@pytest.mark.django_db
def test_the_default_references_are_the_face_half_and_full_body_ones(
    training_persona,
):
    roles = [
        r.role for r in services.training_default_references(persona=training_persona)
    ]
    assert roles == ["face", "half_body", "full_body"]


@pytest.mark.django_db
def test_a_caption_joins_trigger_word_caption_and_appearance():
    assert (
        services.training_caption(
            trigger_word="ada_person", caption=" side view ", appearance="red hair"
        )
        == "ada_person, side view, red hair"
    )


@pytest.mark.django_db
def test_too_few_images_are_refused_with_the_reason_and_nothing_is_saved(
    training_persona,
):
    reference = services.training_default_references(persona=training_persona)[0]
    with pytest.raises(ValidationError, match="at least 3 images; 1 was chosen"):
        services.training_run_start(
            persona=training_persona,
            references=[(reference, "ada_person, face")],
            trigger_word="ada_person",
            settings=TINY_RUN,
        )
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "trigger", "message"),
    [
        ({"resolution": 60}, "ada_person", "not a multiple of 8"),
        ({"rank": 0}, "ada_person", "rank must be a whole number"),
        ({}, "", "Enter a trigger word"),
        ({}, "ada, person", "without commas"),
    ],
)
def test_settings_that_cannot_work_are_refused_before_anything_is_queued(
    training_persona, changes, trigger, message
):
    references = services.training_default_references(persona=training_persona)
    with pytest.raises(ValidationError, match=message):
        services.training_run_start(
            persona=training_persona,
            references=[(r, f"ada_person, {r.caption}") for r in references],
            trigger_word=trigger,
            settings=TrainingSettings(**{**TINY_RUN.to_dict(), **changes}),
        )
    assert not TrainingRun.objects.exists()


@pytest.mark.django_db
def test_a_started_run_is_a_queued_row_with_its_inputs_and_settings(
    training_persona, django_capture_on_commit_callbacks, redis_connection
):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        run = start(training_persona)
    assert len(callbacks) == 1
    run.refresh_from_db()
    assert run.status == TrainingStatus.QUEUED and run.rq_job_id
    assert [entry["caption"] for entry in run.inputs] == [
        "ada_person, face view, a red and blue test card",
        "ada_person, half body view, a red and blue test card",
        "ada_person, full body view, a red and blue test card",
    ]
    assert all(len(entry["sha256"]) == 64 for entry in run.inputs)
    assert run.hyperparameters == TINY_RUN.to_dict()
    from rq.job import Job

    job = Job.fetch(run.rq_job_id, connection=redis_connection)
    assert job.func_name == "generation.training_jobs.training_run_job"
    assert job.args == (run.pk,)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("base_model", "steps"),
    # Enough steps that the kill (at step 15 or so) comes well before the end.
    [("tiny-sd15", 100), ("tiny-sdxl", 100)],
)
def test_a_killed_worker_resumes_from_its_last_checkpoint_and_attaches_a_version(
    training_persona, start_worker, base_model, steps
):
    Persona.objects.filter(pk=training_persona.pk).update(base_model=base_model)
    training_persona.refresh_from_db()
    settings = TrainingSettings(**{**TINY_RUN.to_dict(), "steps": steps})
    start_worker("cpu")  # scores the samples
    killed = start_worker("train-kill")
    run = start(training_persona, settings)
    assert run.family == base_model.removeprefix("tiny-")
    # Past the first checkpoint (step 10), well before the end.
    wait_for(
        lambda: TrainingRun.objects.filter(
            pk=run.pk, status=TrainingStatus.RUNNING, progress_step__gte=15
        ).exists(),
        what="the run to pass its first checkpoint",
    )
    killed.kill()
    killed_at = TrainingRun.objects.get(pk=run.pk)
    assert killed_at.checkpoints and killed_at.progress_step < settings.steps
    last_checkpoint = killed_at.checkpoints[-1]["step"]

    report = reconcile()
    assert report.training == [run.pk]
    assert TrainingRun.objects.get(pk=run.pk).status == TrainingStatus.QUEUED

    start_worker("train-kill")
    # A generous deadline: a shared test machine trains slowly.
    run = wait_status(
        run, TrainingStatus.SUCCEEDED, TrainingStatus.FAILED, timeout=1200
    )
    assert run.status == TrainingStatus.SUCCEEDED, run.error_detail
    run = wait_samples_scored(run)
    assert run.attempts == 2
    assert run.snapshot["resumed_from"] == last_checkpoint
    assert [step for step, _ in run.loss_history] == list(range(1, settings.steps + 1))
    assert run.snapshot["model_fingerprint"] and run.snapshot["libraries"]["peft"]

    version = run.lora_version
    assert version.source == LoraSource.TRAINED and version.is_active
    assert version.number == 1
    persona = Persona.objects.get(pk=training_persona.pk)
    # The persona uses its own copy of the version's weights.
    assert persona.lora_sha256 == version.sha256
    assert persona.lora_weights.name != version.weights.name
    assert default_storage.exists(version.weights.name)
    # Samples at every sample step, each with the identity verdict dlib gave
    # (the tiny model's noise holds no face, and the reason is kept).
    steps = sorted({sample.step for sample in run.samples.all()})
    assert steps == list(range(10, settings.steps + 1, 10))
    assert {sample.identity_status for sample in run.samples.all()} == {"no_face"}


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_cancel_ends_a_running_training_at_its_next_step(
    training_persona, start_worker
):
    settings = TrainingSettings(**{**TINY_RUN.to_dict(), "steps": 2000})
    start_worker("train-cancel")
    run = start(training_persona, settings)
    wait_for(
        lambda: TrainingRun.objects.filter(
            pk=run.pk, status=TrainingStatus.RUNNING, progress_step__gte=3
        ).exists(),
        what="the run to report steps",
    )
    services.training_run_cancel(run=run)
    run = wait_status(run, TrainingStatus.CANCELLED, TrainingStatus.SUCCEEDED)
    assert run.status == TrainingStatus.CANCELLED
    assert run.progress_step < settings.steps
    assert run.lora_version is None


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_deleting_a_persona_removes_every_training_file_it_owns(
    training_persona, start_worker, django_capture_on_commit_callbacks
):
    """Checkpoints (named in the run's JSON), samples, trained and uploaded
    LoRA versions and the persona's own copy: none is left, and the media sweep
    finds no orphan afterwards."""
    from datetime import timedelta

    from django.core.files.uploadedfile import SimpleUploadedFile

    from generation.media_sweep import sweep_media
    from personas.services import lora_version_add, persona_delete
    from tests.reliability.orphans import orphaned_files, stored_files

    # The session's media folder keeps other tests' files.
    before = stored_files()
    start_worker("cpu")
    start_worker("train-delete")
    run = wait_status(
        start(training_persona), TrainingStatus.SUCCEEDED, TrainingStatus.FAILED
    )
    assert run.status == TrainingStatus.SUCCEEDED, run.error_detail
    run = wait_samples_scored(run)
    persona = Persona.objects.get(pk=training_persona.pk)
    uploaded = lora_version_add(
        persona=persona,
        file=SimpleUploadedFile(
            "mine.safetensors", run.lora_version.weights.read()
        ),
    )
    owned = [name for entry in run.checkpoints for name in entry["files"].values()]
    owned += [sample.image.name for sample in run.samples.all()]
    owned += [run.lora_version.weights.name, uploaded.weights.name]
    owned.append(Persona.objects.get(pk=persona.pk).lora_weights.name)
    assert len(run.checkpoints) == 2 and run.samples.count() == 2
    assert all(default_storage.exists(name) for name in owned)
    assert orphaned_files(ignoring=before) == []
    # The sweep knows the checkpoints (no file field names them) as owned.
    sweep = sweep_media(older_than=timedelta(0))
    assert not set(sweep.orphans) & set(owned)

    with django_capture_on_commit_callbacks(execute=True):
        persona_delete(persona=Persona.objects.get(pk=persona.pk))

    assert not TrainingRun.objects.filter(pk=run.pk).exists()
    assert [name for name in owned if default_storage.exists(name)] == []
    assert orphaned_files(ignoring=before) == []
    sweep = sweep_media(older_than=timedelta(0))
    assert [name for name in sweep.orphans if name not in before] == []
