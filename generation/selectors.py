"""Reads on content records, for the admin, the gallery, the job and the reconciler.

A detail read joins what its page shows, so that a page runs a constant number
of queries whatever the number of related rows.
"""

from __future__ import annotations

from django.db.models import Q, QuerySet

from generation.models import ACTIVE_STATUSES, Content, ContentStatus, IdentityStatus
from personas.models import Persona


def content_get(*, content_id: int) -> Content:
    """One row with what its detail page shows; raises ``Content.DoesNotExist``."""
    return (
        Content.objects.select_related(
            "persona",
            "batch",
            "before_reference",
            "regenerated_from",
            "inpainted_from",
            "reviewed_by",
            "identity_nearest_reference",
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


# The identity filters of the admin and the gallery (docs/identity.md): name ->
# (label, condition). 0.5 is the similarity of dlib's same-person distance.
IDENTITY_FILTERS: dict[str, tuple[str, Q]] = {
    "below_half": ("identity below 0.5", Q(identity_similarity__lt=0.5)),
    "not_same": ("not the same person", Q(identity_same_person=False)),
    "same": ("the same person", Q(identity_same_person=True)),
    "no_face": ("no face", Q(identity_status=IdentityStatus.NO_FACE)),
    "no_identity": (
        "no face reference",
        Q(identity_status=IdentityStatus.NO_IDENTITY),
    ),
    "pending": ("scoring…", Q(identity_status=IdentityStatus.PENDING)),
    "failed": ("scoring failed", Q(identity_status=IdentityStatus.FAILED)),
    "flagged": ("flagged for review", Q(flagged_for_review=True)),
    "not_kept": ("not kept (best of N)", Q(not_kept=True)),
}


def content_identity_filter(
    contents: QuerySet[Content], name: str
) -> QuerySet[Content]:
    """``contents`` narrowed by the identity filter ``name`` (none for "")."""
    chosen = IDENTITY_FILTERS.get(name)
    return contents if chosen is None else contents.filter(chosen[1])
