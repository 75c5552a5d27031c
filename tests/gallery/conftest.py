"""Fixtures for the gallery's page tests: users with given rights and content
rows in every state, created through the services (no job runs: these tests
check pages, not generation; tests/browser runs real ones)."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from django.contrib.auth.models import Permission, User
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from generation import services
from generation.engine.vocabulary import GridParameter
from generation.grids import GridAxis
from generation.models import Batch, Content, ContentStatus
from generation.parameters import GenerationOverrides
from personas.models import Persona
from tests.workers import make_persona


def _png(colour: tuple[int, int, int]) -> ContentFile:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), colour).save(buffer, format="PNG")
    return ContentFile(buffer.getvalue())


def finish(content: Content, *, score: float | None = 0.5) -> Content:
    """Give ``content`` the files and fields of a succeeded generation, the way
    the job stores them (through the storage API)."""
    content.output_image.save("output.png", _png((200, 30, 30)), save=False)
    content.output_thumbnail.save("thumb.png", _png((200, 30, 30)), save=False)
    content.status = ContentStatus.SUCCEEDED
    content.method_used = content.method_requested
    content.method_reason = "asked for"
    content.consistency_score = score
    content.progress_step = content.progress_total = 4
    content.snapshot = {"pipeline_class": "StableDiffusionImg2ImgPipeline"}
    content.finished_at = timezone.now()
    content.save()
    return content


@pytest.fixture
def gallery_persona(db, settings) -> Persona:
    settings.STUDIO_MODELS = {}
    return make_persona(slug="ada", method="img2img")


@pytest.fixture
def make_content(gallery_persona: Persona) -> Callable[..., Content]:
    """``make_content(status=..., score=..., **overrides)``: a row queued through
    ``content_enqueue``, then moved to ``status``."""

    def make(
        status: str = ContentStatus.SUCCEEDED,
        *,
        score: float | None = 0.5,
        **overrides: object,
    ) -> Content:
        content = services.content_enqueue(
            persona=gallery_persona,
            prompt="a portrait",
            overrides=GenerationOverrides(**overrides),
        )
        if status == ContentStatus.SUCCEEDED:
            return finish(content, score=score)
        Content.objects.filter(pk=content.pk).update(
            status=status, progress_step=1, progress_total=4
        )
        content.refresh_from_db()
        return content

    return make


@pytest.fixture
def grid(gallery_persona: Persona) -> Batch:
    """A grid with one strength axis (what a strength sweep was) whose outputs
    all succeeded."""
    batch = services.content_grid(
        persona=gallery_persona,
        prompt="a portrait",
        axes=[GridAxis(parameter=GridParameter.STRENGTH, values=(0.9, 0.3, 0.5))],
    )
    for content in batch.contents.all():
        finish(content, score=1.0 - content.request["strength"])
    return batch


@pytest.fixture
def make_user(db) -> Callable[..., User]:
    """``make_user(*permissions, is_staff=True)``: a user with exactly those
    permissions ("app_label.codename")."""

    def make(*permissions: str, is_staff: bool = True) -> User:
        user = User.objects.create_user(
            f"user{User.objects.count()}", password="secret", is_staff=is_staff
        )
        for permission in permissions:
            app_label, codename = permission.split(".")
            user.user_permissions.add(
                Permission.objects.get(
                    content_type__app_label=app_label, codename=codename
                )
            )
        return user

    return make
