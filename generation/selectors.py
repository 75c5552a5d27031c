"""Reads on content records, for the admin, the gallery, the job and the reconciler.

A detail read joins what its page shows, so that a page runs a constant number
of queries whatever the number of related rows.
"""

from __future__ import annotations

from django.db.models import QuerySet

from generation.models import ACTIVE_STATUSES, Content, ContentStatus, IdentityStatus
from personas.models import Persona


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


def persona_identity_by_method(*, persona: Persona) -> dict[str, list[float]]:
    """The identity similarities of ``persona``'s scored outputs, by the method
    they were made with (what auto learns from)."""
    by_method: dict[str, list[float]] = {}
    rows = Content.objects.filter(
        persona=persona,
        status=ContentStatus.SUCCEEDED,
        identity_status=IdentityStatus.SCORED,
    ).values_list("method_used", "identity_similarity")
    for method, similarity in rows:
        if method and similarity is not None:
            by_method.setdefault(method, []).append(similarity)
    return by_method
