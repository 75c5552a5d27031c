"""Fixtures for the personas tests: a persona, and what storage holds."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from personas.models import Persona
from personas.services import persona_create
from tests import images


def stored_files(media_root: Path) -> set[str]:
    """Every file under the media folder, relative to it."""
    return {
        path.relative_to(media_root).as_posix()
        for path in media_root.rglob("*")
        if path.is_file()
    }


def upload(name: str, content: bytes) -> SimpleUploadedFile:
    """What a browser upload of ``content`` named ``name`` looks like to Django."""
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


@pytest.fixture
def bare_persona(db) -> Persona:
    return persona_create(name="Ada Lovelace", appearance="short dark hair")


@pytest.fixture
def png_upload() -> SimpleUploadedFile:
    return upload("ada.png", images.png())
