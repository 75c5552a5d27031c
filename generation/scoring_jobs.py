"""The RQ jobs of the CPU queue that score a stored output,
``content_score(content_id)``, and a training run's validation sample,
``training_sample_score(sample_id)``.

It claims its row (pending for this very job, else a no-op), analyses the
persona's face references not analysed yet, finds the output's faces with
dlib and scores the persona's face against the persona's identity
(``face.score_identity``; "no face found" is said as such), the output before
the face detailer's pass too when there was one, computes the
CLIP/SSIM consistency score against the before reference on the CPU, and
stores both through ``score_services``. It runs in a ``studio_worker --queues
cpu`` process, so a GPU worker never waits for it (DESIGN.md decision 11).
"""

from __future__ import annotations

import functools
import logging
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rq import get_current_job

from generation import score_services
from generation.models import Content, TrainingSample
from generation.parameters import open_stored_image
from personas.face_analysis import (
    persona_face_references,
    references_analyse,
    references_unanalysed,
)
from personas.models import Persona, ReferenceImage, ReferenceRole

if TYPE_CHECKING:
    from PIL import Image

    from generation.engine.face import FaceAnalysis
    from generation.engine.identity import IdentityScore
    from generation.engine.registry import PipelineRegistry

logger = logging.getLogger(__name__)


def content_score(content_id: int) -> str:
    """Score row ``content_id``; return what became of it."""
    job = get_current_job()

    def store(content: Content, scores: score_services.Scores) -> str | None:
        stored = score_services.content_store_scores(
            content=content, job_id=job.id, scores=scores
        )
        return scores.identity.message if stored else None

    return _score(
        score_services.content_claim_scoring(content_id=content_id, job_id=job.id),
        measure,
        store,
        lambda content, failure: score_services.content_fail_scoring(
            content=content, job_id=job.id, **failure
        ),
    )


def training_sample_score(sample_id: int) -> str:
    """Score training sample ``sample_id`` for identity (the GPU job that made
    it goes on training); return what became of it."""
    job = get_current_job()

    def sample_identity(sample: TrainingSample) -> tuple:
        return measure_identity(
            sample.run.persona, open_stored_image(sample.image.name)
        )

    def store(sample: TrainingSample, measured: tuple) -> str | None:
        analysis, identity, face_references = measured
        stored = score_services.training_sample_store_score(
            sample=sample,
            job_id=job.id,
            identity=identity,
            references=[reference.pk for reference in face_references],
            analysis=_without_embedding(analysis),
        )
        return identity.message if stored else None

    return _score(
        score_services.training_sample_claim_scoring(
            sample_id=sample_id, job_id=job.id
        ),
        sample_identity,
        store,
        lambda sample, failure: score_services.training_sample_fail_scoring(
            sample=sample, job_id=job.id, **failure
        ),
    )


def _score(
    row: Any,
    measure_row: Callable[[Any], Any],
    store: Callable[[Any, Any], str | None],
    fail: Callable[[Any, dict[str, str]], object],
) -> str:
    """A scoring job's course: the claimed ``row`` (None: a stale or duplicate
    job) is measured and its scores stored; a measurement that raises is
    stored as a failure, with why."""
    if row is None:
        return "skipped"
    try:
        measured = measure_row(row)
    except Exception as error:
        logger.exception("%s #%s could not be scored", type(row).__name__, row.pk)
        fail(
            row,
            {
                "message": f"Scoring failed ({error}); rescore it, or report it "
                "if it fails again.",
                "detail": traceback.format_exc(),
            },
        )
        return "failed"
    return store(row, measured) or "superseded"


def face_references_analysed(persona: Persona) -> list[ReferenceImage]:
    """``persona``'s face references to score against, those not analysed yet
    analysed first."""
    unanalysed = [
        reference
        for reference in references_unanalysed(persona=persona)
        if reference.role == ReferenceRole.FACE
    ]
    references_analyse(references=unanalysed)
    return persona_face_references(persona=persona)


def measure_identity(
    persona: Persona, image: Image.Image
) -> tuple[FaceAnalysis, IdentityScore, list[ReferenceImage]]:
    """The faces in ``image`` and its identity against ``persona``'s face
    references, with the references it was measured against."""
    from generation.engine.face import score_identity

    face_references = face_references_analysed(persona)
    analysis, identity = score_identity(
        image, [reference.face_embedding for reference in face_references]
    )
    return analysis, identity, face_references


def measure(content: Content) -> score_services.Scores:
    """The identity and consistency scores of ``content``'s stored output."""
    from generation.engine.face import score_identity
    from generation.engine.scoring import consistency_score

    started = time.perf_counter()
    output = open_stored_image(content.output_image.name)
    face_references = face_references_analysed(content.persona)
    analysed = time.perf_counter()
    analysis, identity = score_identity(
        output, [reference.face_embedding for reference in face_references]
    )
    before_detailer = None
    if content.detailer_before_image:
        # The face detailer's "before": scored against the same references,
        # so the two scores say what the pass did to the identity.
        before_detailer = score_identity(
            open_stored_image(content.detailer_before_image.name),
            [reference.face_embedding for reference in face_references],
        )[1]
    identified = time.perf_counter()
    consistency = None
    before = content.before_reference
    if before is not None:
        encoder = scoring_registry().image_encoder()
        image_encoder, image_processor = encoder if encoder else (None, None)
        consistency = consistency_score(
            open_stored_image(before.image.name),
            output,
            image_encoder=image_encoder,
            image_processor=image_processor,
        )
    finished = time.perf_counter()
    nearest = (
        None
        if identity.nearest_reference is None
        else face_references[identity.nearest_reference]
    )
    return score_services.Scores(
        identity=identity,
        nearest_reference=nearest,
        analysis=_without_embedding(analysis),
        references=[reference.pk for reference in face_references],
        consistency=consistency,
        before_detailer=before_detailer,
        timings={
            "references": analysed - started,
            "identity": identified - analysed,
            "consistency": finished - identified,
            "total": finished - started,
        },
    )


def _without_embedding(analysis: FaceAnalysis) -> dict[str, Any]:
    detail = analysis.to_dict()
    detail.pop("embedding")
    return detail


@functools.cache
def scoring_registry() -> PipelineRegistry:
    """This process's registry for scoring: the CLIP image encoder only, always
    on the CPU in float32, whatever device the studio's GPU workers use."""
    from generation.engine.registry import PipelineRegistry
    from generation.engine_settings import engine_config

    config = engine_config()
    config.device = "cpu"
    config.dtype = "float32"
    return PipelineRegistry(config)
