"""Face analysis of the reference gallery: what a reference's face is, and the
gallery's health (docs/identity.md, "Reference health").

Analysing a photo takes a few tenths of a second on the CPU (seconds with the
CNN detector), so an upload never waits for it: ``reference_queue_analysis``
enqueues ``personas.jobs.reference_analyse`` on the CPU queue
(``STUDIO_CPU_QUEUE``) once the upload commits. ``studio_analyse_references``
and the scoring job analyse what is left. ``personas`` imports nothing of
``generation`` but the framework-free engine, so this module calls the
engine's face module itself.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone
from PIL import Image

from generation.engine.identity import ReferenceFaces, ReferenceReport, reference_health
from personas.models import Persona, ReferenceImage, ReferenceRole

logger = logging.getLogger(__name__)

ANALYSE_JOB = "personas.jobs.reference_analyse"
ANALYSE_JOB_TIMEOUT = 600
# References the reconciler enqueues for analysis at most per run.
RECONCILE_BATCH = 100
# References judged on a persona's page (each is compared with every face one).
HEALTH_MAX_REFERENCES = 500
_HEALTH_FIELDS = (
    "id",
    "persona_id",
    "role",
    "caption",
    "order",
    "face_count",
    "face_embedding",
    "face_detector",
    "face_detail",
    "face_error",
    "face_analysed_at",
)


# --- Writes ---------------------------------------------------------------------


def reference_queue_analysis(*, reference: ReferenceImage) -> None:
    """Analyse ``reference``'s faces on the CPU queue once this transaction
    commits. With Redis down the reference stays unanalysed (logged), for the
    reconciler (``references_queue_unanalysed``), the command or the scoring
    job to analyse."""
    reference_id = reference.pk
    transaction.on_commit(lambda: _enqueue_analysis(reference_id), robust=True)


def references_queue_unanalysed(*, limit: int = RECONCILE_BATCH) -> list[int]:
    """Enqueue the analysis of references not analysed yet whose job is not
    waiting or running (lost with Redis, or never enqueued): at most ``limit``
    per call. Each reference has one job id, so calling this again (every
    worker's reconcile does) never queues a reference twice."""
    from rq.job import Job, JobStatus

    queued = []
    waiting = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED)
    connection = None
    for reference_id in ReferenceImage.objects.filter(
        face_analysed_at__isnull=True
    ).values_list("pk", flat=True)[:limit]:
        if connection is None:
            connection = _cpu_queue().connection
        job = Job.fetch_many([analysis_job_id(reference_id)], connection=connection)[0]
        if job is not None and job.get_status(refresh=False) in waiting:
            continue
        _enqueue_analysis(reference_id)
        queued.append(reference_id)
    return queued


def analysis_job_id(reference_id: int) -> str:
    """The one RQ job id of a reference's analysis."""
    return f"reference-faces-{reference_id}"


def _cpu_queue():  # noqa: ANN202 - an rq.Queue, imported lazily
    import django_rq

    return django_rq.get_queue(settings.STUDIO_CPU_QUEUE, commit_mode="auto")


def _enqueue_analysis(reference_id: int) -> None:
    _cpu_queue().enqueue(
        ANALYSE_JOB,
        args=(reference_id,),
        job_id=analysis_job_id(reference_id),
        job_timeout=ANALYSE_JOB_TIMEOUT,
        description=f"analyse the faces of reference #{reference_id}",
    )


def reference_analyse(*, reference: ReferenceImage) -> ReferenceImage:
    """Analyse ``reference``'s image now (in this process) and store what was found.

    The HOG detector first; for a face-role reference where it finds no face,
    dlib's CNN detector too (slower, finds harder faces). An image that cannot
    be read, or an analysis that fails, is recorded as the analysis's error,
    not raised (so that it is not retried for ever).
    """
    from generation.engine.face import DETECTOR_NAMES, FaceDetector, analyse_faces

    sha256 = reference.sha256
    try:
        with reference.image.open("rb") as file:
            image = Image.open(file)
            image.load()
        image = image.convert("RGB")
    except OSError as error:
        return _store(
            reference,
            sha256,
            error=f"The image could not be read ({error}); upload it again.",
        )
    try:
        analysis = analyse_faces(image, detector=FaceDetector.HOG)
        if not analysis.face_found and reference.role == ReferenceRole.FACE:
            analysis = analyse_faces(image, detector=FaceDetector.CNN)
    except Exception as error:  # noqa: BLE001 - recorded, not retried forever
        logger.exception("Reference #%s: face analysis failed", reference.pk)
        return _store(
            reference,
            sha256,
            error=f"Face analysis failed ({error}); analyse it again with "
            "studio_analyse_references --all, or report it.",
        )
    detail = analysis.to_dict()
    embedding = detail.pop("embedding")
    persona_face = analysis.persona_face
    return _store(
        reference,
        sha256,
        fields={
            "face_count": len(analysis.faces),
            "face_box": None if persona_face is None else persona_face.as_list(),
            "face_embedding": embedding,
            "face_detector": DETECTOR_NAMES[analysis.detector],
            "face_detail": detail,
            "face_error": "",
        },
    )


def references_analyse(
    *, references: Iterable[ReferenceImage]
) -> list[ReferenceImage]:
    """Analyse each of ``references`` in turn (the command, the scoring job)."""
    return [reference_analyse(reference=reference) for reference in references]


def _store(
    reference: ReferenceImage,
    sha256: str,
    *,
    fields: dict | None = None,
    error: str = "",
) -> ReferenceImage:
    values = fields or {
        "face_count": None,
        "face_box": None,
        "face_embedding": None,
        "face_detector": "",
        "face_detail": {},
        "face_error": error,
    }
    values["face_analysed_at"] = timezone.now()
    # Conditional on the image analysed: a reference deleted meanwhile is left
    # alone.
    ReferenceImage.objects.filter(pk=reference.pk, sha256=sha256).update(**values)
    for name, value in values.items():
        setattr(reference, name, value)
    return reference


# --- Reads ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceHealth:
    """One reference and its health report (None until it is analysed)."""

    reference: ReferenceImage
    report: ReferenceReport | None

    @property
    def messages(self) -> list[str]:
        if self.reference.face_error:
            return [self.reference.face_error]
        if self.report is None:
            return []
        return [warning.message for warning in self.report.warnings]


def references_unanalysed(
    *, persona: Persona | None = None
) -> Sequence[ReferenceImage]:
    """References not analysed yet (of ``persona``, or of every persona)."""
    references = ReferenceImage.objects.filter(face_analysed_at__isnull=True)
    if persona is not None:
        references = references.filter(persona=persona)
    return list(references.order_by("persona_id", "order", "id"))


def persona_reference_health(*, persona: Persona) -> list[ReferenceHealth]:
    """The health of ``persona``'s analysed references, in gallery order
    (``identity.reference_health``: no face, several faces, another person).

    At most ``HEALTH_MAX_REFERENCES`` are judged (the first in gallery order):
    each is compared with every face reference, so a gallery of thousands
    would cost the page seconds.
    """
    references = list(
        persona.references.filter(face_analysed_at__isnull=False)
        .only(*_HEALTH_FIELDS)
        .order_by("order", "id")[:HEALTH_MAX_REFERENCES]
    )
    analysed = [reference for reference in references if not reference.face_error]
    reports = {
        report.key: report
        for report in reference_health(
            [
                ReferenceFaces(
                    key=health_key(reference),
                    face_role=reference.role == ReferenceRole.FACE,
                    faces=reference.face_count or 0,
                    strong_faces=reference.face_strong_count,
                    embedding=reference.face_embedding,
                )
                for reference in analysed
            ]
        )
    }
    return [
        ReferenceHealth(reference, reports.get(health_key(reference)))
        for reference in references
    ]


@dataclass(frozen=True)
class GalleryHealth:
    """A persona page's health panel: the judged references with a warning,
    and how much of the gallery was analysed."""

    warned: list[ReferenceHealth]
    references: int
    analysed: int
    judged: int

    @property
    def unanalysed(self) -> int:
        return self.references - self.analysed


def persona_gallery_health(*, persona: Persona) -> GalleryHealth:
    """What the persona's admin page shows of its reference health."""
    entries = persona_reference_health(persona=persona)
    counts = persona.references.aggregate(
        references=Count("id"),
        analysed=Count("id", filter=Q(face_analysed_at__isnull=False)),
    )
    return GalleryHealth(
        warned=[entry for entry in entries if entry.messages],
        references=counts["references"],
        analysed=counts["analysed"],
        judged=len(entries),
    )


def persona_face_references(*, persona: Persona) -> list[ReferenceImage]:
    """The persona's face-role references that have an analysed face: its
    identity is the mean of their embeddings."""
    return [
        reference
        for reference in persona.references.filter(
            role=ReferenceRole.FACE, face_embedding__isnull=False
        ).order_by("order", "id")
    ]


def health_key(reference: ReferenceImage) -> str:
    """How a reference is named in health messages."""
    return f"reference #{reference.pk}" + (
        f" ({reference.caption})" if reference.caption else ""
    )
