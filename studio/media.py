"""Media served to staff, per model, streamed from the storage API (decision 6).

A file is served only to a member of staff who may see the row that owns it:
each app names, in its ``AppConfig.ready()``, which of its models' file fields
hold media and which permissions (any one of them) let a user see it
(:func:`register_media_owner`). The project layer imports no app; a file no
row owns (an orphan, a folder, a guess) answers 404. The file is read through
``default_storage`` so that local files and S3 behave the same.
"""

from __future__ import annotations

import mimetypes
import posixpath
from dataclasses import dataclass

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.db.models import Model
from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.http import require_GET


@dataclass(frozen=True)
class MediaOwner:
    """A file field of a model, and the permissions (any one) to see its files."""

    model: type[Model]
    field: str
    permissions: tuple[str, ...]

    def owns(self, name: str) -> bool:
        return self.model._default_manager.filter(**{self.field: name}).exists()


_owners: list[MediaOwner] = []


def register_media_owner(
    model: type[Model], field: str, *, permissions: tuple[str, ...]
) -> None:
    """Serve the files of ``model.field`` to staff holding any of ``permissions``
    (called from the owning app's ``AppConfig.ready()``)."""
    model._meta.get_field(field)  # a typo fails at start, not at the first request
    owner = MediaOwner(model, field, tuple(permissions))
    if owner not in _owners:
        _owners.append(owner)


def media_owners(name: str) -> list[MediaOwner]:
    """The registered fields whose rows point at the storage name ``name``."""
    return [owner for owner in _owners if owner.owns(name)]


@require_GET
@staff_member_required
def serve_media(request: HttpRequest, path: str) -> FileResponse:
    name = posixpath.normpath(path).lstrip("/")
    if name.startswith("..") or name in ("", "."):
        raise Http404("No such file.")
    owners = media_owners(name)
    if not owners:
        raise Http404("No such file.")
    if not any(
        request.user.has_perm(permission)
        for owner in owners
        for permission in owner.permissions
    ):
        raise PermissionDenied("You may not see this file.")
    try:
        file = default_storage.open(name, "rb")
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise Http404("No such file.") from None
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = FileResponse(file, content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response
