"""Fixtures of the reliability suite.

The tiny model, the shared media folder and real worker processes come from the
shared fixtures of tests/workers.py (loaded by tests/conftest.py), and so does
``figures``, this test's recorder for docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.db.models import FileField, Model

from generation.models import Batch, Content, ContentControlImage
from personas.models import ControlNetUnit, Persona, ReferenceImage

STUDIO_MODELS: tuple[type[Model], ...] = (
    Persona,
    ReferenceImage,
    ControlNetUnit,
    Content,
    ContentControlImage,
    Batch,
)


@pytest.fixture
def superuser(db) -> AbstractBaseUser:
    return get_user_model().objects.create_superuser(
        "root", "root@example.com", "password"
    )


def stored_names() -> list[str]:
    """The storage name of every file a studio row points to."""
    return sorted(
        getattr(row, field.name).name
        for model in STUDIO_MODELS
        for field in model._meta.get_fields()
        if isinstance(field, FileField)
        for row in model.objects.all()
        if getattr(row, field.name)
    )


def stored_files(media_root: Path | None = None) -> dict[str, bytes]:
    """Every file under the media folder (relative name -> bytes); the folder is
    ``MEDIA_ROOT`` unless given (the worker fixtures move it)."""
    media_root = Path(settings.MEDIA_ROOT) if media_root is None else media_root
    return {
        path.relative_to(media_root).as_posix(): path.read_bytes()
        for path in sorted(media_root.rglob("*"))
        if path.is_file()
    }


def studio_state(media_root: Path | None = None) -> dict[str, object]:
    """What a refused input must leave unchanged: every stored file, and every
    row of the studio's models with all its values."""
    return {
        "files": stored_files(media_root),
        **{
            model._meta.label: list(model.objects.order_by("pk").values())
            for model in STUDIO_MODELS
        },
    }
