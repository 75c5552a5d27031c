"""The RQ job of the CPU queue that analyses a reference's faces:
``reference_analyse(reference_id)``. It loads the row by id and calls the
service (``personas.face_analysis``); a reference deleted since is a no-op."""

from __future__ import annotations

from personas.face_analysis import reference_analyse as analyse
from personas.models import ReferenceImage


def reference_analyse(reference_id: int) -> str:
    """Analyse reference ``reference_id``; return what became of it."""
    reference = ReferenceImage.objects.filter(pk=reference_id).first()
    if reference is None:
        return "skipped: the reference is gone"
    reference = analyse(reference=reference)
    if reference.face_error:
        return f"failed: {reference.face_error}"
    return f"{reference.face_count} faces found"
