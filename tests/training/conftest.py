"""Fixtures of the training tests: an engine on the session's tiny model and a
few small training images built in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from generation.engine.config import tiny_engine_config


@pytest.fixture(autouse=True)
def one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def engine(tiny_model_dir: Path):
    from generation.engine.runner import Engine

    return Engine(tiny_engine_config(tiny_model_dir))


def card(size: tuple[int, int], shade: int) -> Image.Image:
    """A test card: red on the right, blue on the left, one shade per image."""
    image = Image.new("RGB", size, (200, shade, 40))
    image.paste((20, 20, 220), (0, 0, size[0] // 2, size[1]))
    return image


@pytest.fixture
def training_images():
    from generation.engine.training import TrainingImage

    sizes = [(64, 64), (96, 64), (64, 80)]
    return [
        TrainingImage(card(size, 30 * index), f"sks person, test card {index}")
        for index, size in enumerate(sizes)
    ]


@pytest.fixture
def training_persona(studio_settings):
    """A persona with a face, a half-body and a full-body reference (and the
    primary one of ``make_persona``, role other)."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from personas.services import reference_image_add
    from tests.images import encode
    from tests.workers import make_persona

    persona = make_persona(slug="ada")
    for index, (role, size) in enumerate(
        [("face", (64, 64)), ("half_body", (96, 64)), ("full_body", (64, 80))]
    ):
        reference_image_add(
            persona=persona,
            file=SimpleUploadedFile(
                f"{role}.png", encode(card(size, 40 + 50 * index), "PNG")
            ),
            role=role,
            caption=f"{role.replace('_', ' ')} view",
        )
    return persona
