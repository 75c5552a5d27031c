"""Media served to staff only, streamed from the storage API (DESIGN.md decision 6).

Generated and reference images are never public: every request passes the
admin's staff check, and the member of staff must hold a permission of the
studio's apps (a staff account for user management sees no persona). The file
is read through ``default_storage`` so that local files and S3 behave the same.
"""

from __future__ import annotations

import mimetypes
import posixpath

from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpRequest
from django.views.decorators.http import require_GET

STUDIO_APPS = ("personas", "generation")


@require_GET
@staff_member_required
def serve_media(request: HttpRequest, path: str) -> FileResponse:
    if not any(request.user.has_module_perms(app) for app in STUDIO_APPS):
        raise PermissionDenied("You may not see the studio's files.")
    name = posixpath.normpath(path).lstrip("/")
    if name.startswith("..") or not name or not default_storage.exists(name):
        raise Http404("No such file.")
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    response = FileResponse(default_storage.open(name, "rb"), content_type=content_type)
    response["Cache-Control"] = "private, max-age=3600"
    response["X-Content-Type-Options"] = "nosniff"
    return response
