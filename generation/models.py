"""Content records: one generation each, with its before/after, progress and review.

The database is the source of truth (DESIGN.md decision 1): a ``Content`` row is
created ``queued`` before anything is enqueued, and the RQ job only carries its
id. ``Batch`` groups the rows of one "Generate..." with a count, or the tiles
of one X/Y/Z grid, so that they can be compared side by side.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.urls import reverse

from generation.engine.identity import IdentityStatus as EngineIdentityStatus
from generation.engine.vocabulary import ProgressPhase as EngineProgressPhase
from generation.queued_rows import (
    RUN_ACTIVE_STATUSES,
    RUN_FINISHED_STATUSES,
    QueuedRow,
    RunStatus,
)
from personas.models import (
    ConsistencyMethod,
    ControlType,
    Persona,
    ReferenceImage,
    text_choices,
)

ProgressPhase = text_choices("ProgressPhase", EngineProgressPhase)


def content_file_stem(content: Content) -> str:
    """The name every file of one content row is stored under, in its folder.

    One name per row, not a random one per write: a retried attempt writes the
    names the attempt it replaces wrote, so it can remove what a killed worker
    left there first (``generation.cleanup``). The creation time keeps two
    databases that reuse ids on one storage apart.
    """
    if content.pk is None or content.created_at is None:
        raise ValueError("A content's files are named after its saved row.")
    return f"{content.pk}-{content.created_at:%Y%m%d%H%M%S%f}"


def output_upload_to(instance: Content, filename: str) -> str:
    return f"generated/{instance.persona_id}/{content_file_stem(instance)}.png"


def detailer_before_upload_to(instance: Content, filename: str) -> str:
    stem = content_file_stem(instance)
    return f"generated/{instance.persona_id}/{stem}-before-detailer.png"


def inpaint_mask_upload_to(instance: Content, filename: str) -> str:
    return f"generated/{instance.persona_id}/{content_file_stem(instance)}-mask.png"


def output_thumbnail_upload_to(instance: Content, filename: str) -> str:
    stem = content_file_stem(instance)
    return f"thumbnails/generated/{instance.persona_id}/{stem}.webp"


def before_thumbnail_upload_to(instance: Content, filename: str) -> str:
    stem = content_file_stem(instance)
    return f"thumbnails/before/{instance.persona_id}/{stem}.webp"


def control_output_upload_to(instance: ContentControlImage, filename: str) -> str:
    content = instance.content
    stem = content_file_stem(content)
    return f"control/generated/{content.persona_id}/{stem}-{instance.order}.png"


# A content row runs as a job with the statuses every queued row has.
ContentStatus = RunStatus
FINISHED_STATUSES = RUN_FINISHED_STATUSES
ACTIVE_STATUSES = RUN_ACTIVE_STATUSES

INPAINT_KIND = "inpaint"
"""``Content.request['kind']`` of an inpaint (a generation's request has none)."""


class ReviewState(models.TextChoices):
    PENDING = "pending", "Pending review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"


class IdentityStatus(models.TextChoices):
    """Where an output's identity score stands. The engine's three outcomes
    (``generation.engine.identity.IdentityStatus``) plus the two of the
    scoring job: ``pending`` while it waits or runs ("scoring…"), ``failed``
    when it could not run; empty before there is an output to score."""

    NOT_YET = "", "No output yet"
    PENDING = "pending", "Scoring…"
    SCORED = EngineIdentityStatus.SCORED.value, "Scored"
    NO_FACE = EngineIdentityStatus.NO_FACE.value, "No face found"
    NO_IDENTITY = EngineIdentityStatus.NO_IDENTITY.value, "No face reference"
    FAILED = "failed", "Scoring failed"


class BatchKind(models.TextChoices):
    BATCH = "batch", "Batch"
    # The strength sweeps of before became grids with one strength axis
    # (migration ``batch_grid_axes``).
    GRID = "grid", "Grid"


class Batch(models.Model):
    """Generations started together: a count of one prompt, or the tiles of an
    X/Y/Z grid (``generation.grids``)."""

    persona = models.ForeignKey(
        Persona, on_delete=models.CASCADE, related_name="batches"
    )
    kind = models.CharField(
        max_length=8, choices=BatchKind.choices, default=BatchKind.BATCH
    )
    prompt = models.TextField()
    axes = models.JSONField(
        default=list,
        blank=True,
        help_text="A grid's axes: each a parameter and its values "
        "(generation.grids.GridAxis).",
    )
    tiles = models.JSONField(
        default=list,
        blank=True,
        help_text="A grid's tiles: [content id, [x, y, z value indexes]] each.",
    )
    keep_best = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        help_text="Best of N: keep the best this many outputs by identity; the "
        "others are kept too, but marked 'not kept'.",
    )
    best_of_applied_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name_plural = "batches"

    def __str__(self) -> str:
        return f"{self.get_kind_display()} #{self.pk} of {self.persona}"

    @property
    def tile_count(self) -> int:
        """A grid's number of tiles (generations)."""
        return len(self.tiles)


class Content(QueuedRow):
    """One generation: what was asked, how it ran, what came out, and its review.

    ``request`` is the engine request in its JSON form (see
    ``generation.parameters``) with images named by storage names; it is resolved
    from the persona and the overrides when the row is created, so that the row
    runs the same whatever happens to the persona later. ``replay_snapshot`` is
    set for "regenerate exactly": the job replays it instead. ``inputs`` maps the
    content keys of a snapshot to the stored files they came from. A
    generation's request may carry a face detailer pass (``request['detailer']``);
    an inpaint's request (``kind`` inpaint) names the output it redraws and the
    row's own mask (``inpaint_mask``), and ``inpainted_from`` is that output's
    content.
    """

    # What was asked
    persona = models.ForeignKey(
        Persona, on_delete=models.CASCADE, related_name="contents"
    )
    batch = models.ForeignKey(
        Batch,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="contents",
    )
    regenerated_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="regenerations",
        help_text="The content this one regenerates (lineage).",
    )
    inpainted_from = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="inpaintings",
        help_text="The content whose output this one inpaints (lineage).",
    )
    inpaint_mask = models.ImageField(
        upload_to=inpaint_mask_upload_to,
        blank=True,
        editable=False,
        help_text="An inpaint's mask (white: redrawn), the size of the output.",
    )
    prompt = models.TextField()
    negative_prompt = models.TextField(blank=True)
    method_requested = models.CharField(
        max_length=16, choices=ConsistencyMethod.choices
    )
    seed = models.PositiveBigIntegerField()
    request = models.JSONField(default=dict, editable=False)
    replay_snapshot = models.JSONField(null=True, blank=True, editable=False)
    inputs = models.JSONField(default=dict, blank=True, editable=False)
    references = models.ManyToManyField(
        ReferenceImage,
        blank=True,
        related_name="+",
        help_text="The gallery images given to the engine.",
    )
    before_reference = models.ForeignKey(
        ReferenceImage,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The 'before': the persona's primary reference, which the output "
        "is shown beside and scored against.",
    )
    # How it ran (status, progress, job and error: ``QueuedRow``)
    progress_phase = models.CharField(
        max_length=16,
        choices=ProgressPhase.choices,
        blank=True,
        help_text="What the worker is doing (blank: not started).",
    )
    progress_eta_seconds = models.FloatField(
        "ETA (seconds)",
        null=True,
        blank=True,
        help_text="The denoising time left, from the step rate so far.",
    )
    method_used = models.CharField(
        max_length=16, choices=ConsistencyMethod.choices, blank=True
    )
    method_reason = models.TextField(blank=True)
    snapshot = models.JSONField(default=dict, blank=True, editable=False)
    timings = models.JSONField(
        default=dict,
        blank=True,
        editable=False,
        help_text="Seconds waiting in the queue, loading, preprocessing, in "
        "inference and storing; whether the pipeline registry was warm.",
    )
    notes = models.JSONField(default=list, blank=True, editable=False)
    flagged = models.BooleanField(
        default=False,
        editable=False,
        help_text="The safety checker flagged the output "
        "(STUDIO_SAFETY_CHECKER): kept as generated under 'flag', black under "
        "'black'.",
    )
    # What came out
    output_image = models.ImageField(upload_to=output_upload_to, blank=True)
    detailer_before_image = models.ImageField(
        "output before the face detailer",
        upload_to=detailer_before_upload_to,
        blank=True,
        editable=False,
    )
    output_thumbnail = models.ImageField(
        upload_to=output_thumbnail_upload_to, blank=True
    )
    before_thumbnail = models.ImageField(
        upload_to=before_thumbnail_upload_to, blank=True
    )
    consistency_score = models.FloatField(
        null=True,
        blank=True,
        help_text="0..1 likeness to the persona's primary reference (see "
        "generation.engine.scoring); meaningless on the tiny model.",
    )
    score_detail = models.JSONField(default=dict, blank=True, editable=False)
    # Identity (generation.scoring_jobs, on the CPU queue; docs/identity.md)
    identity_status = models.CharField(
        max_length=16,
        choices=IdentityStatus.choices,
        default=IdentityStatus.NOT_YET,
        blank=True,
    )
    identity_similarity = models.FloatField(
        "identity",
        null=True,
        blank=True,
        help_text="0..1 likeness of the output's face to the persona's face "
        "references (0.5 is dlib's same-person threshold); empty without a face.",
    )
    identity_distance = models.FloatField(
        null=True,
        blank=True,
        help_text="Distance of the output's face embedding to the mean of the "
        "persona's face references' (dlib: the same person under 0.6).",
    )
    identity_same_person = models.BooleanField("same person", null=True, blank=True)
    identity_nearest_reference = models.ForeignKey(
        ReferenceImage,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The face reference nearest to the output's face.",
    )
    identity_nearest_distance = models.FloatField(null=True, blank=True)
    identity_detail = models.JSONField(default=dict, blank=True, editable=False)
    identity_before_detailer_status = models.CharField(
        max_length=16, choices=IdentityStatus.choices, blank=True
    )
    identity_before_detailer = models.FloatField(
        "identity before the detailer",
        null=True,
        blank=True,
        help_text="The identity of the output before the face detailer's pass.",
    )
    score_job_id = models.CharField("scoring job id", max_length=64, blank=True)
    score_attempts = models.PositiveSmallIntegerField(default=0)
    flagged_for_review = models.BooleanField(
        default=False,
        help_text="Set when its identity falls below the persona's threshold "
        "or it shows no face.",
    )
    not_kept = models.BooleanField(
        default=False,
        help_text="Best of N: not among the best by identity of its batch (kept, "
        "but marked).",
    )
    # Review
    review_state = models.CharField(
        max_length=16, choices=ReviewState.choices, default=ReviewState.PENDING
    )
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_note = models.TextField(blank=True)
    # Who and when: ``QueuedRow``

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "content"
        verbose_name_plural = "contents"
        permissions = [
            ("generate_content", "Can generate, regenerate, cancel and retry"),
            ("review_content", "Can approve and reject content"),
        ]
        indexes = [
            models.Index(
                fields=["persona", "-created_at"], name="content_persona_created"
            ),
            # Covers the gallery's per-persona counts by status and review
            # state (an index-only scan instead of one row read per output).
            models.Index(
                fields=["persona", "status", "review_state"],
                name="content_persona_counts",
            ),
            models.Index(fields=["status"], name="content_status"),
            models.Index(fields=["review_state"], name="content_review_state"),
            models.Index(fields=["consistency_score"], name="content_score"),
            models.Index(fields=["identity_similarity"], name="content_identity"),
            models.Index(fields=["identity_status"], name="content_identity_status"),
            models.Index(fields=["rq_job_id"], name="content_rq_job"),
        ]

    def __str__(self) -> str:
        return f"Content #{self.pk} of {self.persona}"

    def get_absolute_url(self) -> str:
        return reverse("admin:generation_content_change", args=[self.pk])

    @property
    def scoring(self) -> bool:
        """Its scores have not landed yet ("scoring…")."""
        return self.identity_status == IdentityStatus.PENDING

    @property
    def is_inpaint(self) -> bool:
        """An inpaint of another content's output (``request['kind']``)."""
        return self.request.get("kind") == INPAINT_KIND

    @property
    def progress_percent(self) -> int:
        if self.status == ContentStatus.SUCCEEDED:
            return 100
        if not self.progress_total:
            return 0
        return min(100, round(100 * self.progress_step / self.progress_total))

    @property
    def progress_label(self) -> str:
        """The phase in words for a card: "Waiting in the queue", "Loading the
        model", "Step 4 of 20 · about 12 s left", "Saving", "Scoring…"."""
        if self.scoring and self.is_finished:
            return f"{ProgressPhase.SCORING.label}…"
        if self.is_finished:
            return self.get_status_display()
        if self.status == ContentStatus.QUEUED:
            return ProgressPhase.WAITING.label
        if not self.progress_phase:
            return self.get_status_display()
        if self.progress_phase == ProgressPhase.DENOISING and self.progress_total:
            label = f"Step {self.progress_step} of {self.progress_total}"
            if self.progress_eta_seconds is not None and (
                self.progress_step < self.progress_total
            ):
                label += f" · about {_duration(self.progress_eta_seconds)} left"
            return label
        return self.get_progress_phase_display()


def _duration(seconds: float) -> str:
    """A short human duration: "12 s", "3 min 5 s"."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min {seconds % 60} s"


class ContentControlImage(models.Model):
    """A control image the engine really used (after preprocessing), kept to show."""

    content = models.ForeignKey(
        Content, on_delete=models.CASCADE, related_name="control_images"
    )
    control_type = models.CharField(max_length=16, choices=ControlType.choices)
    image = models.ImageField(upload_to=control_output_upload_to)
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["order", "id"]
        verbose_name = "control image"

    def __str__(self) -> str:
        return f"{self.get_control_type_display()} for content #{self.content_id}"


# Training runs live in their own module; imported here so Django finds them.
from generation.training_models import (  # noqa: E402, F401
    TRAINING_ACTIVE_STATUSES,
    TrainingRun,
    TrainingSample,
    TrainingStatus,
)
