"""Reads on content records, for the admin, the gallery, the job and the reconciler.

Every list selector returns a queryset that already joins what a list shows
(persona, batch), so that a page runs a constant number of queries whatever the
number of rows.
"""

from __future__ import annotations

from django.db.models import QuerySet

from generation.models import ACTIVE_STATUSES, Batch, Content, ContentStatus
from personas.models import Persona


def content_list(
    *,
    persona: Persona | None = None,
    status: str | None = None,
    review_state: str | None = None,
    method: str | None = None,
    batch: Batch | None = None,
    min_score: float | None = None,
) -> QuerySet[Content]:
    """Content rows, newest first, filtered by whatever is given."""
    contents = Content.objects.select_related("persona", "batch")
    filters = {
        "persona": persona,
        "status": status,
        "review_state": review_state,
        "method_used": method,
        "batch": batch,
        "consistency_score__gte": min_score,
    }
    return contents.filter(
        **{name: value for name, value in filters.items() if value is not None}
    )


def content_get(*, content_id: int) -> Content:
    """One row with what its detail page shows; raises ``Content.DoesNotExist``."""
    return (
        Content.objects.select_related(
            "persona", "batch", "before_reference", "regenerated_from", "reviewed_by"
        )
        .prefetch_related("control_images", "references")
        .get(pk=content_id)
    )


def content_latest_for_persona(*, persona: Persona) -> Content | None:
    """The persona's most recent generation, or None."""
    return (
        Content.objects.filter(persona=persona).order_by("-created_at", "-id").first()
    )


def batch_contents(*, batch: Batch) -> list[Content]:
    """The rows of a batch; a sweep's in the order of its strengths."""
    contents = list(content_list(batch=batch).order_by("id"))
    if batch.strengths:
        contents.sort(key=lambda content: content.request.get("strength", 0.0))
    return contents


def content_should_stop(*, content: Content) -> bool:
    """Whether a running job should stop at this step: its row was cancelled, or
    no longer belongs to this job (the reconciler queued it again elsewhere)."""
    return not Content.objects.filter(
        pk=content.pk,
        rq_job_id=content.rq_job_id,
        status=ContentStatus.RUNNING,
        cancel_requested=False,
    ).exists()


def content_active() -> QuerySet[Content]:
    """Rows that should have a live job: queued or running."""
    return Content.objects.filter(status__in=ACTIVE_STATUSES).order_by("id")
