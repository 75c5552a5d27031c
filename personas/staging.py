"""Accepted uploads kept across a save that failed, so that nobody picks them again.

When one row or field of a persona's page is refused, the page comes back with
its errors and the browser's file inputs empty. Every upload of that save that
passed the checks is staged instead: stored (clean PNG bytes, through the
storage API) under ``staging/`` and named in its row by a signed token, which
the next save turns back into the upload (checked again, as every upload is).
A staged file is removed once a save adds it; one never used again (the person
went away) is an orphan that ``studio_sweep_media --delete`` removes after its
grace period, like any file no row points to.
"""

from __future__ import annotations

import secrets
from pathlib import PurePosixPath

from django.core import signing
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage

from personas.files import files_delete_on_commit
from personas.uploads import UploadRejected, ValidatedImage, validate_image_upload

STAGING_FOLDER = "staging"
STAGED_TOKEN_SALT = "personas.staged-upload"
STAGED_MAX_AGE_SECONDS = 24 * 3600
"""A token older than this no longer names its file (the sweep may have run)."""


def upload_stage(*, image: ValidatedImage) -> str:
    """Store an accepted upload for a later save; its signed token."""
    image.seek(0)
    content = image.read()
    image.seek(0)
    name = default_storage.save(
        f"{STAGING_FOLDER}/{secrets.token_hex(16)}.png", ContentFile(content)
    )
    return signing.dumps(
        {"name": name, "original": image.original_name}, salt=STAGED_TOKEN_SALT
    )


def staged_upload(token: str) -> ValidatedImage | None:
    """The staged upload a token names, checked again; None when the token is
    not ours, too old, or its file is gone or no longer passes."""
    payload = _payload(token)
    if payload is None or not default_storage.exists(payload["name"]):
        return None
    stored_as = f"{PurePosixPath(payload['original']).stem}.png"
    try:
        with default_storage.open(payload["name"], "rb") as file:
            image = validate_image_upload(file, name=stored_as)
    except UploadRejected:
        return None
    image.original_name = payload["original"]
    return image


def staged_discard_on_commit(token: str) -> None:
    """Remove a staged file once the save that used it commits."""
    payload = _payload(token)
    if payload is not None:
        files_delete_on_commit([(default_storage, payload["name"])])


def _payload(token: str) -> dict[str, str] | None:
    try:
        payload = signing.loads(
            token, salt=STAGED_TOKEN_SALT, max_age=STAGED_MAX_AGE_SECONDS
        )
    except signing.BadSignature:
        return None
    name = payload.get("name", "") if isinstance(payload, dict) else ""
    if not name.startswith(f"{STAGING_FOLDER}/") or ".." in name:
        return None
    return {"name": name, "original": str(payload.get("original", ""))}
