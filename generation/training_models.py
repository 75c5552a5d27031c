"""Training runs: one LoRA training of a persona each (DESIGN.md decision 12).

Like a ``Content`` row, a ``TrainingRun`` is created ``queued`` before its job is
enqueued, and the job carries only its id. The run keeps its settings, a snapshot
of its inputs, its progress and loss history, the storage names of its
checkpoints, its validation samples with their identity scores, and the LoRA
version it produced.
"""

from __future__ import annotations

import uuid

from django.db import models
from django.urls import reverse

from generation.queued_rows import RUN_ACTIVE_STATUSES, QueuedRow, RunStatus
from personas.models import Persona, PersonaLoraVersion

# A run is a queued row (``generation.queued_rows``), as a content row is.
TrainingStatus = RunStatus
TRAINING_ACTIVE_STATUSES = RUN_ACTIVE_STATUSES


def training_file_name(run_id: int, *parts: str) -> str:
    """Storage name of a run's file: ``training/<run>/<parts>``."""
    return "/".join(("training", str(run_id), *parts))


def sample_upload_to(instance: TrainingSample, filename: str) -> str:
    return training_file_name(instance.run_id, "samples", f"{uuid.uuid4().hex}.png")


class TrainingRun(QueuedRow):
    persona = models.ForeignKey(
        Persona, on_delete=models.CASCADE, related_name="training_runs"
    )
    model = models.CharField("base model", max_length=100)
    family = models.CharField(max_length=20, default="sd15")
    preset = models.CharField(max_length=20, blank=True)
    hyperparameters = models.JSONField(help_text="The engine's TrainingSettings.")
    trigger_word = models.CharField(max_length=64)
    inputs = models.JSONField(
        help_text="The images trained on: reference id, content hash, caption."
    )
    validation_prompts = models.JSONField(default=list, blank=True)
    validation_seeds = models.JSONField(default=list, blank=True)
    snapshot = models.JSONField(
        default=dict,
        blank=True,
        help_text="Base model fingerprint, library versions, image hashes.",
    )
    eta_seconds = models.FloatField(null=True, blank=True)
    steps_per_second = models.FloatField(null=True, blank=True)
    loss_history = models.JSONField(
        default=list, blank=True, help_text="[step, loss] pairs."
    )
    checkpoints = models.JSONField(
        default=list,
        blank=True,
        help_text="[{step, files: {name: storage name}}], oldest first.",
    )
    lora_version = models.OneToOneField(
        PersonaLoraVersion,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="training_run",
    )

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "training run"
        permissions = [("train_lora", "Can train a persona LoRA")]
        indexes = [
            models.Index(fields=["status"], name="trainingrun_status"),
            models.Index(fields=["rq_job_id"], name="trainingrun_rq_job"),
        ]

    def __str__(self) -> str:
        return f"Training #{self.pk} of {self.persona}"

    def get_absolute_url(self) -> str:
        return reverse("admin:generation_trainingrun_change", args=[self.pk])


class TrainingSample(models.Model):
    """A validation image made at ``step`` with the LoRA so far, and its identity
    score against the persona's face references (None with the reason when it
    could not be computed). The score comes from a job on the CPU queue
    (``generation.scoring_jobs.training_sample_score``), as an output's does:
    ``identity_status`` is ``pending`` until it lands."""

    run = models.ForeignKey(
        TrainingRun, on_delete=models.CASCADE, related_name="samples"
    )
    step = models.PositiveIntegerField()
    prompt = models.TextField()
    seed = models.PositiveBigIntegerField()
    image = models.ImageField(upload_to=sample_upload_to)
    identity_status = models.CharField(max_length=16, blank=True, db_index=True)
    identity_similarity = models.FloatField(null=True, blank=True)
    identity_distance = models.FloatField(null=True, blank=True)
    identity_detail = models.JSONField(default=dict, blank=True, editable=False)
    score_job_id = models.CharField("scoring job id", max_length=64, blank=True)
    score_attempts = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step", "seed", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "step", "prompt", "seed"],
                name="unique_training_sample",
            )
        ]

    def __str__(self) -> str:
        return f"Sample of training #{self.run_id} at step {self.step}"
