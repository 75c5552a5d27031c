"""Reads for personas (writes live in ``services``)."""

from __future__ import annotations

from django.db.models import Count, Prefetch, QuerySet

from personas.models import Persona, ReferenceImage


def persona_list(*, queryset: QuerySet[Persona] | None = None) -> QuerySet[Persona]:
    """Personas with their gallery size and primary image, in constant queries.

    Each persona gets ``gallery_count`` and ``primary_references`` (a list of at
    most one ReferenceImage). ``queryset`` narrows or orders the personas.
    """
    queryset = Persona.objects.all() if queryset is None else queryset
    return queryset.annotate(
        gallery_count=Count("references", distinct=True)
    ).prefetch_related(
        Prefetch(
            "references",
            queryset=ReferenceImage.objects.filter(is_primary=True),
            to_attr="primary_references",
        )
    )
